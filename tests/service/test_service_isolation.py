"""Heavy uploads are bounded per request and run in their own, lower-priority pool."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from service.encoders import Bundle
from tests.support.service_bundle import AUTH, PROBLEM, make_settings, open_client, png


def test_a_request_past_its_total_pixel_bound_is_refused_with_413(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path
) -> None:
    # Each 100x100 PNG is far under the per-image limit; three of them pass 25,000 in all.
    settings = make_settings(svc_bundle_dir, tmp_path / "data", max_request_pixels=25_000)
    files = [("files", (f"{i}.png", png(i, (100, 100)), "image/png")) for i in range(3)]
    with open_client(settings, svc_bundle) as api:
        for route, headers in (("/v1/encode", {}), ("/v1/items", AUTH)):
            r = api.post(route, files=files, headers=headers)
            assert r.status_code == 413, r.text
            assert r.headers["content-type"] == PROBLEM
            assert "30000 pixels in all; the limit is 25000" in r.json()["detail"]
            assert "HASHBRIDGE_MAX_REQUEST_PIXELS" in r.json()["detail"]
        assert api.get("/v1/stats").json()["count"] == 0
        r = api.post("/v1/items", files=files[:2], headers=AUTH)
        assert r.status_code == 200, r.text
        assert [item["modality"] for item in r.json()["items"]] == ["image", "image"]


def test_media_work_runs_in_its_own_pool_at_the_niceness_set(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path
) -> None:
    def niceness() -> tuple[str, int]:
        me = threading.current_thread().name
        return me, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    settings = make_settings(svc_bundle_dir, tmp_path / "data", media_nice=7)
    with open_client(settings, svc_bundle) as api:
        rt = api.app.state.runtime
        media_name, media_nice = rt.media_pool.submit(niceness).result()
        name, nice = rt.pool.submit(niceness).result()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert media_name.startswith("hashbridge-media") and media_nice == min(19, base + 7)
    assert not name.startswith("hashbridge-media") and nice == base
