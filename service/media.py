"""Decoding of uploaded media into encoder inputs, with size and decompression-bomb limits.

Image preprocessing mirrors the model side exactly (EXIF transpose, RGB, shorter side
resized bilinearly to ``size``, centre crop) because codes are only comparable if the
pixels are. Video clips go through ``decode_clip``, which the video issue fills in.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import MediaError, NotImplementedYet, PayloadTooLarge

MediaKind = Literal["image", "video"]

#: Formats Pillow may try; others (EPS, PSD, ...) are refused rather than half-supported.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")


@dataclass(frozen=True)
class Upload:
    """One uploaded file as received."""

    filename: str
    content_type: str | None
    data: bytes


def check_upload_size(upload: Upload, limit: int) -> None:
    """Refuse a file larger than ``limit`` bytes."""
    if len(upload.data) > limit:
        raise PayloadTooLarge(
            f"file {upload.filename!r} is {len(upload.data)} bytes; the limit is {limit} bytes"
        )
    if not upload.data:
        raise MediaError(f"file {upload.filename!r} is empty")


def sniff_kind(upload: Upload) -> MediaKind:
    """Tell an image from a video clip by magic bytes, then by declared content type."""
    head = upload.data[:16]
    if head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3" or head[8:12] == b"AVI ":
        return "video"  # MP4/MOV, Matroska/WebM, AVI
    if head.startswith(_IMAGE_MAGIC) or head[8:12] == b"WEBP":
        return "image"
    ctype = (upload.content_type or "").lower()
    return "video" if ctype.startswith("video/") else "image"


def prepare_image(image: Image.Image, size: int) -> npt.NDArray[np.uint8]:
    """Return (3, size, size) uint8 pixels: oriented, RGB, resized, centre-cropped."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    image = image.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy()


def decode_image(upload: Upload, size: int, max_pixels: int) -> npt.NDArray[np.uint8]:
    """Decode an uploaded image into encoder pixels, refusing bombs and unreadable bytes."""
    name = upload.filename
    try:
        with Image.open(io.BytesIO(upload.data), formats=IMAGE_FORMATS) as image:
            w, h = image.size
            if w * h > max_pixels:
                raise _bomb(name, w, h, max_pixels)
            image.load()
            return prepare_image(image, size)
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (twice Image.MAX_IMAGE_PIXELS) tripped before ours.
        raise PayloadTooLarge(f"image {name!r} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise MediaError(
            f"file {name!r} is not a recognised image; send {', '.join(IMAGE_FORMATS)}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaError(f"image {name!r} is corrupt or truncated: {exc}") from None


def decode_clip(upload: Upload, frames: int, size: int) -> npt.NDArray[np.uint8]:
    """Decode a video clip into (3, frames, size, size) uint8 pixels."""
    raise NotImplementedYet(
        f"file {upload.filename!r} is a video clip, and video decoding is not available in this "
        "version of the service; send images or text"
    )


def _bomb(name: str, w: int, h: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image {name!r} is {w}x{h} = {w * h} pixels; the limit is {limit} pixels "
        "(HASHBRIDGE_MAX_IMAGE_PIXELS)"
    )
