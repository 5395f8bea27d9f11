"""In-memory paired records (ids, labels, texts, media paths, features) and the data error type."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io

MODALITIES = ("image", "video", "text")


class DataError(ValueError):
    """A problem in a user's data file: the message names the file, the row and what to fix."""

    def __init__(
        self,
        problem: str,
        *,
        path: str | Path | None = None,
        row: int | None = None,
        line: int | None = None,
    ) -> None:
        self.problem = problem
        self.path = Path(path) if path is not None else None
        self.row = row
        self.line = line
        where = []
        if path is not None:
            where.append(str(path))
        if row is not None:
            where.append(f"row {row}" + (f" (line {line})" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        super().__init__(": ".join([*where, problem]))


@dataclass
class PairedData:
    """Aligned per-item records; every optional field is None or has one entry per item."""

    ids: list[str]
    label_names: list[str]
    labels: np.ndarray  # (n, c) uint8 multi-hot
    multi_label: bool
    texts: list[str] | None = None
    image_paths: list[Path | None] | None = None
    video_paths: list[Path | None] | None = None
    image_features: np.ndarray | None = None
    text_features: np.ndarray | None = None
    splits: list[str] | None = None
    # Rows with one group value belong together (a photo's captions); None: each row alone.
    groups: list[str] | None = None

    def __post_init__(self) -> None:
        n = len(self.ids)
        if self.labels.ndim != 2 or self.labels.shape != (n, len(self.label_names)):
            raise ValueError(
                f"labels must have shape ({n}, {len(self.label_names)}), got {self.labels.shape}"
            )
        if self.labels.dtype != np.uint8:
            raise ValueError(f"labels must be uint8 multi-hot, got {self.labels.dtype}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("ids", "label_names", "labels", "multi_label") and value is not None:
                if len(value) != n:
                    raise ValueError(f"{f.name} has {len(value)} entries for {n} ids")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> bool:
        """Whether the items carry labels (an unlabelled manifest has no label names)."""
        return bool(self.label_names)

    def group_ids(self) -> np.ndarray:
        """An int64 group number per row, numbered in order of first appearance; without a
        group column every row is its own group."""
        if self.groups is None:
            return np.arange(len(self.ids), dtype=np.int64)
        number: dict[str, int] = {}
        return np.asarray([number.setdefault(g, len(number)) for g in self.groups], np.int64)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities present, in the order image, video, text."""
        present = {
            "image": self.image_paths is not None or self.image_features is not None,
            "video": self.video_paths is not None,
            "text": self.texts is not None or self.text_features is not None,
        }
        return tuple(m for m in MODALITIES if present[m])

    def subset(self, indices: Iterable[int] | np.ndarray) -> PairedData:
        """The items at `indices`, in that order; `multi_label` keeps the whole dataset's value."""
        # list() first: np.asarray of a generator or a set would make a 0-d object array.
        raw = indices if isinstance(indices, np.ndarray) else list(indices)
        idx = np.asarray(raw, dtype=np.int64).reshape(-1)

        def take(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, np.ndarray):
                return value[idx]
            return [value[i] for i in idx]

        return replace(
            self,
            ids=take(self.ids),
            labels=self.labels[idx],
            texts=take(self.texts),
            image_paths=take(self.image_paths),
            video_paths=take(self.video_paths),
            image_features=take(self.image_features),
            text_features=take(self.text_features),
            splits=take(self.splits),
            groups=take(self.groups),
        )


def concat(parts: Sequence[PairedData]) -> PairedData:
    """Join datasets that share a label set and the same fields (e.g. Wikipedia train + test)."""
    if not parts:
        raise ValueError("concat needs at least one PairedData")
    first = parts[0]
    for p in parts[1:]:
        if p.label_names != first.label_names:
            raise ValueError("concat: label_names differ between parts")
    joined: dict[str, Any] = {}
    for f in fields(PairedData):
        if f.name in ("label_names", "multi_label"):
            continue
        values = [getattr(p, f.name) for p in parts]
        if all(v is None for v in values):
            joined[f.name] = None
        elif any(v is None for v in values):
            raise ValueError(f"concat: {f.name} is present in some parts and missing in others")
        elif isinstance(values[0], np.ndarray):
            joined[f.name] = np.concatenate(values)
        else:
            joined[f.name] = [x for v in values for x in v]
    if len(set(joined["ids"])) != len(joined["ids"]):
        raise ValueError("concat: ids are not unique across parts")
    return PairedData(
        label_names=list(first.label_names),
        multi_label=any(p.multi_label for p in parts),
        **joined,
    )


def read_mat(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Read named arrays from a MATLAB file: v5/v7 via scipy, v7.3 (HDF5) via h5py if installed."""
    try:
        mat = scipy.io.loadmat(path, variable_names=list(names))
    except NotImplementedError:
        mat = _read_mat_hdf5(path, names)
    except (ValueError, OSError) as e:
        raise DataError(f"cannot read MATLAB file: {e}", path=path) from e
    missing = [n for n in names if n not in mat]
    if missing:
        raise DataError(f"MATLAB file has no variable(s) {', '.join(missing)}", path=path)
    return {n: np.asarray(mat[n]) for n in names}


def _read_mat_hdf5(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        import h5py
    except ImportError as e:
        raise DataError(
            "MATLAB v7.3 (HDF5) file and h5py is not installed: `pip install h5py`, "
            "or re-save it in MATLAB with save(..., '-v7')",
            path=path,
        ) from e
    with h5py.File(path, "r") as f:
        # HDF5 stores MATLAB's column-major arrays transposed.
        return {n: np.asarray(f[n][()]).T for n in names if n in f}
