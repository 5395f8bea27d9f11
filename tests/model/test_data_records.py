"""PairedData (subset, modalities, validation, concat) and MATLAB reading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from model.data.records import DataError, PairedData, concat, read_mat


def make(n: int = 4, prefix: str = "i") -> PairedData:
    return PairedData(
        ids=[f"{prefix}{i}" for i in range(n)],
        label_names=["a", "b"],
        labels=np.array([[1, 0], [0, 1], [1, 1], [0, 1]], dtype=np.uint8)[:n],
        multi_label=True,
        texts=[f"text {i}" for i in range(n)],
        image_paths=[Path(f"{i}.png") for i in range(n)],
        text_features=np.arange(n * 3, dtype=np.float32).reshape(n, 3),
    )


def test_subset_keeps_fields_aligned() -> None:
    data = make()
    sub = data.subset(np.array([3, 0]))
    assert sub.ids == ["i3", "i0"]
    np.testing.assert_array_equal(sub.labels, [[0, 1], [1, 0]])
    assert sub.texts == ["text 3", "text 0"]
    assert sub.image_paths == [Path("3.png"), Path("0.png")]
    np.testing.assert_array_equal(sub.text_features, [[9, 10, 11], [0, 1, 2]])
    assert sub.video_paths is None and sub.splits is None
    assert sub.multi_label and len(sub) == 2
    assert data.subset([]).labels.shape == (0, 2)


def test_modalities() -> None:
    assert make().modalities == ("image", "text")
    features_only = PairedData(
        ids=["x"],
        label_names=["a"],
        labels=np.ones((1, 1), np.uint8),
        multi_label=False,
        image_features=np.zeros((1, 2)),
    )
    assert features_only.modalities == ("image",)


def test_validation() -> None:
    with pytest.raises(ValueError, match="labels must have shape \\(2, 2\\)"):
        PairedData(["a", "b"], ["x", "y"], np.zeros((3, 2), np.uint8), False)
    with pytest.raises(ValueError, match="uint8"):
        PairedData(["a"], ["x"], np.zeros((1, 1), np.float32), False)
    with pytest.raises(ValueError, match="texts has 1 entries for 2 ids"):
        PairedData(["a", "b"], ["x"], np.zeros((2, 1), np.uint8), False, texts=["t"])


def test_concat() -> None:
    both = concat([make(2, "p"), make(3, "q")])
    assert both.ids == ["p0", "p1", "q0", "q1", "q2"]
    assert both.text_features.shape == (5, 3)
    with pytest.raises(ValueError, match="ids are not unique"):
        concat([make(2), make(2)])
    no_text = make(2, "r")
    no_text.texts = None
    with pytest.raises(ValueError, match="texts is present in some parts"):
        concat([make(2), no_text])


def test_data_error_message() -> None:
    err = DataError("empty 'text'", path="m.csv", row=3, line=4)
    assert str(err) == "m.csv: row 3 (line 4): empty 'text'"
    assert isinstance(err, ValueError)


def test_read_mat_v5(tmp_path: Path) -> None:
    path = tmp_path / "a.mat"
    scipy.io.savemat(path, {"A": np.arange(6, dtype=np.uint8).reshape(2, 3)})
    np.testing.assert_array_equal(read_mat(path, ["A"])["A"], [[0, 1, 2], [3, 4, 5]])
    with pytest.raises(DataError, match="no variable\\(s\\) B"):
        read_mat(path, ["A", "B"])


@pytest.mark.skipif(importlib.util.find_spec("h5py") is not None, reason="h5py is installed")
def test_read_mat_v73_without_h5py(tmp_path: Path) -> None:
    # A v7.3 header (version 0x0200) is all scipy needs to refuse the file.
    path = tmp_path / "big.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64".ljust(116) + b"\0" * 8 + b"\x00\x02IM"
    path.write_bytes(header + b"\0" * 512)
    with pytest.raises(DataError, match="v7.3 \\(HDF5\\).*pip install h5py"):
        read_mat(path, ["LAll"])
