"""Video through the real service: a tiny trained video+text model, exported and served.

The model is trained here on generated clips of moving shapes and, when ../shared exists,
on some of the real kinetics-tiny clips (captions derived from their labels); it is
exported with model.export and served by `python -m service` on loopback. Clips it never
trained on are ingested through /v1/items and found by text; bad video uploads each get a
4xx that says what is wrong and leave the collection as it was.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
import pytest
import torch

from bundle.clips import decode_clip
from model.config import config_from_dict
from model.data.kinetics import load_kinetics
from model.data.synthetic_video import (
    LABEL_NAMES,
    ORDER_PAIRS,
    generate_video_dataset,
    write_clip,
)
from model.export import export_bundle
from model.train import train
from service.encoders import load_bundle
from tests.support.service_bundle import AUTH, PROBLEM, REPO, ServerProcess

pytestmark = pytest.mark.slow

SIZE, FRAMES = 64, 4
KINETICS = REPO.parent / "shared" / "datasets" / "kinetics-tiny-2class"
KINETICS_PER_CLASS = 8  # training clips per class: enough for two classes, and quick to decode
LIMITS = {
    "HASHBRIDGE_MAX_CLIP_SECONDS": "12",  # the real clips last up to 10 s
    "HASHBRIDGE_MAX_CLIP_PIXELS": "100000",
    "HASHBRIDGE_MAX_CLIP_FRAMES": "150",  # the real clips hold 100 frames (10 fps, 10 s)
    "HASHBRIDGE_MAX_UPLOAD_BYTES": "1000000",
}
#: Five generated classes a single frame tells apart (order pairs need longer training).
ORDERED = {name for pair in ORDER_PAIRS for name in pair}
CLASSES = [name for name in LABEL_NAMES if name not in ORDERED][:5]


@dataclass(frozen=True)
class Clip:
    """A clip file with its caption and class."""

    path: Path
    text: str
    label: str
    real: bool = False


@dataclass(frozen=True)
class Served:
    """The running server and the clips kept out of training, to ingest."""

    url: str
    held_out: list[Clip]
    bundle: Path


def _synthetic(root: Path) -> tuple[list[Clip], list[Clip]]:
    manifest = generate_video_dataset(
        root, n=300, seed=0, size=SIZE, frames_per_clip=FRAMES, database_fraction=0.05
    )  # 15 clips per class
    with manifest.open(newline="") as f:
        rows = list(csv.DictReader(f))
    clips = [(Clip(root / r["video"], r["text"], r["labels"]), r["split"]) for r in rows]
    train_set = [c for c, split in clips if split == "train" and c.label in CLASSES]
    held_out = [c for c, split in clips if split == "query" and c.label in CLASSES]
    return train_set, held_out


def _kinetics() -> tuple[list[Clip], list[Clip]]:
    if not KINETICS.is_dir():
        return [], []
    data = load_kinetics(KINETICS)
    assert data.video_paths and data.texts and data.splits
    clips = []
    for path, text, onehot, split in zip(
        data.video_paths, data.texts, data.labels, data.splits, strict=True
    ):
        label = data.label_names[int(onehot.argmax())]
        clips.append((Clip(Path(str(path)), text, label, real=True), split))
    train_set: list[Clip] = []
    for label in data.label_names:
        train_set += [c for c, s in clips if s == "train" and c.label == label][:KINETICS_PER_CLASS]
    return train_set, [c for c, s in clips if s == "test"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("video-service")
    syn_train, syn_held = _synthetic(root / "synthetic")
    kin_train, kin_held = _kinetics()
    manifest = root / "train.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "video", "text", "labels", "split"])
        for i, clip in enumerate([*syn_train, *kin_train]):
            writer.writerow([f"t{i}", clip.path, clip.text, clip.label, "train"])
        # The manifest needs queries; these are never trained on.
        for i, clip in enumerate([*syn_held, *kin_held]):
            writer.writerow([f"q{i}", clip.path, clip.text, clip.label, "query"])
    config = config_from_dict(
        {
            "bits": 32,
            "data": {"path": str(manifest), "modalities": ["video", "text"]},
            "video": {
                "size": SIZE,
                "frames": FRAMES,
                "width": 32,
                "blocks": 1,
                "hidden": [128],
                "cache_dir": str(root / "maps"),
            },
            "text": {"hidden": [128]},
            "train": {"epochs": 40, "batch_size": 16, "lr": 0.003, "eval_every": 0},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(config, root / "run")
        bundle = export_bundle(root / "run", root / "bundle")
    finally:
        torch.set_num_threads(threads)
    with ServerProcess(bundle, root / "data", root / "server.log", **LIMITS) as server:
        server.wait_ready()
        yield Served(server.url, [*syn_held, *kin_held], bundle)


@pytest.fixture(scope="module")
def http(served: Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def ingested(served: Served, http: httpx.Client) -> dict[str, dict[str, Any]]:
    """Every held-out clip ingested in one multipart batch: client id -> response item."""
    clips = served.held_out
    files = [("files", (c.path.name, c.path.read_bytes(), "video/mp4")) for c in clips]
    form = {
        "client_ids": json.dumps([c.path.stem for c in clips]),
        "metadata": json.dumps([{"label": c.label} for c in clips]),
    }
    r = http.post("/v1/items", files=files, data=form, headers=AUTH)
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [it["modality"] for it in items] == ["video"] * len(clips)
    return {it["client_id"]: it for it in items}


def _labels_found(http: httpx.Client, body: dict[str, Any], **files: Any) -> list[str]:
    r = http.post("/v1/search", json=body) if not files else http.post("/v1/search", **files)
    assert r.status_code == 200, r.text
    return [hit["metadata"]["label"] for hit in r.json()["results"]]


def test_text_finds_ingested_clips_of_its_class(
    served: Served, http: httpx.Client, ingested: dict
) -> None:
    for clip in served.held_out:
        if clip.real:
            continue  # see the next test
        # Its own caption: the model never saw the clip or the caption.
        found = _labels_found(http, {"text": clip.text, "modalities": ["video"], "k": 1})
        assert found == [clip.label], clip


@pytest.mark.skipif(not KINETICS.is_dir(), reason=f"needs the shared dataset at {KINETICS}")
def test_text_finds_real_clips_of_its_class(http: httpx.Client, ingested: dict) -> None:
    for label in ("typing", "doing exercises"):
        query = {"text": f"a person {label}", "modalities": ["video"], "k": 2}
        assert _labels_found(http, query) == [label, label]


def test_a_clip_finds_captions_of_its_class(served: Served, http: httpx.Client) -> None:
    captions = [{"text": c.text, "metadata": {"label": c.label}} for c in served.held_out]
    r = http.post("/v1/items", json={"items": captions}, headers=AUTH)
    assert r.status_code == 200, r.text
    hits = 0
    for clip in served.held_out:
        upload = {"files": [("file", (clip.path.name, clip.path.read_bytes(), "video/mp4"))]}
        form = {"data": {"modalities": "text", "k": "1"}}
        hits += _labels_found(http, {}, **upload, **form) == [clip.label]
    # A model trained for seconds on a few dozen clips: most, not all, clips rank a caption
    # of their own class first (13 of 14 here with the real clips).
    assert hits >= 0.75 * len(served.held_out)


def test_encode_gives_the_ingested_code_and_the_bundle_encoders_code(
    served: Served, http: httpx.Client, ingested: dict
) -> None:
    clip = served.held_out[0]
    r = http.post("/v1/encode", files=[("files", ("c.mp4", clip.path.read_bytes(), "video/mp4"))])
    assert r.status_code == 200, r.text
    code = r.json()["codes"][0]
    assert code["modality"] == "video" and code["code"] == ingested[clip.path.stem]["code"]
    pixels = decode_clip(clip.path, frames=FRAMES, size=SIZE)[None]
    direct = load_bundle(served.bundle).encoders["video"].encode(pixels)
    assert direct[0].tobytes().hex() == code["code"]


# ------------------------------------------------------------------------- bad video inputs


def _mp4(frames: list[np.ndarray], fps: int, path: Path) -> bytes:
    return write_clip(path, np.stack(frames), fps).read_bytes()


def _frameless_mp4(path: Path) -> bytes:
    """An MP4 whose video track was opened and closed without a single frame."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=8)
    stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
    container.start_encoding()  # writes the header, which no packet would trigger here
    container.mux(stream.encode())
    container.close()
    return path.read_bytes()


def _audio_only_m4a() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as container:
        audio = container.add_stream("aac", rate=16000, layout="mono")
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    return buffer.getvalue()


def bad_inputs(tmp: Path) -> dict[str, tuple[bytes, int, tuple[str, ...]]]:
    """name -> (file bytes, expected status, fragments of the expected message)."""
    grey = np.full((64, 64, 3), 120, np.uint8)
    big = np.full((300, 400, 3), 120, np.uint8)
    return {
        "corrupt.mp4": (
            b"\0\0\0\x18ftypisom" + bytes(range(256)) * 4,
            422,
            ("clip 'corrupt.mp4' is not a readable video file",),
        ),
        "song.m4a": (
            _audio_only_m4a(),
            415,
            ("clip 'song.m4a' has no video stream", "audio"),
        ),
        "empty.mp4": (b"", 422, ("file 'empty.mp4' is empty",)),
        "frameless.mp4": (
            _frameless_mp4(tmp / "frameless.mp4"),
            415,
            ("clip 'frameless.mp4' has no video stream",),
        ),
        "long.mp4": (
            _mp4([grey] * 20, 1, tmp / "long.mp4"),
            413,
            ("clip 'long.mp4' lasts 20.0 s", "limit is 12 s", "HASHBRIDGE_MAX_CLIP_SECONDS"),
        ),
        "wide.mp4": (
            _mp4([big] * 4, 8, tmp / "wide.mp4"),
            413,
            ("400x300 = 120000 pixels", "limit is 100000 pixels", "HASHBRIDGE_MAX_CLIP_PIXELS"),
        ),
        "many-frames.mp4": (
            _mp4([grey] * 160, 80, tmp / "many-frames.mp4"),
            413,
            ("more than 150 frames; the limit is 150 frames", "HASHBRIDGE_MAX_CLIP_FRAMES"),
        ),
        "huge.mp4": (
            b"\0\0\0\x18ftypisom" + b"\0" * 1_000_001,
            413,
            ("'huge.mp4' is 1000013 bytes; the limit is 1000000 bytes",),
        ),
    }


def test_bad_clips_get_a_4xx_that_says_why_and_store_nothing(
    served: Served, http: httpx.Client, ingested: dict, tmp_path: Path
) -> None:
    before = http.get("/v1/stats").json()
    good = served.held_out[0]
    for name, (data, status, fragments) in bad_inputs(tmp_path).items():
        for endpoint in ("/v1/items", "/v1/encode"):
            r = http.post(endpoint, files=[("files", (name, data, "video/mp4"))], headers=AUTH)
            assert r.status_code == status, (name, r.text)
            assert r.headers["content-type"] == PROBLEM
            detail = r.json()["detail"]
            assert all(f in detail for f in fragments), (name, detail)
        # Next to a good clip, the whole batch is refused and names the bad item.
        files = [
            ("files", (good.path.name, good.path.read_bytes(), "video/mp4")),
            ("files", (name, data, "video/mp4")),
        ]
        r = http.post("/v1/items", files=files, headers=AUTH)
        assert r.status_code == status and r.json()["detail"].startswith("item #1: "), r.text
        r = http.post("/v1/search", files=[("file", (name, data, "video/mp4"))])
        assert r.status_code == status, (name, r.text)
    assert http.get("/v1/stats").json() == before
