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


def resized_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) once the shorter side is scaled to `size`, before the centre crop.

    A very elongated picture grows huge here (1 x 300,000 at 32 px: 32 x 9,600,000), so
    callers that take untrusted images bound this, not only the picture's own size.
    """
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def resize_crop(image: Image.Image, size: int) -> npt.NDArray[np.uint8]:
    """An RGB image -> (3, size, size): shorter side to `size` (bilinear), centre crop."""
    nw, nh = resized_dims(*image.size, size)
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def prepare_image(image: Image.Image, size: int) -> npt.NDArray[np.uint8]:
    """A decoded image -> (3, size, size) uint8: oriented by its EXIF tag, RGB, resized, cropped."""
    return resize_crop(ImageOps.exif_transpose(image).convert("RGB"), size)
