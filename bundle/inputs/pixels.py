"""uint8 pixels of one picture, (3, size, size) RGB, for an image encoder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
from PIL import Image

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
from bundle.pixels import prepare_image


@dataclass(frozen=True)
class Pixels(InputKind):
    """A picture prepared by `bundle.pixels.prepare_image` at `size`; the encoder normalises."""

    name: ClassVar[str] = "pixels"
    modalities: ClassVar[tuple[str, ...]] = ("image",)
    media: ClassVar[Media | None] = "image"

    size: int
    #: What the encoder does inside (recorded for people reading the manifest).
    backbone: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    flip_features: bool | None = None

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str, files: BundleFiles) -> Self:
        size = positive_int(entry, "size", where)
        check_input_size(where, {"size": size}, 3 * size**2)
        backbone, flip = entry.get("backbone"), entry.get("flip_features")
        return cls(
            size=size,
            backbone=backbone if isinstance(backbone, str) else None,
            mean=optional_floats(entry, "mean", where),
            std=optional_floats(entry, "std", where),
            flip_features=flip if isinstance(flip, bool) else None,
        )

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "input": self.name,
            "size": self.size,
            "dtype": "uint8",
            "layout": "NCHW RGB",
            "resize": "EXIF transpose, shorter side bilinear to size, centre crop",
        }
        if self.backbone is not None:
            entry["backbone"] = self.backbone
        if self.mean is not None and self.std is not None:
            entry["mean"], entry["std"] = list(self.mean), list(self.std)
        if self.flip_features is not None:
            entry["flip_features"] = self.flip_features
        return entry

    def probe(self, n: int = PROBES) -> npt.NDArray[np.uint8]:
        shape = (n, 3, self.size, self.size)
        return probe_rng().integers(0, 256, size=shape, dtype=np.uint8)

    def prepare(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        """A decoded picture -> this encoder's (3, size, size) uint8 input."""
        return prepare_image(image, self.size)
