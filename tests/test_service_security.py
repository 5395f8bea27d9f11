"""Abuse resistance of the HTTP API: writes that other sites' pages make a browser send."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.encoders import Bundle
from tests.service_bundle import PROBLEM, ingest_texts, make_settings, open_client, png

pytest_plugins = ["tests.conftest_service"]

#: What a browser sends with a form that a page on https://evil.example posts to the service.
EVIL_FORM_HEADERS = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}


@pytest.fixture
def keyless(svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path) -> Iterator[TestClient]:
    """A running app without an API key, as `hashbridge serve` on 127.0.0.1 runs by default."""
    settings = make_settings(svc_bundle_dir, tmp_path / "data", api_key=None)
    with open_client(settings, svc_bundle) as c:
        yield c


def test_cross_site_form_cannot_plant_or_replace_items(keyless: TestClient) -> None:
    kept = ingest_texts(keyless, ["a red car"], client_id="beach")[0]
    r = keyless.post(
        "/v1/items",
        data={"items": '[{"text": "planted", "client_id": "beach"}]'},
        files=[("files", ("x.png", png(1), "image/png"))],
        headers=EVIL_FORM_HEADERS,
    )
    assert r.status_code == 403, r.text
    assert r.headers["content-type"] == PROBLEM
    assert r.json()["type"].endswith("cross-site-write")
    assert "evil.example" in r.json()["detail"]
    assert keyless.get(f"/v1/items/{kept['id']}").json()["code"] == kept["code"]
    assert keyless.get("/v1/stats").json()["count"] == 1


def test_cross_site_delete_is_refused(keyless: TestClient) -> None:
    kept = ingest_texts(keyless, ["a red car"])[0]
    r = keyless.delete(f"/v1/items/{kept['id']}", headers=EVIL_FORM_HEADERS)
    assert r.status_code == 403, r.text
    assert keyless.get(f"/v1/items/{kept['id']}").status_code == 200


def test_foreign_origin_without_fetch_metadata_is_refused(keyless: TestClient) -> None:
    # Older browsers send Origin but no Sec-Fetch-Site; an opaque "null" origin is foreign too.
    for origin in ("http://evil.example", "null", "http://127.0.0.1:9999"):
        r = keyless.post(
            "/v1/items", data={"items": '[{"text": "planted"}]'}, headers={"Origin": origin}
        )
        assert r.status_code == 403, (origin, r.text)
    assert keyless.get("/v1/stats").json()["count"] == 0


def test_same_origin_and_plain_clients_still_write(keyless: TestClient) -> None:
    # TestClient's Host is "testserver": the service's own page, and curl (no Origin at all).
    same_origin = [
        {"Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"},
        {"Origin": "http://testserver"},
        {"Sec-Fetch-Site": "none"},
        {},
    ]
    for i, headers in enumerate(same_origin):
        r = keyless.post("/v1/items", json={"items": [{"text": f"cat {i}"}]}, headers=headers)
        assert r.status_code == 200, (headers, r.text)


def test_cross_site_reads_are_left_alone(api: TestClient) -> None:
    # A foreign page cannot read answers without CORS, so reads are not refused by origin.
    r = api.post("/v1/search", json={"text": "cat"}, headers=EVIL_FORM_HEADERS)
    assert r.status_code == 200, r.text
