"""Image files to model pixels, for training, feature caching and export samples.

The preparation itself lives in `hashbridge.pixels`, which the service uses too, so training
and serving prepare pixels with the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from hashbridge.pixels import prepare_image

__all__ = ["load_image", "prepare_image"]


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode a file into the prepared uint8 array."""
    with Image.open(path) as image:
        return prepare_image(image, size)
