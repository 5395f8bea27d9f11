"""Thumbnails: made at ingest, stored with the item, served, replaced and deleted with it."""

from __future__ import annotations

import io
import sqlite3
from pathlib import Path

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from index.milvus_collection import MilvusCollection
from index.store import CodeStore, NewItem
from service.encoders import Bundle
from service.settings import Settings
from tests.support.service_bundle import (
    AUTH,
    PROBLEM,
    image_bytes,
    ingest_files,
    ingest_texts,
    make_settings,
    open_client,
    png,
)


def solid(size: tuple[int, int], rgb: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    return image_bytes(Image.new("RGB", size, rgb), fmt)


def fetch(api: TestClient, item_id: int) -> Image.Image:
    r = api.get(f"/v1/items/{item_id}/thumbnail")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(r.content))
    assert image.format == "JPEG"
    return image.convert("RGB")


def thumbnail_rows(data_dir: Path, api: TestClient | None = None) -> list[int]:
    """Ids with a stored thumbnail: the local store's table, or the Milvus rows' field."""
    store = data_dir / "store.sqlite3"
    if not store.exists() and api is not None:
        collection = api.app.state.runtime.collection  # type: ignore[attr-defined]
        assert isinstance(collection, MilvusCollection), "no local store and no Milvus"
        rows = collection.client.query(
            collection.config.collection,
            filter='thumbnail != ""',
            output_fields=["id"],
            consistency_level="Strong",
        )
        return sorted(int(r["id"]) for r in rows)
    with sqlite3.connect(store) as db:
        return [row[0] for row in db.execute("SELECT id FROM thumbnails ORDER BY id")]


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64).reshape(-1, 3).mean(axis=0)


def test_an_ingested_image_gets_a_small_jpeg_keeping_its_aspect(api: TestClient) -> None:
    wide, small = ingest_files(
        api, [("wide.png", solid((640, 320), (200, 30, 40))), ("small.png", png(3, (40, 30)))]
    )
    thumb = fetch(api, wide["id"])
    assert thumb.size == (160, 80)
    assert np.abs(mean_colour(thumb) - (200, 30, 40)).max() < 6
    # Smaller than the limit: kept at its own size, never upscaled.
    assert fetch(api, small["id"]).size == (40, 30)


def test_exif_orientation_is_applied(api: TestClient) -> None:
    # Left half red, right half blue; EXIF orientation 6 means "rotate 90 degrees clockwise".
    pixels = np.zeros((100, 200, 3), np.uint8)
    pixels[:, :100] = (220, 0, 0)
    pixels[:, 100:] = (0, 0, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = image_bytes(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)
    (item,) = ingest_files(api, [("phone.jpg", data)])
    thumb = np.asarray(fetch(api, item["id"]), dtype=np.float64)
    assert thumb.shape == (160, 80, 3)  # portrait after rotation
    top, bottom = thumb[:60].mean(axis=(0, 1)), thumb[-60:].mean(axis=(0, 1))
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]


def test_transparency_is_composited_on_white(api: TestClient) -> None:
    clear = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    (item,) = ingest_files(api, [("clear.png", image_bytes(clear))])
    assert mean_colour(fetch(api, item["id"])).min() > 245


def test_texts_and_unknown_ids_answer_404_problems(api: TestClient) -> None:
    (text,) = ingest_texts(api, ["a red car"])
    r = api.get(f"/v1/items/{text['id']}/thumbnail")
    assert r.status_code == 404 and r.headers["content-type"] == PROBLEM
    assert r.json()["detail"] == f"item {text['id']} is a text; texts have no thumbnail"
    r = api.get("/v1/items/999/thumbnail")
    assert (r.status_code, r.json()["detail"]) == (404, "no item with id 999")


def test_deleting_an_item_deletes_its_thumbnail(api: TestClient, tmp_path: Path) -> None:
    keep, gone = ingest_files(api, [("a.png", png(1)), ("b.png", png(2))])
    assert thumbnail_rows(tmp_path / "data", api) == sorted([keep["id"], gone["id"]])
    assert api.delete(f"/v1/items/{gone['id']}", headers=AUTH).status_code == 204
    r = api.get(f"/v1/items/{gone['id']}/thumbnail")
    assert (r.status_code, r.json()["detail"]) == (404, f"no item with id {gone['id']}")
    assert thumbnail_rows(tmp_path / "data", api) == [keep["id"]]
    fetch(api, keep["id"])


def test_a_refused_batch_stores_no_thumbnail(api: TestClient, tmp_path: Path) -> None:
    files = [("files", ("ok.png", png(1), "image/png")), ("files", ("bad.png", b"\x89PNGxx", ""))]
    r = api.post("/v1/items", files=files, headers=AUTH)
    assert r.status_code == 422, r.text
    assert api.get("/v1/stats").json()["count"] == 0
    assert thumbnail_rows(tmp_path / "data", api) == []


def test_replacing_an_item_replaces_or_drops_its_thumbnail(api: TestClient, tmp_path: Path) -> None:
    (first,) = ingest_files(api, [("x.png", solid((64, 64), (250, 0, 0)))], client_ids='["x"]')
    r1 = api.get(f"/v1/items/{first['id']}/thumbnail")
    (again,) = ingest_files(api, [("x.png", solid((64, 64), (0, 0, 250)))], client_ids='["x"]')
    assert again["id"] == first["id"]
    assert mean_colour(fetch(api, first["id"]))[2] > 200  # now blue
    assert api.get(f"/v1/items/{first['id']}/thumbnail").headers["etag"] != r1.headers["etag"]
    # The same client id re-sent as a text: the item is a text now and has no thumbnail.
    ingest_texts(api, ["a blue square"], client_id="x")
    assert api.get(f"/v1/items/{first['id']}/thumbnail").status_code == 404
    assert thumbnail_rows(tmp_path / "data", api) == []


def test_an_unchanged_thumbnail_revalidates_with_304(api: TestClient) -> None:
    (item,) = ingest_files(api, [("a.png", png(5))])
    r = api.get(f"/v1/items/{item['id']}/thumbnail")
    assert r.headers["cache-control"] == "no-cache"
    again = api.get(
        f"/v1/items/{item['id']}/thumbnail", headers={"If-None-Match": r.headers["etag"]}
    )
    assert again.status_code == 304 and again.content == b""


def test_head_asks_for_an_item_or_thumbnail_without_fetching_it(api: TestClient) -> None:
    # Was 405: caches and link checkers probe with HEAD.
    (image,) = ingest_files(api, [("a.png", png(6))])
    (text,) = ingest_texts(api, ["a red circle"])
    thumb = api.head(f"/v1/items/{image['id']}/thumbnail")
    assert thumb.status_code == 200 and thumb.content == b""
    assert thumb.headers["content-type"] == "image/jpeg" and thumb.headers["etag"]
    item = api.head(f"/v1/items/{text['id']}")
    assert item.status_code == 200 and item.content == b""
    assert api.head(f"/v1/items/{text['id']}/thumbnail").status_code == 404
    assert api.head("/v1/items/999999").status_code == 404


def test_thumbnails_can_be_turned_off(
    svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HASHBRIDGE_THUMBNAILS", "false")
    assert Settings(bundle_dir=tmp_path, data_dir=tmp_path).thumbnails is False
    settings = make_settings(svc_bundle_dir, tmp_path / "data", thumbnails=False)
    with open_client(settings, svc_bundle) as api:
        (item,) = ingest_files(api, [("a.png", png(1))])
        r = api.get(f"/v1/items/{item['id']}/thumbnail")
        assert r.status_code == 404
        assert "HASHBRIDGE_THUMBNAILS is off" in r.json()["detail"]
    assert thumbnail_rows(tmp_path / "data", api) == []


def test_store_keeps_thumbnails_in_the_item_transaction(tmp_path: Path) -> None:
    store = CodeStore(tmp_path / "s.sqlite3", 16)
    ids = store.upsert(
        [NewItem("image", bytes(2), "a", thumbnail=b"jpeg-a"), NewItem("text", bytes(2))]
    )
    assert (store.thumbnail(ids[0]), store.thumbnail(ids[1])) == (b"jpeg-a", None)
    # A batch that fails validation writes neither items nor thumbnails.
    with pytest.raises(Exception, match="thumbnail must be bytes"):
        store.upsert([NewItem("image", bytes(2), "b", thumbnail="not bytes")])  # type: ignore[arg-type]
    assert store.count() == 2
    assert store.delete([ids[0]]) == 1
    assert store.thumbnail(ids[0]) is None
    store.close()


def clip_bytes(path: Path, colours: list[tuple[int, int, int]], size: tuple[int, int]) -> bytes:
    """An H.264 clip showing each colour for one second."""
    w, h = size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=1)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        for rgb in colours:
            pixels = np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return path.read_bytes()


def test_a_clip_gets_its_middle_frame_as_poster(svc_video_bundle_dir: Path, tmp_path: Path) -> None:
    bundle = svc_video_bundle_dir
    red, green, blue = (220, 20, 20), (20, 200, 20), (20, 20, 220)
    clip = clip_bytes(tmp_path / "c.mp4", [red, green, blue], (96, 64))
    with open_client(make_settings(bundle, tmp_path / "data")) as api:
        (item,) = ingest_files(api, [("c.mp4", clip)])
        assert item["modality"] == "video"
        poster = fetch(api, item["id"])
    assert poster.size == (160, 160)
    assert np.abs(mean_colour(poster) - green).max() < 12


def test_a_clip_the_encoder_takes_is_stored_even_without_a_poster(
    svc_video_bundle_dir: Path, tmp_path: Path
) -> None:
    # 2x1000 frames are fine at the model's size but, scaled to the 160 px poster, over the
    # pixel limit: the poster is skipped, the item is not refused.
    bundle = svc_video_bundle_dir
    clip = clip_bytes(tmp_path / "thin.mp4", [(220, 20, 20)] * 2, (2, 1000))
    settings = make_settings(bundle, tmp_path / "data", max_clip_pixels=4_000_000)
    with open_client(settings) as api:
        (item,) = ingest_files(api, [("thin.mp4", clip)])
        assert item["modality"] == "video"
        r = api.get(f"/v1/items/{item['id']}/thumbnail")
        assert r.status_code == 404 and "has no thumbnail" in r.json()["detail"]
