"""Pixel preparation shared by training, export, clip decoding and the service.

One implementation, so that the pixels a model was trained on and the pixels the service
feeds its exported encoder cannot drift apart: EXIF orientation, RGB, shorter side resized to
`size` (bilinear), centre crop, (3, size, size) uint8. Normalisation happens inside the
exported encoder. Imports neither `model/` nor `service/`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps


def resize_crop(image: Image.Image, size: int) -> npt.NDArray[np.uint8]:
    """An RGB image -> (3, size, size): shorter side to `size` (bilinear), centre crop."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def prepare_image(image: Image.Image, size: int) -> npt.NDArray[np.uint8]:
    """A decoded image -> (3, size, size) uint8: oriented by its EXIF tag, RGB, resized, cropped."""
    return resize_crop(ImageOps.exif_transpose(image).convert("RGB"), size)
