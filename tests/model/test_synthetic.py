"""The seeded shapes dataset: deterministic, loadable, its captions and labels truthful."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data.manifest import load_manifest
from model.data.synthetic import COLOURS, LABEL_NAMES, SHAPES, make_scene, write_synthetic_images


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_images(tmp_path_factory.mktemp("syn") / "a", 60, seed=3)


def _files(manifest: Path) -> dict[str, bytes]:
    root = manifest.parent
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_differs(written: Path, tmp_path: Path) -> None:
    again = write_synthetic_images(tmp_path / "b", 60, seed=3)
    other = write_synthetic_images(tmp_path / "c", 60, seed=4)
    assert _files(again) == _files(written)
    assert len(_files(written)) == 61  # 60 PNGs and the manifest, no temp files
    differing = [k for k, v in _files(other).items() if _files(written)[k] != v]
    assert len(differing) > 50


def test_manifest_loads_with_expected_columns(written: Path) -> None:
    with written.open(newline="") as f:
        header = next(csv.reader(f))
    assert header == ["id", "image", "text", "labels"]
    data = load_manifest(written)
    assert len(data) == 60
    assert data.ids[0] == "syn-00000"
    assert data.splits is None
    assert set(data.label_names) <= set(LABEL_NAMES)
    assert data.multi_label
    per_item = data.labels.sum(axis=1)
    assert per_item.min() >= 2 and per_item.max() <= 4
    # Both one-shape and two-shape scenes occur.
    assert (per_item == 2).any() and (per_item >= 3).any()
    for path in data.image_paths or []:
        with Image.open(path) as image:
            assert image.size == (64, 64) and image.mode == "RGB"


def test_captions_name_exactly_the_labels(written: Path) -> None:
    data = load_manifest(written)
    assert data.texts is not None
    vocabulary = set(COLOURS) | set(SHAPES)
    for text, row in zip(data.texts, data.labels, strict=True):
        named = {w for w in re.findall(r"[a-z]+", text) if w in vocabulary}
        labels = {data.label_names[j] for j in np.flatnonzero(row)}
        assert named == labels, text
        assert not re.search(r"\ba [aeiou]", text), text  # "an orange", never "a orange"
    # Wording varies: several sentence patterns, and most captions are distinct.
    assert len(set(data.texts)) > 40
    assert any(t.startswith("two shapes: ") for t in data.texts)
    assert any(t.endswith(" background") for t in data.texts)


def test_shapes_are_drawn_in_their_colour() -> None:
    rng = np.random.default_rng(11)
    checked = 0
    for _ in range(40):
        scene = make_scene(rng, size=64)
        colours = [name for name in scene.labels if name in COLOURS]
        pixels = np.asarray(scene.image, dtype=np.float32).reshape(-1, 3)
        for name in colours:
            near = np.linalg.norm(pixels - np.array(COLOURS[name]), axis=1) < 70
            # Even a small shape covers a few percent of the picture.
            assert near.mean() > 0.02, (scene.text, name, near.mean())
            checked += 1
        # And no shape colour that is not a label covers much of it.
        for name in set(COLOURS) - set(colours):
            near = np.linalg.norm(pixels - np.array(COLOURS[name]), axis=1) < 40
            assert near.mean() < 0.01, (scene.text, name, near.mean())
    assert checked >= 50


def test_query_fraction_writes_a_split_column(tmp_path: Path) -> None:
    manifest = write_synthetic_images(tmp_path, 50, seed=0, size=32, query_fraction=0.2)
    data = load_manifest(manifest)
    assert data.splits is not None
    assert data.splits.count("query") == 10 and data.splits.count("train") == 40
    with Image.open(data.image_paths[0]) as image:  # type: ignore[index]
        assert image.size == (32, 32)


@pytest.mark.parametrize(
    "kwargs", [{"n": 0}, {"n": 5, "query_fraction": 1.0}, {"n": 1, "query_fraction": 0.5}]
)
def test_bad_arguments(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        write_synthetic_images(tmp_path, seed=0, **kwargs)


def test_two_hundred_images_are_written(tmp_path: Path) -> None:
    manifest = write_synthetic_images(tmp_path, 200, seed=1)
    assert len(list((manifest.parent / "images").glob("*.png"))) == 200
