"""The Flickr8k captions loader and its by-photo split, on generated files and the shared copy."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.config import config_from_dict
from model.data.flickr8k import flickr8k_split, load_flickr8k
from model.data.records import DataError
from model.prepare import load_dataset

SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "flickr8k-1000"
PHOTOS = ["p0.jpg", "p1.jpg", "p2.jpg", "p3.jpg"]


def _write(root: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name in PHOTOS:
        Image.new("RGB", (8, 6), (10, 20, 30)).save(root / "images" / name)
    with (root / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header or ["image", "caption_idx", "caption"])
        writer.writerows(rows)
    return root


def _rows() -> list[list[str]]:
    return [[p, str(k), f"caption {k} of {p}"] for p in PHOTOS for k in range(5)]


def test_pairs_and_photo_labels(tmp_path: Path) -> None:
    data = load_flickr8k(_write(tmp_path, _rows()))
    assert len(data) == 20 and data.modalities == ("image", "text")
    assert data.ids[:2] == ["p0.jpg#0", "p0.jpg#1"]
    assert data.texts is not None and data.texts[7] == "caption 2 of p1.jpg"
    assert data.image_paths is not None and data.image_paths[7] == tmp_path / "images" / "p1.jpg"
    assert data.label_names == PHOTOS and not data.multi_label
    assert data.labels.dtype == np.uint8
    np.testing.assert_array_equal(data.labels.argmax(1), np.repeat(np.arange(4), 5))
    np.testing.assert_array_equal(data.labels.sum(1), 1)


def test_split_holds_out_whole_photos(tmp_path: Path) -> None:
    data = load_flickr8k(_write(tmp_path, _rows()))
    split = flickr8k_split(data, n_query=1, n_train=2, seed=3)
    photo = data.labels.argmax(1)
    assert len(split.query) == 5 and len(set(photo[split.query])) == 1
    np.testing.assert_array_equal(split.database, split.query)
    assert len(split.train) == 10 and len(set(photo[split.train])) == 2
    assert not set(photo[split.train]) & set(photo[split.query])
    again = flickr8k_split(data, n_query=1, n_train=2, seed=3)
    np.testing.assert_array_equal(again.train, split.train)
    # Every photo not held out is trained on when n_train is large.
    everything = flickr8k_split(data, n_query=1, n_train=10_000, seed=3)
    assert len(everything.train) == 15
    seeds = {tuple(flickr8k_split(data, n_query=1, n_train=3, seed=s).query) for s in range(8)}
    assert len(seeds) > 1
    with pytest.raises(ValueError, match="held-out photos for flickr8k: between 1 and 3, got 4"):
        flickr8k_split(data, n_query=4, n_train=1, seed=0)


def test_load_dataset_uses_the_photo_split(tmp_path: Path) -> None:
    root = _write(tmp_path, _rows())
    config = config_from_dict(
        {"data": {"kind": "flickr8k", "path": str(root), "n_query": 2, "n_train": 2}}
    )
    data, split = load_dataset(config)
    assert len(data) == 20 and len(split.query) == 10 and len(split.train) == 10


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([["p0.jpg", "0", " "]], None, r"row 1: expected image, caption_idx and a non-empty"),
        ([["p0.jpg", "0", "a"], ["p0.jpg", "0", "b"]], None, "appears twice"),
        ([["p9.jpg", "0", "a"]], None, r"1 photos missing under images/ \(first: p9\.jpg\)"),
        ([["p0.jpg", "0", "a"]], ["img", "idx", "text"], "header must be image,caption_idx"),
        ([], None, "no caption rows"),
    ],
)
def test_bad_files_are_refused(
    tmp_path: Path, rows: list[list[str]], header: list[str] | None, message: str
) -> None:
    with pytest.raises(DataError, match=message):
        load_flickr8k(_write(tmp_path, rows, header))


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no captions.csv"):
        load_flickr8k(tmp_path)


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared Flickr8k copy not found at {SHARED}")
def test_shared_copy() -> None:
    data = load_flickr8k(SHARED)
    assert len(data) == 5000 and len(data.label_names) == 1000
    np.testing.assert_array_equal(data.labels.sum(0), 5)
    split = flickr8k_split(data, n_query=200, n_train=800, seed=0)
    assert (len(split.query), len(split.train)) == (1000, 4000)
    assert not set(split.query) & set(split.train)
