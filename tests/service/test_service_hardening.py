"""Hostile inputs found by fuzzing: each is a 4xx that says what to fix, or works; never a 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from jsonschema_rs import Draft202012Validator

from service.encoders import Bundle
from tests.support.service_bundle import (
    AUTH,
    PROBLEM,
    ingest_files,
    ingest_texts,
    make_settings,
    open_client,
    png,
)

OUT_OF_RANGE = "urn:hashbridge:problem:out-of-range"


@pytest.fixture
def small(svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path) -> Iterator[TestClient]:
    """An app with small metadata limits."""
    settings = make_settings(
        svc_bundle_dir, tmp_path / "data", max_metadata_keys=8, max_metadata_bytes=200
    )
    with open_client(settings, svc_bundle) as c:
        yield c


def test_a_where_filter_of_any_size_works(api: TestClient) -> None:
    wide = {f"k{i}": i for i in range(40)}  # more keys than the SQL prefilter tests
    (kept,) = ingest_texts(api, ["a red car"], metadata=wide)
    ingest_texts(api, ["a red bus"], metadata={**wide, "k39": "other"})
    for where, expected in (
        (wide, [kept["id"]]),  # the keys past the prefilter decide: the bus differs in k39
        ({f"x{i}": i for i in range(2000)}, []),  # was SQLite's "Expression tree is too large"
        ({**wide, **{f"x{i}": 0 for i in range(1000)}}, []),
    ):
        r = api.post("/v1/search", json={"text": "red car", "k": 10, "where": where})
        assert r.status_code == 200, r.text[:300]
        assert [h["id"] for h in r.json()["results"]] == expected


def test_metadata_is_limited_in_keys_and_bytes(small: TestClient) -> None:
    at_limit = {f"k{i}": i for i in range(8)}
    ingest_texts(small, ["a cat"], metadata=at_limit)
    for metadata, fragment in (
        ({f"k{i}": i for i in range(9)}, "metadata has 9 keys; the limit is 8"),
        ({"note": "x" * 200}, "the limit is 200 per item (HASHBRIDGE_MAX_METADATA_BYTES)"),
        ({"note": "é" * 100}, "bytes as JSON"),  # counted in UTF-8 bytes, not characters
    ):
        r = small.post("/v1/items", json={"items": [{"text": "a dog", "metadata": metadata}]},
                       headers=AUTH)  # fmt: skip
        assert r.status_code == 413, r.text
        assert fragment in r.json()["detail"]
        form = {"metadata": json.dumps([metadata])}
        files = [("files", ("a.png", png(1), "image/png"))]
        r = small.post("/v1/items", files=files, data=form, headers=AUTH)
        assert r.status_code == 413 and fragment in r.json()["detail"], r.text
    assert small.get("/v1/stats").json()["count"] == 1


@pytest.mark.parametrize("path", ["1_0", "1.0", "+1", " 1", "1e1", "٣", "0x1", "-0"])
def test_ids_are_digits_only(api: TestClient, path: str) -> None:
    items = ingest_texts(api, [f"text {i}" for i in range(10)])
    assert items[-1]["id"] == 10
    for method in ("GET", "DELETE"):
        r = api.request(method, f"/v1/items/{path}", headers=AUTH)
        assert r.status_code == 422, (method, path, r.text)
        assert "decimal digits only" in r.json()["detail"]
    assert api.get("/v1/stats").json()["count"] == 10
    assert api.get("/v1/items/10").status_code == 200
    assert api.get("/v1/items/01").json()["id"] == 1  # digits, as documented


def test_k_takes_whole_numbers_only(api: TestClient) -> None:
    ingest_texts(api, ["a cat", "a dog"])
    for k in (True, "2", 2.5, None):
        r = api.post("/v1/search", json={"text": "cat", "k": k})
        assert r.status_code == 422 and "must be a whole number" in r.json()["detail"], (k, r.text)
    # JSON Schema's integer: 2.0 is 2.
    assert len(api.post("/v1/search", json={"text": "cat", "k": 2.0}).json()["results"]) == 2
    form = api.post("/v1/search", files={"file": ("q.png", png(0))}, data={"k": "1"})
    assert form.status_code == 200 and len(form.json()["results"]) == 1
    assert (
        api.post("/v1/search", files={"file": ("q.png", png(0))}, data={"k": "true"}).status_code
        == 422
    )


def test_every_out_of_range_parameter_is_one_problem_type(api: TestClient) -> None:
    answers = [
        api.post("/v1/search", json={"text": "cat", "k": 0}),
        api.post("/v1/search", json={"text": "cat", "k": 100_000}),
        api.post("/v1/search", json={"text": "cat", "nprobe": 0}),
        api.post("/v1/search", files={"file": ("q.png", png(0))}, data={"k": "0"}),
        api.post("/v1/search", files={"file": ("q.png", png(0))}, data={"k": "5000"}),
        api.get(f"/v1/items/{2**63}"),
    ]
    for r in answers:
        assert r.status_code == 422, r.text
        assert r.headers["content-type"] == PROBLEM
        assert r.json()["type"] == OUT_OF_RANGE, r.text
        assert r.json()["title"] == "Out of range"


@pytest.mark.parametrize("endpoint", ["/v1/items", "/v1/search", "/v1/encode", "/v1/items/lookup"])
def test_a_body_that_is_not_json_is_400(api: TestClient, endpoint: str) -> None:
    for body in (b'{"items": [', b"not json", b"\xff\xfe"):
        r = api.post(endpoint, content=body, headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["type"] == "urn:hashbridge:problem:malformed-body"
        assert r.json()["detail"].startswith("request body is not valid JSON")


def test_deletes_are_counted_per_modality(api: TestClient) -> None:
    (text,) = ingest_texts(api, ["a cat"])
    (image,) = ingest_files(api, [("a.png", png(0))])
    for item in (text, image):
        assert api.delete(f"/v1/items/{item['id']}", headers=AUTH).status_code == 204
    assert api.delete(f"/v1/items/{text['id']}", headers=AUTH).status_code == 404
    metrics = api.get("/metrics").text
    assert 'hashbridge_items_deleted_total{modality="image"} 1' in metrics
    assert 'hashbridge_items_deleted_total{modality="text"} 1' in metrics


def test_the_schema_refuses_what_the_server_refuses(api: TestClient) -> None:
    schema = api.get("/openapi.json").json()
    components = schema["components"]["schemas"]

    def valid(model: str, body: object) -> bool:
        # Resolve $refs within this document.
        wrapper = {**components[model], "$defs": components}
        text = json.dumps(wrapper).replace("#/components/schemas/", "#/$defs/")
        return Draft202012Validator(json.loads(text)).is_valid(body)

    refused = [
        ("EncodeRequest", {"texts": [""]}),
        ("EncodeRequest", {"texts": ["   "]}),
        ("EncodeRequest", {"texts": []}),
        ("SearchRequest", {}),
        ("SearchRequest", {"text": "cat", "code": "00000000"}),
        ("SearchRequest", {"text": "cat", "k": 0}),
        ("SearchRequest", {"text": "cat", "k": 1001}),
        ("SearchRequest", {"text": "cat", "k": True}),
        ("SearchRequest", {"code": "abcd"}),  # this bundle's codes are 8 hex digits
        ("SearchRequest", {"text": "cat", "modalities": []}),
        ("SearchRequest", {"text": "cat", "modalities": ["audio"]}),
        ("IngestRequest", {"items": []}),
        ("IngestRequest", {"items": [{"text": ""}]}),
        ("IngestRequest", {"items": [{"text": "a", "client_id": ""}]}),
        ("IngestRequest", {"items": [{"text": "a", "metadata": {"text": "x"}}]}),
        ("LookupRequest", {"client_ids": []}),
    ]
    for model, body in refused:
        assert not valid(model, body), (model, body)
        path = {"EncodeRequest": "/v1/encode", "SearchRequest": "/v1/search"}.get(
            model, "/v1/items/lookup" if model == "LookupRequest" else "/v1/items"
        )
        assert 400 <= api.post(path, json=body, headers=AUTH).status_code < 500, (model, body)
    for model, body in [
        ("EncodeRequest", {"texts": ["a cat"]}),
        ("SearchRequest", {"text": "cat", "k": 3, "modalities": ["image"]}),
        ("SearchRequest", {"code": "0a0b0c0d"}),
        ("IngestRequest", {"items": [{"text": "a", "client_id": "c", "metadata": {"n": 1}}]}),
    ]:
        assert valid(model, body), (model, body)
    forms = {p: schema["paths"][p]["post"]["requestBody"]["content"]["multipart/form-data"]
             for p in ("/v1/items", "/v1/search", "/v1/encode")}  # fmt: skip
    assert forms["/v1/items"]["schema"]["anyOf"] == [
        {"required": ["files"]},
        {"required": ["items"]},
    ]
    assert forms["/v1/search"]["schema"]["oneOf"][0] == {"required": ["file"]}
    assert forms["/v1/encode"]["schema"]["required"] == ["files"]
