"""Every bad input gets a 4xx problem+json that names the problem, and changes nothing."""

import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.encoders import Bundle
from tests.support.service_bundle import (
    AUTH,
    PROBLEM,
    grid_image,
    image_bytes,
    ingest_files,
    ingest_texts,
    make_settings,
    open_client,
    png,
)

LIMITS = {
    "max_upload_bytes": 300_000,
    "max_request_bytes": 1_000_000,
    "max_text_chars": 200,
    "max_batch_items": 8,
    "max_image_pixels": 200_000,
    "max_k": 50,
}


@pytest.fixture(scope="module")
def client(
    svc_bundle_dir: Path,
    svc_bundle: Bundle,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    settings = make_settings(svc_bundle_dir, tmp_path_factory.mktemp("bad") / "data", **LIMITS)
    with open_client(settings, svc_bundle) as c:
        ingest_texts(c, ["a cat on a car", "blue sea", "red sunset"], metadata={"tag": "t"})
        ingest_texts(c, ["a dog"], client_id="dog")
        ingest_files(c, [(f"{i}.png", png(i)) for i in range(3)])
        yield c


def state(c: TestClient) -> Any:
    """What a client can observe of the collection: stats and a few searches."""
    stats = c.get("/v1/stats").json()
    searches = [
        c.post("/v1/search", json={"text": "a cat", "k": 50}).json(),
        c.post("/v1/search", json={"code": "00000000", "k": 50}).json(),
        c.post("/v1/search", files=[("file", ("q.png", png(0), "image/png"))]).json(),
    ]
    return stats, searches


def files(*named: tuple[str, bytes], **form: str) -> dict[str, Any]:
    return {
        "files": [("files", (n, d, "application/octet-stream")) for n, d in named],
        "data": form,
    }


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload))
            + kind
            + payload
            + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


GOOD = png(7)
BIG_PNG = image_bytes(grid_image(1, (600, 400)))  # 240,000 pixels > 200,000
TRUNCATED = image_bytes(grid_image(2, (200, 200)))[:300]
CORRUPT = bytearray(image_bytes(grid_image(3, (200, 200))))
CORRUPT[60:120] = b"\xff" * 60
NOISE = np.random.default_rng(0).integers(0, 256, 320_000, dtype=np.uint8).tobytes()
MP4 = b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + b"\0" * 64

Request = Callable[[TestClient], Any]

# A multipart body whose declared charset (any codec Python knows) decodes the file name
# into a lone surrogate.
SURROGATE_NAME_TYPE = "multipart/form-data; boundary=b; charset=unicode_escape"
SURROGATE_NAME_BODY = (
    b'--b\r\nContent-Disposition: form-data; name="files"; filename="\\ud800.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + GOOD + b"\r\n--b--\r\n"
)


def ingest(**kw: Any) -> Request:
    headers = kw.pop("headers", AUTH)
    return lambda c: c.post("/v1/items", headers=headers, **kw)


def ingest_raw_json(body: bytes) -> Request:
    """POST a JSON body exactly as written (to send what json.dumps would not)."""
    return ingest(content=body, headers={**AUTH, "Content-Type": "application/json"})


def find(**kw: Any) -> Request:
    return lambda c: c.post("/v1/search", **kw)


CASES: dict[str, tuple[Request, int, str]] = {
    "truncated-image": (
        ingest(**files(("ok.png", GOOD), ("cut.png", TRUNCATED))),
        422,
        "item #1: image 'cut.png' is corrupt or truncated",
    ),
    "corrupt-image": (ingest(**files(("bad.png", bytes(CORRUPT)))), 422, "'bad.png' is corrupt"),
    "non-image-bytes": (
        ingest(**files(("notes.txt", b"just some text, not pixels" * 4))),
        422,
        "'notes.txt' is not a recognised image",
    ),
    "declared-bomb": (
        ingest(**files(("bomb.png", png_header(2_000, 2_000)))),
        413,
        "'bomb.png' is 2000x2000 = 4000000 pixels; the limit is 200000",
    ),
    "too-many-pixels": (
        ingest(**files(("big.png", BIG_PNG))),
        413,
        "600x400 = 240000 pixels; the limit is 200000",
    ),
    "oversized-upload": (
        ingest(**files(("noise.png", NOISE))),
        413,
        "'noise.png' is 320000 bytes; the limit is 300000 bytes",
    ),
    "oversized-request": (
        ingest(**files(*[(f"{i}.png", NOISE[:290_000]) for i in range(4)])),
        413,
        "request body exceeds 1000000 bytes",
    ),
    "oversized-chunked-request": (
        # No Content-Length: the limit trips while the body streams in.
        ingest(
            content=iter([b'{"items": [' + b" " * 600_000, b" " * 600_000 + b"]}"]),
            headers={**AUTH, "Content-Type": "application/json"},
        ),
        413,
        "request body exceeds 1000000 bytes",
    ),
    "empty-file": (ingest(**files(("e.png", b""))), 422, "'e.png' is empty"),
    "video-without-video-encoder": (
        ingest(**files(("clip.mp4", MP4))),
        422,
        "'clip.mp4' is a video clip, but this bundle has no video encoder",
    ),
    "empty-text": (ingest(json={"items": [{"text": "  \n"}]}), 422, "text is empty"),
    "oversized-text": (
        ingest(json={"items": [{"text": "ok"}, {"text": "cat " * 60}]}),
        413,
        "item #1: text has 240 characters; the limit is 200",
    ),
    "no-items": (ingest(json={"items": []}), 422, "body.items"),
    "too-many-items": (
        ingest(json={"items": [{"text": f"cat {i}"} for i in range(9)]}),
        413,
        "holds 9 items; the limit is 8",
    ),
    "file-without-a-name": (
        ingest(files=[("files", ("", GOOD, "image/png"))]),
        422,
        "form field 'files' #0 must be a file, not a text value; send it as a file part with a",
    ),
    "too-many-files": (
        ingest(**files(*[(f"{i}.png", GOOD) for i in range(9)])),
        413,
        "more than 8 files; the limit is 8 per call (HASHBRIDGE_MAX_BATCH_ITEMS)",
    ),
    "duplicate-client-ids": (
        ingest(json={"items": [{"text": "a", "client_id": "x"}, {"text": "b", "client_id": "x"}]}),
        422,
        "client_id 'x' appears twice",
    ),
    "reserved-metadata-key": (
        ingest(json={"items": [{"text": "a cat", "metadata": {"text": "mine"}}]}),
        422,
        "metadata key 'text' is reserved",
    ),
    "metadata-not-object": (
        ingest(json={"items": [{"text": "a cat", "metadata": [1, 2]}]}),
        422,
        "body.items.0.metadata",
    ),
    "unknown-json-field": (
        ingest(json={"items": [{"txt": "a cat"}]}),
        422,
        "body.items.0.text: Field required",
    ),
    "bad-json": (
        ingest_raw_json(b'{"items": ['),
        400,
        "request body is not valid JSON",
    ),
    "lone-surrogate-text": (
        ingest_raw_json(b'{"items": [{"text": "cat \\ud800"}]}'),
        400,
        "request body is not valid JSON",
    ),
    "nan-in-metadata": (
        ingest_raw_json(b'{"items": [{"text": "cat", "metadata": {"score": NaN}}]}'),
        422,
        "metadata is not plain JSON",
    ),
    "wrong-content-type": (
        ingest(content=b"a cat", headers={**AUTH, "Content-Type": "text/plain"}),
        415,
        "content type 'text/plain' is not accepted",
    ),
    "client-ids-misaligned": (
        ingest(**files(("a.png", GOOD), client_ids='["a", "b"]')),
        422,
        "'client_ids' has 2 entries for 1 files",
    ),
    "client-ids-not-json": (
        ingest(**files(("a.png", GOOD), client_ids="a,b")),
        422,
        "form field 'client_ids' is not valid JSON",
    ),
    "unknown-form-field": (
        ingest(files=[("file", ("a.png", GOOD, "image/png"))], data={}),
        422,
        "unknown form field 'file'",
    ),
    "missing-api-key": (
        ingest(json={"items": [{"text": "a cat"}]}, headers={}),
        401,
        "needs an API key",
    ),
    "wrong-api-key": (
        ingest(json={"items": [{"text": "a cat"}]}, headers={"X-API-Key": "guess"}),
        403,
        "API key is not valid",
    ),
    "delete-without-key": (lambda c: c.delete("/v1/items/1"), 401, "needs an API key"),
    "delete-unknown-id": (lambda c: c.delete("/v1/items/9999", headers=AUTH), 404, "9999"),
    "get-unknown-id": (lambda c: c.get("/v1/items/9999"), 404, "no item with id 9999"),
    "get-non-integer-id": (lambda c: c.get("/v1/items/abc"), 422, "path.item_id"),
    "unknown-modality": (
        find(json={"text": "cat", "modalities": ["audio"]}),
        422,
        "unknown modality 'audio'; this bundle has image, text",
    ),
    "empty-modalities": (find(json={"text": "cat", "modalities": []}), 422, "modalities is empty"),
    "k-zero": (find(json={"text": "cat", "k": 0}), 422, "body.k"),
    "k-over-max": (
        find(json={"text": "cat", "k": 51}),
        422,
        "k must be between 1 and 50 (HASHBRIDGE_MAX_K), got 51",
    ),
    "k-not-integer-form": (
        find(files=[("file", ("q.png", GOOD, "image/png"))], data={"k": "ten"}),
        422,
        "form.k",
    ),
    "code-wrong-length": (
        find(json={"code": "abcd"}),
        422,
        "code must be 8 hex characters for this bundle's 32-bit codes, got 4",
    ),
    "code-bad-hex": (find(json={"code": "zzzzzzzz"}), 422, "'zzzzzzzz' is not valid hex"),
    "no-query": (find(json={"k": 3}), 422, "give exactly one query"),
    "two-queries": (find(json={"text": "cat", "code": "00000000"}), 422, "(got text, code)"),
    "where-not-object": (find(json={"text": "cat", "where": [1]}), 422, "body.where"),
    "where-form-not-json": (
        find(files=[("file", ("q.png", GOOD, "image/png"))], data={"where": "{tag"}),
        422,
        "form field 'where' is not valid JSON",
    ),
    "empty-text-query": (find(json={"text": ""}), 422, "text is empty"),
    "corrupt-query-image": (
        find(files=[("file", ("q.png", TRUNCATED, "image/png"))]),
        422,
        "'q.png' is corrupt or truncated",
    ),
    "encode-bomb": (
        lambda c: c.post("/v1/encode", **files(("bomb.png", png_header(20_000, 20_000)))),
        413,
        "400000000 pixels",
    ),
    "encode-empty-texts": (lambda c: c.post("/v1/encode", json={"texts": []}), 422, "body.texts"),
    "get-id-beyond-int64": (lambda c: c.get(f"/v1/items/{2**63}"), 422, "path.item_id"),
    "thumbnail-id-beyond-int64": (
        lambda c: c.get(f"/v1/items/{2**63}/thumbnail"),
        422,
        "path.item_id",
    ),
    "delete-id-beyond-int64": (
        lambda c: c.delete(f"/v1/items/{2**64}", headers=AUTH),
        422,
        "path.item_id",
    ),
    "code-padded-with-spaces": (
        find(json={"code": "ab      "}),
        422,
        "code 'ab      ' is not valid hex",
    ),
    "form-text-lone-surrogate": (
        ingest(files=[("items", (None, '[{"text": "cat \\ud800"}]'))]),
        422,
        "form field 'items' is not valid JSON",
    ),
    "form-client-id-lone-surrogate": (
        ingest(**files(("a.png", GOOD), client_ids='["\\udc00"]')),
        422,
        "form field 'client_ids' is not valid JSON",
    ),
    "form-metadata-key-lone-surrogate": (
        ingest(**files(("a.png", GOOD), metadata='[{"\\ud800": 1}]')),
        422,
        "form field 'metadata' is not valid JSON",
    ),
    "form-json-huge-number": (
        find(
            files=[("file", ("q.png", GOOD, "image/png"))],
            data={"where": '{"a": ' + "1" * 5000 + "}"},
        ),
        422,
        "form field 'where' is not valid JSON",
    ),
    "form-json-too-deep": (
        ingest(**files(("a.png", GOOD), metadata="[{" + '"a": [' * 300 + "]" * 300 + "}]")),
        422,
        "form field 'metadata' is not valid JSON",
    ),
    "filename-lone-surrogate": (
        ingest(
            content=SURROGATE_NAME_BODY,
            headers={**AUTH, "Content-Type": SURROGATE_NAME_TYPE},
        ),
        422,
        "is not valid Unicode text",
    ),
    "too-elongated-image": (
        ingest(**files(("ok.png", GOOD), ("thin.png", png_header(1, 20_000)))),
        413,
        "item #1: image 'thin.png' is 1x20000: scaled to 32 px on its shorter side",
    ),
    "json-not-utf8": (
        ingest(
            content='{"items": [{"text": "cat"}]}'.encode("utf-16"),
            headers={**AUTH, "Content-Type": "application/json; charset=utf-16"},
        ),
        415,
        "JSON bodies must be UTF-8; this one says charset=utf-16",
    ),
    "unknown-route": (
        lambda c: c.get("/v2/nothing"),
        404,
        "Not Found: nothing is served at /v2/nothing; /docs lists the endpoints",
    ),
    "wrong-method": (
        lambda c: c.get("/v1/search"),
        405,
        "Method Not Allowed: /v1/search does not take GET; use POST",
    ),
    "wrong-method-on-an-item": (
        lambda c: c.put("/v1/items/1", headers=AUTH),
        405,
        "Method Not Allowed: /v1/items/1 does not take PUT; use GET, HEAD, DELETE",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_changes_nothing(client: TestClient, case: str) -> None:
    request, status, fragment = CASES[case]
    before = state(client)
    r = request(client)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["type"].startswith("urn:hashbridge:problem:")
    assert body["title"]
    assert fragment in body["detail"], body
    assert state(client) == before


def test_batch_errors_list_every_bad_item(client: TestClient) -> None:
    before = state(client)
    r = client.post(
        "/v1/items",
        headers=AUTH,
        **files(("a.png", GOOD), ("cut.png", TRUNCATED), ("n.txt", b"nope" * 10)),
    )
    assert r.status_code == 422
    body = r.json()
    assert body["detail"].startswith("item #1: image 'cut.png' is corrupt or truncated")
    assert "and 1 more problems" in body["detail"]
    assert [e["item"] for e in body["errors"]] == [1, 2]
    assert "not a recognised image" in body["errors"][1]["detail"]
    assert state(client) == before


def test_validation_errors_are_listed(client: TestClient) -> None:
    r = client.post("/v1/search", json={"text": 3, "k": "many"})
    assert r.status_code == 422 and r.headers["content-type"] == PROBLEM
    locs = sorted(tuple(e["loc"]) for e in r.json()["errors"])
    assert locs == [("body", "k"), ("body", "text")]


def test_good_request_after_refusals_still_writes(client: TestClient) -> None:
    # The module's client has refused many requests; it must still accept good ones.
    before = client.get("/v1/stats").json()["count"]
    ingest_texts(client, ["a white horse"])
    assert client.get("/v1/stats").json()["count"] == before + 1


def test_wrong_method_allow_header_lists_every_method_of_the_path(client: TestClient) -> None:
    # One route per method: routing alone named only the first (GET, hiding DELETE).
    for path, allowed in [
        ("/v1/items/1", "GET, HEAD, DELETE"),
        ("/v1/items/1/thumbnail", "GET, HEAD"),
        ("/healthz", "GET, HEAD"),
        ("/v1/search", "POST"),
    ]:
        r = client.patch(path, headers=AUTH)
        assert r.status_code == 405 and r.headers["content-type"] == PROBLEM, path
        assert r.headers["allow"] == allowed, path
        assert r.json()["detail"].endswith(f"does not take PATCH; use {allowed}"), path
