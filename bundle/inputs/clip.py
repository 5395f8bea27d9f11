"""uint8 frames of a video, (clips, frames, 3, size, size) RGB, for a video encoder."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from bundle.clips import ClipLimits, decode_clip
from bundle.inputs.base import (
    PROBES,
    BundleFiles,
    InputKind,
    Media,
    check_input_size,
    optional_floats,
    positive_int,
    probe_rng,
)


@dataclass(frozen=True)
class Clip(InputKind):
    """A clip sampled and prepared by `bundle.clips.decode_clip`."""

    name: ClassVar[str] = "clip"
    modalities: ClassVar[tuple[str, ...]] = ("video",)
    media: ClassVar[Media | None] = "video"

    frames: int
    size: int
    clips: int = 1
    backbone: str | None = None
    temporal: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str, files: BundleFiles) -> Self:
        dims = {key: positive_int(entry, key, where) for key in ("frames", "size", "clips")}
        check_input_size(where, dims, 3 * dims["size"] ** 2 * dims["frames"] * dims["clips"])
        backbone, temporal = entry.get("backbone"), entry.get("temporal")
        return cls(
            **dims,
            backbone=backbone if isinstance(backbone, str) else None,
            temporal=temporal if isinstance(temporal, str) else None,
            mean=optional_floats(entry, "mean", where),
            std=optional_floats(entry, "std", where),
        )

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "input": self.name,
            "frames": self.frames,
            "size": self.size,
            "clips": self.clips,
            "dtype": "uint8",
            "layout": "N clips frames C H W, RGB",
            "sampling": "clips equal windows end to end; frames at the centres of equal "
            "segments of each, by presentation time (bundle.clips.decode_clip)",
            "resize": "display matrix applied, shorter side bilinear to size, centre crop",
        }
        for key in ("backbone", "temporal"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        if self.mean is not None and self.std is not None:
            entry["mean"], entry["std"] = list(self.mean), list(self.std)
        return entry

    def probe(self, n: int = PROBES) -> npt.NDArray[np.uint8]:
        # What decode_clip returns, with the batch axis in front.
        shape = (n, self.clips, self.frames, 3, self.size, self.size)
        return probe_rng().integers(0, 256, size=shape, dtype=np.uint8)

    def prepare(
        self,
        source: str | os.PathLike[str] | bytes,
        limits: ClipLimits | None = None,
        name: str | None = None,
    ) -> npt.NDArray[np.uint8]:
        """A clip file or its bytes -> this encoder's (clips, frames, 3, size, size) input."""
        return decode_clip(
            source,
            frames=self.frames,
            size=self.size,
            clips=self.clips,
            limits=limits or ClipLimits(),
            name=name,
        )
