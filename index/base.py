"""The HammingIndex protocol, its SearchResult and SearchParams, and shared argument checks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt

PathLike = str | os.PathLike[str]

#: Id and distance written into result slots that no item fills (fewer than k items).
PAD = -1


@dataclass(frozen=True)
class SearchResult:
    """Top-k neighbours per query: ids int64 (nq, k) and Hamming distances int32 (nq, k).

    Slots beyond the number of available items hold id -1 and distance -1.
    """

    ids: npt.NDArray[np.int64]
    distances: npt.NDArray[np.int32]


@dataclass(frozen=True)
class SearchParams:
    """Per-query knobs that any backend reads the ones it has of; exact backends ignore them.

    ``nprobe``: inverted lists an IVF index (FAISS's or Milvus's) visits; None takes the
    backend's default. They travel with each call, never set on a shared index.
    """

    nprobe: int | None = None

    def __post_init__(self) -> None:
        if self.nprobe is not None and (
            isinstance(self.nprobe, bool) or not isinstance(self.nprobe, int) or self.nprobe < 1
        ):
            raise ValueError(f"nprobe must be a positive integer or None, got {self.nprobe!r}")


#: No per-query knobs: every backend's defaults.
DEFAULT_SEARCH = SearchParams()


@runtime_checkable
class HammingIndex(Protocol):
    """A mutable id -> binary code index searched by Hamming distance.

    Adding an id that is already present replaces its code (an update). Indexes
    are safe for concurrent searches but writes must be serialised by the caller. How
    an index persists is its owner's business (see ``SnapshotIndex``).
    """

    @property
    def bits(self) -> int:
        """Code width in bits."""
        ...

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike) -> None:
        """Insert or replace items."""
        ...

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove items by id; unknown ids are ignored. Return how many were removed."""
        ...

    def search(
        self, codes: npt.ArrayLike, k: int, params: SearchParams | None = None
    ) -> SearchResult:
        """Return the k nearest items of each query code."""
        ...

    def __len__(self) -> int: ...


@runtime_checkable
class SnapshotIndex(HammingIndex, Protocol):
    """An in-process index that the local collection persists as snapshot files."""

    def save(self, path: PathLike, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the index atomically; ``extra`` is stored in the file header."""
        ...

    @classmethod
    def load(cls, path: PathLike, *, bits: int | None = None) -> Self:
        """Read an index written by ``save``; refuse it if ``bits`` disagrees."""
        ...


def check_ids(
    ids: npt.ArrayLike, n: int | None = None, *, unique: bool = True
) -> npt.NDArray[np.int64]:
    """Return ids as a 1-D non-negative int64 array, optionally of length n and unique."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"ids must be 1-D, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"got {arr.shape[0]} ids for {n} codes")
    if arr.size and arr.min() < 0:
        raise ValueError("ids must be non-negative (-1 marks empty result slots)")
    if unique and np.unique(arr).size != arr.size:
        raise ValueError("ids within one call must be unique")
    return arr


def check_k(k: int) -> int:
    """Return k if it is a positive integer, else raise ValueError."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def empty_result(nq: int, k: int) -> SearchResult:
    """Return an all-padding result of shape (nq, k)."""
    return SearchResult(
        ids=np.full((nq, k), PAD, dtype=np.int64),
        distances=np.full((nq, k), PAD, dtype=np.int32),
    )
