"""Video + text on CPU end to end: generated clips, cached maps, training, eval, export."""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.clips import decode_clip
from model.checkpoint import load_checkpoint
from model.config import RunConfig, config_from_dict
from model.data.records import DataError
from model.evaluate import evaluate_run
from model.export import export_bundle, load_run
from model.hashing import pack_bits
from model.prepare import load_dataset, prepare
from model.train import TrainResult, train
from model.video_features import extract_clip_maps
from service.encoders import load_bundle

SIZE, FRAMES = 64, 4
MAP_DIM = FRAMES * 1280 * 2 * 2  # EfficientNet-Lite0 maps are 2x2 at 64 px
KINETICS = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "kinetics-tiny-2class"


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("video")


def video_config(workdir: Path, **sections: dict) -> RunConfig:
    """60 generated clips (4 per class: every query's class is in the database), 4 frames at
    64 px, a tiny conv3d stream, 4 epochs."""
    data = {
        "kind": "synthetic_video",
        "path": str(workdir / "clips"),
        "modalities": ["video", "text"],
        "generate": {
            "n": 60,
            "seed": 0,
            "size": SIZE,
            "frames_per_clip": FRAMES,
            "database_fraction": 0.5,
        },
    }
    video = {"size": SIZE, "frames": FRAMES, "width": 8, "blocks": 1, "hidden": [32]}
    video["cache_dir"] = str(workdir / "maps")
    return config_from_dict(
        {
            "bits": 16,
            "data": data,
            "video": {**video, **sections.get("video", {})},
            "text": {"hidden": [32]},
            "train": {"epochs": 4, "batch_size": 8, "lr": 0.01, "eval_every": 2},
            "eval": {"top_r": 10, "ks": [1, 5]},
        }
    )


@pytest.fixture(scope="module")
def trained(workdir: Path, one_thread: None) -> TrainResult:
    return train(video_config(workdir), workdir / "run")


def test_training_records_the_video_stream_and_every_direction(trained: TrainResult) -> None:
    state = load_checkpoint(trained.run_dir)
    assert state["kinds"] == {"video": "clip", "text": "bag_of_words"}
    assert state["input_dims"]["video"] == MAP_DIM
    assert state["config"]["video"]["temporal"] == "conv3d"
    final = trained.history[-1]["map"]
    assert set(final) == {"video->video", "video->text", "text->video", "text->text"}
    assert all(0.0 < v <= 1.0 for v in final.values())
    losses = [h["loss"]["total"] for h in trained.history]
    assert losses[-1] < losses[0]


def test_eval_reports_video_directions(trained: TrainResult, workdir: Path) -> None:
    report = evaluate_run(trained.run_dir, workdir / "eval.json")
    for direction in ("video->text", "text->video", "video->video"):
        assert 0.0 < report["map"][direction] <= 1.0
        assert report["directions"][direction]["binary"]["map"] == report["map"][direction]
    assert report["num_queries"] == 6 and report["num_database"] == 30


def test_map_cache_is_keyed_by_content_and_sampling(workdir: Path, trained: TrainResult) -> None:
    config = video_config(workdir)
    data, _ = load_dataset(config)
    paths = [Path(p) for p in data.video_paths[:3]]  # type: ignore[index]
    cache = workdir / "maps"
    first = extract_clip_maps(
        paths, backbone="efficientnet-lite0", size=SIZE, frames=FRAMES, clips=1, cache_dir=cache
    )
    assert first.shape == (3, MAP_DIM) and first.dtype == np.float16
    # A renamed copy is a cache hit: same bytes, same maps, no new row.
    copy = workdir / "renamed.mp4"
    shutil.copy(paths[0], copy)
    table = cache / f"efficientnet-lite0-{SIZE}px-{FRAMES}f-1c-maps.sqlite"
    rows = sqlite3.connect(table).execute("SELECT COUNT(*) FROM maps").fetchone()[0]
    again = extract_clip_maps(
        [copy], backbone="efficientnet-lite0", size=SIZE, frames=FRAMES, clips=1, cache_dir=cache
    )
    np.testing.assert_array_equal(again[0], first[0])
    assert sqlite3.connect(table).execute("SELECT COUNT(*) FROM maps").fetchone()[0] == rows
    # Another sampling is another cache file; two clips of 2 frames are not 4 frames.
    two = extract_clip_maps(
        paths[:1], backbone="efficientnet-lite0", size=SIZE, frames=2, clips=2, cache_dir=cache
    )
    assert (cache / f"efficientnet-lite0-{SIZE}px-2f-2c-maps.sqlite").is_file()
    assert two.shape == (1, MAP_DIM)


def test_exported_video_encoder_matches_training_codes(trained: TrainResult, workdir: Path) -> None:
    bundle_dir = export_bundle(trained.run_dir, workdir / "bundle")
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    spec = manifest["modalities"]["video"]
    assert (spec["input"], spec["frames"], spec["size"], spec["clips"]) == ("clip", FRAMES, SIZE, 1)
    assert manifest["verified_samples"]["video"] == 8  # 4 real clips and 4 random ones
    bundle = load_bundle(bundle_dir)  # the service's loader, probe included
    run = load_run(trained.run_dir)
    prepared = prepare(run.config, vocabulary=None)
    rows = prepared.split.query
    paths = [prepared.data.video_paths[i] for i in rows]  # type: ignore[index]
    pixels = np.stack([decode_clip(p, frames=FRAMES, size=SIZE) for p in paths])
    served = bundle.encoders["video"].encode(pixels)
    with torch.no_grad():
        trained_codes = pack_bits(
            run.method.encode("video", torch.from_numpy(prepared.inputs["video"][rows]))
        )
    # The service decodes and runs the trunk itself; the codes are those the model trained on.
    np.testing.assert_array_equal(served, trained_codes.numpy())


def test_an_unreadable_clip_in_the_dataset_names_the_file(workdir: Path) -> None:
    bad = workdir / "bad.mp4"
    bad.write_bytes(b"\0\0\0\x18ftypisom" + b"\x17" * 300)
    with pytest.raises(DataError, match=r"bad\.mp4: cannot decode this clip: clip 'bad\.mp4'"):
        extract_clip_maps(
            [bad], backbone="efficientnet-lite0", size=SIZE, frames=FRAMES, clips=1,
            cache_dir=workdir / "maps", workers=1,
        )  # fmt: skip


@pytest.mark.skipif(not KINETICS.is_dir(), reason=f"needs the shared dataset at {KINETICS}")
def test_kinetics_config_loads_the_listed_splits() -> None:
    config = config_from_dict(
        {"data": {"kind": "kinetics", "path": str(KINETICS), "modalities": ["video", "text"]}}
    )
    data, split = load_dataset(config)
    assert len(data) == 69 and data.label_names == ["doing exercises", "typing"]
    assert (len(split.query), len(split.train), len(split.val)) == (5, 49, 15)
    assert np.array_equal(split.database, split.train)
