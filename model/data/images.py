"""Image decoding and resizing shared by training, feature caching and export samples.

The service re-implements exactly these steps from the bundle manifest (it never imports
`model/`), so they are kept to a few Pillow calls that are easy to mirror: EXIF transpose,
RGB, shorter side resized to `size` (bilinear), centre crop. Normalisation happens inside the
exported encoder, which takes uint8 pixels.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps


def prepare_image(image: Image.Image, size: int) -> np.ndarray:
    """Return a (3, size, size) uint8 array: oriented, RGB, resized, centre-cropped."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode a file into the prepared uint8 array."""
    with Image.open(path) as image:
        return prepare_image(image, size)
