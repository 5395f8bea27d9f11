"""Image files to model pixels, for training, feature caching and export samples.

The preparation itself lives in `bundle.pixels`, which the service uses too, so training
and serving prepare pixels with the same code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from bundle.pixels import prepare_image
from model.data.records import DataError

__all__ = ["image_problem", "load_image", "prepare_image"]

#: What Pillow raises for a file it cannot open or decode (truncated, not an image, too large).
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

#: How a whole file of each format ends; a file that ends otherwise is decoded to be sure.
_ENDINGS = {
    "PNG": b"\x00\x00\x00\x00IEND\xaeB`\x82",  # the empty IEND chunk and its CRC
    "JPEG": b"\xff\xd9",  # the end-of-image marker
}


def load_image(path: Path, size: int) -> np.ndarray:
    """Decode a file into the prepared uint8 array; a DataError naming it if it cannot be."""
    try:
        image = Image.open(path)
    except FileNotFoundError:
        raise
    except DECODE_ERRORS as exc:
        raise _undecodable(path, exc) from None
    with image:
        try:
            image.load()  # the one decode; prepare_image works on the loaded pixels
        except DECODE_ERRORS as exc:
            raise _undecodable(path, exc) from None
        return prepare_image(image, size)


def image_problem(path: Path) -> str | None:
    """Why `path` cannot be decoded as an image, or None: a cheap check before training.

    Reads the header and the file's last bytes, not the pixels: a file that is not an image
    (text, empty, another format) fails to open, and a truncated PNG or JPEG lacks its end
    marker. Only a file without that marker (truncated, or with bytes after the image) is
    decoded, so a PNG or JPEG is refused exactly when training could not decode it. Other
    formats are checked by their header only; `load_image` names any file it cannot decode.
    """
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, 2)
            if size == 0:
                return "the file is empty"
            handle.seek(max(0, size - 12))
            tail = handle.read()
            handle.seek(0)
            with Image.open(handle) as image:
                ending = _ENDINGS.get(image.format or "")
                if ending is not None and not tail.endswith(ending):
                    image.load()
    except DECODE_ERRORS as exc:
        return _reason(exc)
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "the file is text or in a format Pillow cannot read"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _undecodable(path: Path, exc: BaseException) -> DataError:
    return DataError(
        f"not a readable image ({_reason(exc)}); replace the file or remove its item from the data",
        path=path,
    )
