"""The kinetics-tiny-2class loader against the real copy in ../shared/datasets."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bundle.clips import decode_clip
from model.data.kinetics import load_kinetics
from model.data.records import DataError
from model.data.splits import split_from_column

# HASHBRIDGE_SHARED points at the shared folder (the one holding datasets/).
SHARED = Path(
    os.environ.get("HASHBRIDGE_SHARED", Path(__file__).resolve().parents[2].parent / "shared")
)
ROOT = SHARED / "datasets" / "kinetics-tiny-2class"


@pytest.fixture(scope="module")
def kinetics():
    if not ROOT.is_dir():
        pytest.skip(
            f"../shared/datasets/kinetics-tiny-2class not found: {ROOT} (set HASHBRIDGE_SHARED)"
        )
    return load_kinetics(ROOT)


def test_all_clips_load_with_their_splits(kinetics) -> None:
    assert len(kinetics) == 69
    assert kinetics.label_names == ["doing exercises", "typing"]
    assert kinetics.modalities == ("video", "text")
    assert not kinetics.multi_label and (kinetics.labels.sum(axis=1) == 1).all()
    per_split = Counter(
        (s, kinetics.label_names[int(row.argmax())])
        for s, row in zip(kinetics.splits, kinetics.labels, strict=True)
    )
    assert per_split == {
        ("train", "doing exercises"): 22,
        ("train", "typing"): 27,
        ("val", "doing exercises"): 6,
        ("val", "typing"): 9,
        ("test", "doing exercises"): 2,
        ("test", "typing"): 3,
    }
    split = split_from_column(kinetics.splits, len(kinetics))
    assert (len(split.query), len(split.train), len(split.val)) == (5, 49, 15)
    assert len(set(kinetics.ids)) == 69 and kinetics.ids[0] == "doing_exercises1"


def test_captions_are_derived_from_labels(kinetics) -> None:
    for text, row in zip(kinetics.texts, kinetics.labels, strict=True):
        assert kinetics.label_names[int(row.argmax())] in text
    assert load_kinetics(ROOT).texts == kinetics.texts  # seeded wording
    assert len(set(kinetics.texts)) > 2


def test_every_clip_decodes(kinetics) -> None:
    for path in kinetics.video_paths:
        clip = decode_clip(path, frames=8, size=112)
        assert clip.shape == (1, 8, 3, 112, 112) and clip.dtype == np.uint8
        # Real footage: the sampled frames are not all the same picture.
        assert len({frame.tobytes() for frame in clip[0]}) > 1, path


def test_missing_clip_names_the_row(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("clip,split,label\nclips/a.mp4,train,typing\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\): clip file not found"):
        load_kinetics(tmp_path)
