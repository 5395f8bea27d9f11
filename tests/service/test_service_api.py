"""The HTTP API through TestClient: ingest, search, encode, items, stats, auth, docs, metrics."""

import io
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.fileio import read_header
from index.reference import NumpyHammingIndex
from index.store import NewItem
from service.encoders import Bundle
from service.schemas import IngestedItem, Problem
from tests.support.service_bundle import (
    API_KEY,
    AUTH,
    PROBLEM,
    VOCAB,
    grid_image,
    image_bytes,
    ingest_files,
    ingest_texts,
    make_settings,
    open_client,
    png,
    reference_pixels,
)

TEXTS = [
    "a black cat asleep on a red car",
    "blue sea and a white boat at sunset",
    "snow on the mountain above the lake",
    "children playing music in the street",
    "a horse and a cow in green grass",
    "the city bridge at night",
]


def search(api, **body):
    r = api.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def search_file(api, data: bytes, name: str = "q.png", **form):
    r = api.post("/v1/search", files=[("file", (name, data, "image/png"))], data=form)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_ready_docs(api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}
    for path in ("/healthz", "/readyz"):
        head = api.head(path)
        assert head.status_code == 200 and head.content == b"", path
    docs = api.get("/docs")
    assert docs.status_code == 200
    # Its scripts come from a CDN: without internet the page was blank; now it says why.
    assert "cannot reach" in docs.text and 'href="/openapi.json"' in docs.text
    assert docs.text.index("cannot reach") > docs.text.index('<div id="swagger-ui">')
    assert "swagger-ui-bundle.js" in docs.text and "url: '/openapi.json'" in docs.text
    spec = api.get("/openapi.json").json()
    body = spec["paths"]["/v1/items"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert body["application/json"]["schema"]["$ref"] == "#/components/schemas/IngestRequest"
    assert "TextItem" in spec["components"]["schemas"]
    assert "files" in body["multipart/form-data"]["schema"]["properties"]
    assert "X-API-Key" in json.dumps(spec["components"]["securitySchemes"])


def test_ingest_texts_and_images_then_search_each_way(api, svc_bundle: Bundle) -> None:
    texts = ingest_texts(api, TEXTS, metadata={"kind": "caption"})
    images = ingest_files(api, [(f"img{i}.png", png(i)) for i in range(6)])
    assert [t["modality"] for t in texts] == ["text"] * 6
    assert [i["filename"] for i in images] == [f"img{i}.png" for i in range(6)]
    assert len({i["id"] for i in texts + images}) == 12
    assert all(t["known_tokens"] > 0 for t in texts)
    # The response is built without pydantic; it must still be exactly the documented model.
    for item in texts + images:
        assert set(item) == set(IngestedItem.model_fields)
        assert IngestedItem.model_validate(item).model_dump() == item

    # Same image back: distance 0 and that image first.
    hits = search_file(api, png(3), k=5)["results"]
    assert hits[0]["id"] == images[3]["id"] and hits[0]["distance"] == 0
    assert hits[0]["metadata"] == {"filename": "img3.png"}
    assert all(h["distance"] > 0 for h in hits[1:])

    # Same text back: distance 0, and its stored text is shown.
    res = search(api, text=TEXTS[2], k=3, modalities=["text"])
    assert res["query"]["code"] == texts[2]["code"]
    assert res["results"][0]["id"] == texts[2]["id"] and res["results"][0]["distance"] == 0
    assert res["results"][0]["metadata"] == {"kind": "caption", "text": TEXTS[2]}

    # By code, restricted to images: the code's own image first.
    res = search(api, code=images[4]["code"], k=6, modalities=["image"])
    assert [h["modality"] for h in res["results"]] == ["image"] * 6
    assert res["results"][0]["id"] == images[4]["id"] and res["results"][0]["distance"] == 0

    # Cross-modal: a text query ranks images by exact Hamming distance.
    res = search(api, text="a red car", k=6, modalities=["image"])
    ref = NumpyHammingIndex(svc_bundle.bits)
    ref.add(
        [i["id"] for i in images],
        np.array([list(bytes.fromhex(i["code"])) for i in images], np.uint8),
    )
    want = ref.search(np.array([list(bytes.fromhex(res["query"]["code"]))], np.uint8), 6)
    assert [h["id"] for h in res["results"]] == want.ids[0].tolist()
    assert [h["distance"] for h in res["results"]] == want.distances[0].tolist()


@pytest.mark.parametrize(
    ("content_type", "prefix"),
    [("application/json; charset=UTF-8", b""), ("application/json", b"\xef\xbb\xbf")],
)
def test_utf8_json_with_a_charset_or_a_bom_is_read(api, content_type: str, prefix: bytes) -> None:
    body = prefix + json.dumps({"items": [{"text": "caf\u00e9 cat"}]}).encode()
    r = api.post("/v1/items", content=body, headers={**AUTH, "Content-Type": content_type})
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["known_tokens"] == 1


def test_all_modalities_are_merged_by_distance(api) -> None:
    ingest_texts(api, TEXTS)
    ingest_files(api, [(f"img{i}.png", png(i)) for i in range(4)])
    res = search(api, code="00000000", k=10)["results"]
    assert {h["modality"] for h in res} == {"text", "image"}
    assert [h["distance"] for h in res] == sorted(h["distance"] for h in res)
    assert len(res) == 10
    twice = search(api, code="00000000", k=10, modalities=["image", "text", "image"])["results"]
    assert twice == search(api, code="00000000", k=10, modalities=["image", "text"])["results"]


def test_api_codes_equal_the_encoders_on_contract_pixels(api, svc_bundle: Bundle) -> None:
    image = grid_image(11, (90, 50))
    r = api.post("/v1/encode", files=[("files", ("a.png", image_bytes(image), "image/png"))])
    assert r.status_code == 200, r.text
    direct = svc_bundle.encoders["image"].encode(reference_pixels(image, 32)[None])
    assert r.json() == {
        "bits": 32,
        "codes": [
            {
                "modality": "image",
                "code": direct[0].tobytes().hex(),
                "known_tokens": None,
                "filename": "a.png",
            }
        ],
    }
    r = api.post("/v1/encode", json={"texts": ["Cat, DOG!", "zzz qqq"]})
    assert r.status_code == 200, r.text
    bags, _ = svc_bundle.vectorizer.vectorize(["cat dog", ""])
    direct = svc_bundle.encoders["text"].encode(bags)
    codes = r.json()["codes"]
    assert [c["code"] for c in codes] == [row.tobytes().hex() for row in direct]
    # No known token: still a code (all zeros here), flagged so the client can tell.
    assert [c["known_tokens"] for c in codes] == [2, 0]
    assert codes[1]["code"] == "00000000"


def test_exif_rotated_jpeg_matches_its_upright_twin(api) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    jpeg = image_bytes(grid_image(21, (80, 40)), "JPEG", quality=95, exif=exif.tobytes())
    # The upright twin: the same decoded JPEG pixels, rotated and stored losslessly.
    decoded = Image.open(io.BytesIO(jpeg))
    upright = image_bytes(decoded.transpose(Image.Transpose.ROTATE_270))
    sideways = image_bytes(decoded.copy())
    items = ingest_files(api, [("upright.png", upright), ("sideways.png", sideways)])
    hits = search_file(api, jpeg, "rotated.jpg", k=2, modalities="image")["results"]
    assert hits[0]["id"] == items[0]["id"] and hits[0]["distance"] == 0
    assert hits[1]["distance"] > 0


def test_client_ids_are_idempotent(api) -> None:
    first = ingest_texts(api, ["a cat"], client_id="c1")
    again = ingest_texts(api, ["a cat"], client_id="c1")
    assert first == again
    assert api.get("/v1/stats").json()["count"] == 1
    changed = ingest_texts(api, ["a dog on the beach"], client_id="c1", metadata={"v": 2})
    assert changed[0]["id"] == first[0]["id"] and changed[0]["code"] != first[0]["code"]
    item = api.get(f"/v1/items/{first[0]['id']}").json()
    assert item["metadata"] == {"v": 2, "text": "a dog on the beach"}
    assert item["code"] == changed[0]["code"] and item["client_id"] == "c1"
    res = search(api, code=first[0]["code"], k=5)["results"]
    assert [h["id"] for h in res] == [first[0]["id"]] and res[0]["distance"] > 0
    # Files with client ids are idempotent too, and an id may move between modalities.
    moved = ingest_files(api, [("x.png", png(1))], client_ids=json.dumps(["c1"]))
    assert moved[0]["id"] == first[0]["id"]
    stats = api.get("/v1/stats").json()
    assert stats["by_modality"] == stats["index_sizes"] == {"image": 1}


def test_multipart_batch_with_client_ids_metadata_and_texts(api) -> None:
    items = ingest_files(
        api,
        [("a.png", png(1)), ("b.png", png(2))],
        client_ids=json.dumps(["a", None]),
        metadata=json.dumps([{"tag": "x"}, None]),
        items=json.dumps([{"text": "a red car", "client_id": "t", "metadata": {"tag": "x"}}]),
    )
    assert [(i["client_id"], i["modality"]) for i in items] == [
        ("a", "image"),
        (None, "image"),
        ("t", "text"),
    ]
    got = [api.get(f"/v1/items/{i['id']}").json()["metadata"] for i in items]
    assert got == [
        {"tag": "x", "filename": "a.png"},
        {"filename": "b.png"},
        {"tag": "x", "text": "a red car"},
    ]


def test_metadata_filter(api) -> None:
    tagged = ingest_texts(api, TEXTS[:3], metadata={"tag": "keep", "n": 1})
    ingest_texts(api, TEXTS[3:], metadata={"tag": "drop", "n": True})
    res = search(api, text=TEXTS[4], k=10, where={"tag": "keep"})["results"]
    assert sorted(h["id"] for h in res) == sorted(t["id"] for t in tagged)
    # Exact JSON match: 1 and true are different values.
    res = search(api, code="ffffffff", k=10, where={"n": 1})["results"]
    assert sorted(h["id"] for h in res) == sorted(t["id"] for t in tagged)
    assert search(api, code="ffffffff", k=10, where={"tag": "none"})["results"] == []
    res = search_file(api, png(0), k=10, where=json.dumps({"tag": "drop"}))["results"]
    assert len(res) == 3 and {h["metadata"]["tag"] for h in res} == {"drop"}


def test_search_leaves_out_items_replaced_while_it_ran(api, monkeypatch) -> None:
    # A search lets writers in again before it looks its hits up in the store: items
    # replaced in between came back with another modality, distance or metadata than the
    # query matched, so that the results broke the search's own filters.
    kept = ingest_texts(api, [TEXTS[0]], metadata={"v": 0})[0]
    stale = {
        cid: ingest_texts(api, [TEXTS[0]], client_id=cid, metadata={"v": 0})[0]
        for cid in ("moved", "recoded", "retagged")
    }
    code = np.frombuffer(bytes.fromhex(kept["code"]), np.uint8)
    collection = api.app.state.runtime.collection
    search_index = collection.search

    def search_then_replace(*args, **kwargs):
        hits = search_index(*args, **kwargs)
        collection.upsert(
            [
                NewItem("image", code, "moved", {"v": 0}),
                NewItem("text", ~code, "recoded", {"v": 0}),
                NewItem("text", code, "retagged", {"v": 1}),
            ]
        )
        return hits

    monkeypatch.setattr(collection, "search", search_then_replace)
    body = {"code": kept["code"], "k": 10, "modalities": ["text"], "where": {"v": 0}}
    r = api.post("/v1/search", json=body)
    assert r.status_code == 200, r.text
    assert [(h["id"], h["distance"]) for h in r.json()["results"]] == [(kept["id"], 0)]
    # Searched again, the replaced items are found as they now are (or not at all).
    monkeypatch.setattr(collection, "search", search_index)
    again = [(h["id"], h["distance"]) for h in search(api, **body)["results"]]
    assert again == [(kept["id"], 0), (stale["recoded"]["id"], 32)]
    assert api.get(f"/v1/items/{stale['moved']['id']}").json()["modality"] == "image"


def test_get_delete_and_stats(api) -> None:
    texts = ingest_texts(api, TEXTS[:3])
    images = ingest_files(api, [("a.png", png(1))])
    stats = api.get("/v1/stats").json()
    assert stats["count"] == 4 and stats["by_modality"] == {"image": 1, "text": 3}
    assert stats["bits"] == 32 and stats["method"] == "dsmhn"
    assert stats["modalities"] == ["image", "text"]
    victim = texts[1]["id"]
    got = api.get(f"/v1/items/{victim}").json()
    assert got["code"] == texts[1]["code"] and got["modality"] == "text"
    r = api.delete(f"/v1/items/{victim}", headers=AUTH)
    assert r.status_code == 204 and r.content == b""
    r = api.get(f"/v1/items/{victim}")
    assert r.status_code == 404 and r.json()["detail"] == f"no item with id {victim}"
    res = search(api, code=texts[1]["code"], k=10)["results"]
    assert victim not in [h["id"] for h in res] and len(res) == 3
    stats = api.get("/v1/stats").json()
    assert stats["count"] == 3 and stats["index_sizes"] == {"image": 1, "text": 2}
    assert images[0]["id"] in [h["id"] for h in res]


def test_auth_header_forms_and_protected_reads(svc_bundle_dir: Path, svc_bundle, tmp_path) -> None:
    settings = make_settings(svc_bundle_dir, tmp_path / "d", protect_reads=True)
    with open_client(settings, svc_bundle) as c:
        body = {"items": [{"text": "a cat"}]}
        bearer = {"Authorization": f"Bearer {API_KEY}"}
        assert c.post("/v1/items", json=body, headers=bearer).status_code == 200
        r = c.post("/v1/search", json={"text": "cat"})
        assert r.status_code == 401 and "API key" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = c.get("/v1/stats", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 403 and "not valid" in r.json()["detail"]
        assert c.get("/v1/stats", headers=AUTH).json()["count"] == 1
        # Liveness, readiness and metrics stay open for probes and scrapers.
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200


def test_no_api_key_means_open_writes(svc_bundle_dir: Path, svc_bundle, tmp_path) -> None:
    with open_client(make_settings(svc_bundle_dir, tmp_path / "d", api_key=None), svc_bundle) as c:
        r = c.post("/v1/items", json={"items": [{"text": "a cat"}]})
        assert r.status_code == 200


def test_metrics_exposition(api) -> None:
    ingest_texts(api, TEXTS)
    search(api, text="cat", k=3)
    text = api.get("/metrics").text
    lines = text.splitlines()
    assert (
        'hashbridge_request_duration_seconds_count{method="POST",route="/v1/items",status="200"} 1'
        in lines
    )
    assert 'hashbridge_encode_duration_seconds_count{modality="text"} 2' in lines
    assert 'hashbridge_search_duration_seconds_count{query="text"} 1' in lines
    assert 'hashbridge_items_written_total{modality="text"} 6' in lines
    assert 'hashbridge_encode_batch_items_bucket{modality="text",le="8"} 2' in lines
    assert "# TYPE hashbridge_request_duration_seconds histogram" in text


def test_invented_methods_share_one_metrics_label(api) -> None:
    # Any client may send any method token; each must not become a label of its own.
    for i in range(3):
        assert api.request(f"BREW{i}", "/healthz").status_code == 405
    text = api.get("/metrics").text
    assert "BREW" not in text
    assert 'method="other",route="/healthz",status="405"} 3' in text


def test_oversized_bodies_are_counted_under_their_route(
    svc_bundle_dir: Path, svc_bundle, tmp_path
) -> None:
    # Refused by Content-Length before routing, they were all counted as route="unmatched".
    settings = make_settings(svc_bundle_dir, tmp_path / "d", max_request_bytes=1000)
    with open_client(settings, svc_bundle) as c:
        r = c.post("/v1/items", json={"items": [{"text": "cat " * 500}]}, headers=AUTH)
        assert r.status_code == 413 and "exceeds 1000 bytes" in r.json()["detail"]
        assert c.post("/v1/search", json={"text": "cat " * 500}).status_code == 413
        assert c.get("/v1/stats").json()["count"] == 0
        lines = c.get("/metrics").text.splitlines()
    for path in ("/v1/items", "/v1/search"):
        labels = f'method="POST",route="{path}",status="413"'
        assert f"hashbridge_request_duration_seconds_count{{{labels}}} 1" in lines
    assert not [line for line in lines if 'route="unmatched"' in line]


@pytest.mark.parametrize(
    ("path", "content_type", "start"),
    [
        ("/v1/items", "application/json", b'{"items": [{"text": "a c'),
        ("/v1/search", "multipart/form-data; boundary=b", b"--b\r\nContent-Disposition: form-"),
    ],
)
def test_client_hanging_up_mid_body_is_no_server_error(
    api, caplog, path: str, content_type: str, start: bytes
) -> None:
    # An aborted upload was logged as a server bug and counted as a 500 in /metrics.
    headers = [(b"content-type", content_type.encode()), (b"x-api-key", API_KEY.encode())]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [*headers, (b"content-length", b"100000")],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    incoming = [{"type": "http.request", "body": start, "more_body": True}]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    api.portal.call(api.app, scope, receive, send)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 499
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    lines = api.get("/metrics").text.splitlines()
    assert (
        f'hashbridge_request_duration_seconds_count{{method="POST",route="{path}",status="499"}} 1'
        in lines
    )
    assert not [line for line in lines if 'status="500"' in line]


def test_texts_and_images_have_their_own_encoder_batch_limits(
    svc_bundle_dir: Path, svc_bundle, tmp_path
) -> None:
    settings = make_settings(
        svc_bundle_dir, tmp_path / "d", batch_max_items=4, text_batch_max_items=40
    )
    with open_client(settings, svc_bundle) as c:
        ingest_texts(c, [f"cat {i}" for i in range(40)])
        files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(10)]
        assert c.post("/v1/items", files=files, headers=AUTH).status_code == 200
        lines = c.get("/metrics").text.splitlines()
    # 40 texts in one encoder call; 10 images in calls of at most 4.
    assert 'hashbridge_encode_duration_seconds_count{modality="text"} 1' in lines
    assert 'hashbridge_encode_duration_seconds_count{modality="image"} 3' in lines


def test_restart_loads_snapshots_and_answers_the_same(
    svc_bundle_dir: Path, svc_bundle, tmp_path
) -> None:
    settings = make_settings(svc_bundle_dir, tmp_path / "d")
    with open_client(settings, svc_bundle) as c:
        texts = ingest_texts(c, TEXTS, client_id=None)
        ingest_files(c, [(f"{i}.png", png(i)) for i in range(5)])
        before = [search(c, code=t["code"], k=8) for t in texts]
    # Shutdown snapshotted both indexes at the current store seq.
    assert sorted(p.name for p in (tmp_path / "d").glob("index-*.hbix")) == [
        "index-image.hbix",
        "index-text.hbix",
    ]
    with open_client(settings, svc_bundle) as c:
        runtime = c.app.state.runtime
        assert runtime.collection.open_report == {"image": "loaded", "text": "loaded"}
        assert [search(c, code=t["code"], k=8) for t in texts] == before


def test_snapshot_every_n_writes(svc_bundle_dir: Path, svc_bundle, tmp_path) -> None:
    with open_client(
        make_settings(svc_bundle_dir, tmp_path / "d", snapshot_every=5), svc_bundle
    ) as c:
        ingest_texts(c, TEXTS[:4])
        assert not list((tmp_path / "d").glob("index-*.hbix"))
        ingest_texts(c, TEXTS[4:5])
        # The fifth write starts a background snapshot; the response does not wait for it.
        deadline = time.monotonic() + 10
        while not (tmp_path / "d" / "index-text.hbix").exists():
            assert time.monotonic() < deadline, "no snapshot after snapshot_every writes"
            time.sleep(0.02)


def test_snapshots_grow_apart_with_the_collection(
    svc_bundle_dir: Path, svc_bundle, tmp_path
) -> None:
    snapshot = tmp_path / "d" / "index-text.hbix"

    def snapshot_seq() -> int:
        return int(read_header(snapshot)["extra"]["store_seq"])

    def wait_for_snapshot_after(seq: int) -> int:
        # Snapshots run in the background after the response.
        deadline = time.monotonic() + 10
        while not (snapshot.exists() and snapshot_seq() > seq):
            assert time.monotonic() < deadline, f"no snapshot newer than seq {seq}"
            time.sleep(0.02)
        return snapshot_seq()

    texts = [f"word{i} cat" for i in range(140)]
    with open_client(
        make_settings(svc_bundle_dir, tmp_path / "d", snapshot_every=5), svc_bundle
    ) as c:
        ingest_texts(c, texts[:100])
        first = wait_for_snapshot_after(0)
        # 100 items stored: the next snapshot waits for 10 writes, not snapshot_every (5).
        for i in range(100, 109):
            ingest_texts(c, texts[i : i + 1])
        time.sleep(0.5)  # room for a snapshot that should not start
        assert snapshot_seq() == first
        ingest_texts(c, texts[109:110])
        assert wait_for_snapshot_after(first) == first + 10


@pytest.mark.parametrize("path", ["/v1/stats", "/readyz"])
def test_not_ready_outside_the_lifespan(svc_bundle_dir: Path, tmp_path, path: str) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app

    # Without entering the context, the lifespan never ran: nothing is loaded.
    c = TestClient(create_app(make_settings(svc_bundle_dir, tmp_path / "d")))
    r = c.get(path)
    assert r.status_code == 503 and r.headers["content-type"] == "application/problem+json"


def test_video_bundle_reaches_the_clip_decoder(svc_video_bundle_dir: Path, tmp_path) -> None:
    video_bundle = svc_video_bundle_dir
    with open_client(make_settings(video_bundle, tmp_path / "d")) as c:
        mp4 = b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + b"\0" * 64
        r = c.post("/v1/items", files=[("files", ("c.mp4", mp4, "video/mp4"))], headers=AUTH)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"
        assert "clip 'c.mp4' is not a readable video file" in r.json()["detail"]
        assert c.get("/v1/stats").json()["count"] == 0
        # Images and texts still work with a video bundle.
        assert ingest_files(c, [("a.png", png(1))])[0]["modality"] == "image"


def test_nprobe_is_a_per_query_argument(svc_bundle_dir: Path, svc_bundle, tmp_path) -> None:
    # A tiny IVF threshold so the collection is an IVF index after a few dozen items.
    settings = make_settings(svc_bundle_dir, tmp_path / "d", index_kind="auto", ivf_threshold=50)
    with open_client(settings, svc_bundle) as c:
        rng = np.random.default_rng(3)
        texts = [" ".join(rng.choice(VOCAB, 4)) for _ in range(120)]
        items = [it for s in range(0, 120, 40) for it in ingest_texts(c, texts[s : s + 40])]
        runtime = c.app.state.runtime
        assert runtime.collection._indexes["text"].is_ivf
        codes = {it["id"]: bytes.fromhex(it["code"]) for it in items}
        ref = NumpyHammingIndex(32)
        ref.add(list(codes), np.array([list(v) for v in codes.values()], np.uint8))
        exact = search(c, text="cat dog", k=20, nprobe=10_000)
        query = bytes.fromhex(exact["query"]["code"])
        want = ref.search(np.array([list(query)], np.uint8), 20)
        # Probing every list is exact, ties included.
        assert [h["id"] for h in exact["results"]] == want.ids[0].tolist()
        assert [h["distance"] for h in exact["results"]] == want.distances[0].tolist()
        # One list may miss neighbours but never misreports a distance.
        narrow = search(c, text="cat dog", k=20, nprobe=1)["results"]
        for h in narrow:
            xor = int.from_bytes(query, "big") ^ int.from_bytes(codes[h["id"]], "big")
            assert h["distance"] == xor.bit_count()
        assert narrow != exact["results"]  # nprobe really reached the index
        # The narrow query changed nothing shared: exhaustive probing is exact again.
        assert search(c, text="cat dog", k=20, nprobe=10_000) == exact


def test_startup_objects_are_frozen_out_of_garbage_collection(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path
) -> None:
    # Full collections would otherwise walk everything the bundle and FAISS loaded, in
    # the middle of requests; shutdown hands the objects back to the collector.
    import gc

    gc.unfreeze()
    with open_client(make_settings(svc_bundle_dir, tmp_path / "d"), svc_bundle) as c:
        assert gc.get_freeze_count() > 0
        assert c.get("/healthz").status_code == 200
    assert gc.get_freeze_count() == 0


@pytest.mark.parametrize(("threads", "workers"), [(3, 2), (0, 1), (0, 64)])
def test_pool_threads_share_the_cpus_among_the_workers(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path, threads: int, workers: int
) -> None:
    import os

    import faiss
    import torch

    expected = threads or max(1, len(os.sched_getaffinity(0)) // workers)
    settings = make_settings(
        svc_bundle_dir, tmp_path / "d", worker_threads=threads, workers=workers
    )
    with open_client(settings, svc_bundle) as c:
        # Read from inside the pool that runs encoders and searches: OpenMP thread
        # counts are per thread, and torch and FAISS share one OpenMP runtime.
        pool = c.app.state.runtime.pool
        counts = pool.submit(lambda: (torch.get_num_threads(), faiss.omp_get_max_threads()))
        assert counts.result() == (expected, expected)
        assert c.post("/v1/encode", json={"texts": ["a dog"]}).status_code == 200


def _assert_documented(spec: dict, method: str, template: str, r) -> None:
    """The answer's status (and, for an error, problem+json) is what /openapi.json lists."""
    responses = spec["paths"][template][method.lower()]["responses"]
    where = f"{method} {template} -> {r.status_code}"
    assert str(r.status_code) in responses, f"{where} is not in the OpenAPI responses"
    if r.status_code >= 400:
        assert r.headers["content-type"] == PROBLEM, where
        assert PROBLEM in responses[str(r.status_code)].get("content", {}), where
        body = Problem.model_validate(r.json())
        assert body.status == r.status_code and body.detail, where
        assert body.instance == r.url.path, where
        # The type URNs dereference to nothing: the Problem schema is where they are explained.
        documented = spec["components"]["schemas"]["Problem"]["properties"]["type"]
        urn = re.sub(r"http-\d+$", "http-<status>", body.type)
        assert f"`{urn}`" in documented.get("description", ""), (where, body.type)


def test_every_status_a_route_answers_is_in_its_openapi_responses(
    api, svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path
) -> None:
    # A client generated from /openapi.json only knows the statuses listed there.
    spec = api.get("/openapi.json").json()
    [text] = ingest_texts(api, ["a cat"])
    [image] = ingest_files(api, [("a.png", png(0))])
    thumb = api.get(f"/v1/items/{image['id']}/thumbnail")
    etag = thumb.headers["etag"]
    missing = 10**6
    for method, template, path, headers in [
        ("GET", "/v1/items/{item_id}", f"/v1/items/{missing}", {}),
        ("DELETE", "/v1/items/{item_id}", f"/v1/items/{missing}", AUTH),
        ("GET", "/v1/items/{item_id}/thumbnail", f"/v1/items/{missing}/thumbnail", {}),
        ("GET", "/v1/items/{item_id}/thumbnail", f"/v1/items/{text['id']}/thumbnail", {}),
        ("GET", "/v1/items/{item_id}/thumbnail", thumb.url.path, {"If-None-Match": etag}),
    ]:
        _assert_documented(spec, method, template, api.request(method, path, headers=headers))

    settings = make_settings(svc_bundle_dir, tmp_path / "locked", protect_reads=True)
    with open_client(settings, svc_bundle) as locked:
        for headers in ({}, {"X-API-Key": "wrong"}):
            _assert_documented(spec, "GET", "/v1/stats", locked.get("/v1/stats", headers=headers))

    # Not entered, so the lifespan never loads the runtime: the service is "starting".
    starting = open_client(make_settings(svc_bundle_dir, tmp_path / "starting"), svc_bundle)
    for method, template, kwargs in [
        ("GET", "/readyz", {}),
        ("GET", "/v1/stats", {}),
        ("GET", "/v1/items/{item_id}", {}),
        ("DELETE", "/v1/items/{item_id}", {}),
        ("GET", "/v1/items/{item_id}/thumbnail", {}),
        ("POST", "/v1/items", {"json": {"items": [{"text": "a cat"}]}}),
        ("POST", "/v1/search", {"json": {"text": "a cat"}}),
        ("POST", "/v1/encode", {"json": {"texts": ["a cat"]}}),
    ]:
        path = template.replace("{item_id}", "1")
        r = starting.request(method, path, headers=AUTH, **kwargs)
        assert r.status_code == 503, (path, r.text)
        _assert_documented(spec, method, template, r)


def test_openapi_json_examples_work_as_sent(api) -> None:
    # Without them the docs page fills "Try it out" from the schema: a search with both
    # "text" and "code" set to "string", which is always refused.
    spec = api.get("/openapi.json").json()
    ingest_texts(api, ["a dog on the beach"])
    for path in ("/v1/items", "/v1/search", "/v1/encode"):
        example = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        r = api.post(path, json=example["example"], headers=AUTH)
        assert r.status_code == 200, (path, r.text)
        _assert_documented(spec, "POST", path, r)


def test_every_problem_type_is_explained_in_openapi(api) -> None:
    spec = api.get("/openapi.json").json()
    for method, template, path, kwargs in [
        ("POST", "/v1/items", "/v1/items", {"json": {"items": []}}),
        ("POST", "/v1/items", "/v1/items", {"json": {"items": [{"text": "a"}]}, "headers": {}}),
        ("POST", "/v1/items", "/v1/items", {"json": {}, "headers": {"X-API-Key": "wrong"}}),
        ("POST", "/v1/items", "/v1/items", {"content": b"a cat"}),
        ("POST", "/v1/search", "/v1/search", {"json": {"text": "a", "code": "00"}}),
        ("POST", "/v1/search", "/v1/search", {"json": {"text": "a", "modalities": ["audio"]}}),
        ("POST", "/v1/encode", "/v1/encode", {"files": [("files", ("a.png", b"no", "image/png"))]}),
        ("GET", "/v1/items/{item_id}", "/v1/items/12345", {}),
    ]:
        kwargs.setdefault("headers", AUTH)
        _assert_documented(spec, method, template, api.request(method, path, **kwargs))
    # Refused by routing, so on no route of the schema: only the type is checked.
    for method, path in [("GET", "/v1/nowhere"), ("PUT", "/v1/search")]:
        r = api.request(method, path)
        urn = re.sub(r"http-\d+$", "http-<status>", r.json()["type"])
        assert r.headers["content-type"] == PROBLEM and r.json()["status"] == r.status_code
        assert (
            f"`{urn}`"
            in spec["components"]["schemas"]["Problem"]["properties"]["type"]["description"]
        )
