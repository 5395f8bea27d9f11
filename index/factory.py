"""Index configuration and construction/loading of the configured backend."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from index.base import HammingIndex, PathLike
from index.faiss_index import FaissHammingIndex, Kind
from index.reference import NumpyHammingIndex

Backend = Literal["faiss", "numpy"]


@dataclass(frozen=True)
class IndexConfig:
    """How a collection builds its per-modality indexes."""

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


def make_index(bits: int, config: IndexConfig) -> HammingIndex:
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


def load_index(path: PathLike, bits: int, config: IndexConfig) -> HammingIndex:
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
