"""The local backend's index configuration: building, bulk-loading and reading its indexes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from index.base import PathLike, SnapshotIndex
from index.faiss_index import FaissHammingIndex, Kind
from index.reference import NumpyHammingIndex

Backend = Literal["faiss", "numpy"]


@dataclass(frozen=True)
class IndexConfig:
    """How the local collection builds its per-modality in-process indexes."""

    backend: Backend = "faiss"
    kind: Kind = "auto"
    ivf_threshold: int = 100_000
    default_nprobe: int = 16
    use_gpu: bool = False

    def matches(self, header: Mapping[str, Any]) -> bool:
        """Whether an index file header was written by an index of this backend and kind."""
        if header.get("backend") != self.backend:
            return False
        return self.backend == "numpy" or header.get("kind") == self.kind


def make_index(bits: int, config: IndexConfig) -> SnapshotIndex:
    """Create an empty index of the configured backend."""
    if config.backend == "numpy":
        return NumpyHammingIndex(bits)
    if config.backend == "faiss":
        return FaissHammingIndex(
            bits,
            config.kind,
            ivf_threshold=config.ivf_threshold,
            default_nprobe=config.default_nprobe,
            use_gpu=config.use_gpu,
        )
    raise ValueError(f"unknown index backend {config.backend!r}")


def build_index(
    bits: int, config: IndexConfig, ids: npt.NDArray[np.int64], codes: npt.NDArray[np.uint8]
) -> SnapshotIndex:
    """An index holding these items, added in this order (which ranks their ties)."""
    index = make_index(bits, config)
    if ids.size:
        # One add, so an IVF index trains once on everything instead of per batch.
        index.add(ids, codes)
    return index


def load_index(path: PathLike, bits: int, config: IndexConfig) -> SnapshotIndex:
    """Load an index file of the configured backend, applying the config's settings."""
    if config.backend == "numpy":
        return NumpyHammingIndex.load(path, bits=bits)
    return FaissHammingIndex.load(
        path,
        bits=bits,
        ivf_threshold=config.ivf_threshold,
        default_nprobe=config.default_nprobe,
        use_gpu=config.use_gpu,
    )
