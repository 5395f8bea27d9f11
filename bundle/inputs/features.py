"""float32 feature vectors a dataset ships (Wikipedia's SIFT and LDA), for any encoder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from bundle.inputs.base import PROBES, BundleFiles, InputKind, Media, positive_int, probe_rng


@dataclass(frozen=True)
class Features(InputKind):
    """Precomputed vectors: the bundle lacks their extractors, so nothing raw maps to them."""

    name: ClassVar[str] = "features"
    modalities: ClassVar[tuple[str, ...]] = ("image", "text")
    media: ClassVar[Media | None] = None

    dim: int

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str, files: BundleFiles) -> Self:
        return cls(positive_int(entry, "dim", where))

    def to_json(self) -> dict[str, Any]:
        return {"input": self.name, "dim": self.dim, "dtype": "float32"}

    def probe(self, n: int = PROBES) -> npt.NDArray[np.float32]:
        return probe_rng().standard_normal((n, self.dim)).astype(np.float32)
