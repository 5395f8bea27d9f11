"""The service's middleware and Prometheus exposition, against a running app."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.encoders import Bundle
from tests.support.service_bundle import AUTH, ingest_texts, make_settings, open_client


@pytest.mark.parametrize("path", ["/", "/static/app.js"])
def test_page_is_served_whole_whatever_body_a_get_carries(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path, path: str
) -> None:
    # The page's disconnect listener read the body through the limit, which refused it once
    # the headers were out: a truncated page and a traceback logged as a server bug.
    settings = make_settings(svc_bundle_dir, tmp_path / "d", max_request_bytes=1000)
    with open_client(settings, svc_bundle) as c:
        whole = c.get(path).content
        declared = c.get(path, headers={"Content-Length": "5000"})
        streamed = c.request("GET", path, content=b"x" * 2000)
        assert declared.status_code == streamed.status_code == 200
        assert declared.content == streamed.content == whole
        text = c.get("/metrics").text
    assert 'status="500"' not in text


def _samples(text: str) -> tuple[dict[str, str], dict[str, float]]:
    """Parse the text exposition strictly: each family's TYPE before its samples."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            family = series.split("{")[0]
            base = family.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
            assert family in types or base in types, f"sample before its TYPE: {line}"
            assert series not in samples, f"series given twice: {series}"
            samples[series] = float(value)
    return types, samples


def test_exposition_is_consistent_and_counters_start_at_zero(api) -> None:
    ids = [item["id"] for item in ingest_texts(api, ["cat dog", "red car", "sea sky"])]
    api.post("/v1/search", json={"text": "cat", "k": 2})
    api.post("/v1/search", json={"code": "00ff00ff", "k": 2})
    api.post("/v1/encode", json={"texts": ["blue boat", "night"]})
    types, before = _samples(api.get("/metrics").text)
    # No delete yet: each modality's series is there at 0, so the first delete is an increase.
    deleted = 'hashbridge_items_deleted_total{{modality="{}"}}'
    assert before[deleted.format("text")] == 0 and before[deleted.format("image")] == 0
    assert api.delete(f"/v1/items/{ids[0]}", headers=AUTH).status_code == 204
    types, samples = _samples(api.get("/metrics").text)
    assert samples[deleted.format("text")] == 1 and samples[deleted.format("image")] == 0
    assert samples['hashbridge_items_written_total{modality="text"}'] == 3
    # Each search is observed once, under its query's kind.
    assert samples['hashbridge_search_duration_seconds_count{query="text"}'] == 1
    assert samples['hashbridge_search_duration_seconds_count{query="code"}'] == 1
    # Every item encoded went through one observed encoder call.
    assert samples['hashbridge_encode_batch_items_sum{modality="text"}'] == 3 + 1 + 2
    for name, kind in types.items():
        if kind != "histogram":
            continue
        for series, count in samples.items():
            if not series.startswith(f"{name}_count"):
                continue
            labels = series.removeprefix(f"{name}_count").strip("{}")
            prefix = f"{name}_bucket{{{labels + ',' if labels else ''}le="
            buckets = [v for s, v in samples.items() if s.startswith(prefix)]
            assert buckets == sorted(buckets), f"{series}: buckets are not cumulative"
            assert samples[f'{prefix}"+Inf"}}'] == count
