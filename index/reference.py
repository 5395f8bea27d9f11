"""Exact NumPy brute-force Hamming index: the reference every backend is tested against."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from index.base import PathLike, SearchParams, SearchResult, check_ids, check_k, empty_result
from index.codes import POPCOUNT, check_bits, validate_codes
from index.errors import IndexFileError
from index.fileio import check_header, read_container, write_container

# Bound the (queries x items x bytes) xor tensor so memory stays flat for big indexes.
_CHUNK_ELEMS = 1 << 23


class NumpyHammingIndex:
    """Exact popcount brute force over all items.

    Tie rule: results are ordered by (distance, database order), where database
    order is the order in which ids were last added; updating an id moves it to
    the end, exactly as remove followed by add would.
    """

    backend = "numpy"

    def __init__(self, bits: int) -> None:
        self._bits = check_bits(bits)
        self._ids = np.empty(0, dtype=np.int64)
        self._codes = np.empty((0, self._bits // 8), dtype=np.uint8)

    @property
    def bits(self) -> int:
        """Code width in bits."""
        return self._bits

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike) -> None:
        """Insert items, replacing (and moving to the end) any id already present."""
        packed = validate_codes(codes, self._bits)
        new_ids = check_ids(ids, packed.shape[0])
        keep = ~np.isin(self._ids, new_ids)
        self._ids = np.concatenate([self._ids[keep], new_ids])
        self._codes = np.concatenate([self._codes[keep], packed])

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove items by id; unknown ids are ignored. Return how many were removed."""
        drop = np.isin(self._ids, check_ids(ids, unique=False))
        self._ids = self._ids[~drop]
        self._codes = self._codes[~drop]
        return int(drop.sum())

    def search(
        self, codes: npt.ArrayLike, k: int, params: SearchParams | None = None
    ) -> SearchResult:
        """Return the exact k nearest items per query; params (nprobe) are ignored."""
        queries = validate_codes(codes, self._bits)
        k = check_k(k)
        out = empty_result(queries.shape[0], k)
        n = len(self)
        if n == 0:
            return out
        kk = min(k, n)
        rank = np.arange(n, dtype=np.int64)
        step = max(1, _CHUNK_ELEMS // (n * queries.shape[1]))
        for s in range(0, queries.shape[0], step):
            xor = queries[s : s + step, None, :] ^ self._codes[None, :, :]
            dist = POPCOUNT[xor].sum(axis=2, dtype=np.int32)
            # Distances are at most 128, so (distance, position) folds into one unique key.
            key = dist.astype(np.int64) * n + rank
            if kk < n:
                top = np.argpartition(key, kk - 1, axis=1)[:, :kk]
                top = np.take_along_axis(top, np.take_along_axis(key, top, 1).argsort(1), 1)
            else:
                top = key.argsort(axis=1)
            out.ids[s : s + step, :kk] = self._ids[top]
            out.distances[s : s + step, :kk] = np.take_along_axis(dist, top, 1)
        return out

    def save(self, path: PathLike, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write ids and codes atomically; ``extra`` is stored in the header."""
        header = {"format": 1, "backend": self.backend, "bits": self._bits, "count": len(self)}
        header["extra"] = dict(extra or {})
        write_container(path, header, [self._ids.tobytes(), self._codes.tobytes()])

    @classmethod
    def load(cls, path: PathLike, *, bits: int | None = None) -> Self:
        """Read an index written by ``save``; refuse it if ``bits`` disagrees."""
        header, blobs = read_container(path)
        index = cls(check_header(header, Path(path), cls.backend, bits))
        count = header.get("count")
        width = index.bits // 8
        if len(blobs) != 2 or count is None or len(blobs[0]) != 8 * count:
            raise IndexFileError(f"{path} payload does not match its header")
        if len(blobs[1]) != width * count:
            raise IndexFileError(f"{path} payload does not match its header")
        index._ids = np.frombuffer(blobs[0], dtype=np.int64).copy()
        index._codes = np.frombuffer(blobs[1], dtype=np.uint8).reshape(count, width).copy()
        return index
