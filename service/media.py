"""Decoding of uploaded media into encoder inputs, with size and decompression-bomb limits.

Image preprocessing mirrors the model side exactly (EXIF transpose, RGB, shorter side
resized bilinearly to ``size``, centre crop) because codes are only comparable if the
pixels are. Video clips are decoded by ``bundle.clips``, the very code that sampled
the training clips, so frame times, orientation and resizing match by construction.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from bundle.clips import ClipError, ClipLimits
from bundle.inputs import Clip, Pixels
from bundle.pixels import resized_dims
from service.errors import (
    MediaError,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from service.settings import Settings

MediaKind = Literal["image", "video"]

#: Formats Pillow may try; others (EPS, PSD, ...) are refused rather than half-supported.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF")
_IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")
#: Matroska/WebM, FLV, Ogg, MP3 with ID3 tags.
_CLIP_MAGIC = (b"\x1a\x45\xdf\xa3", b"FLV", b"OggS", b"ID3")
#: First atoms of QuickTime files that do not open with ftyp (older .mov).
_QUICKTIME_ATOMS = (b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot")
#: ftyp brands of still pictures (AVIF, HEIF), not clips.
_STILL_BRANDS = (b"avif", b"avis", b"heic", b"heix", b"mif1", b"msf1")


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
    """Tell an image from a video clip by magic bytes, then by declared content type.

    Clients often send any file as application/octet-stream, so every container the clip
    decoder reads is recognised by its bytes. Audio files go the clip way too, where they
    are refused as having no video stream, which says more than "not an image".
    """
    data = upload.data
    head = data[:16]
    if head[4:8] == b"ftyp":
        # ISO media: MP4/MOV clips, but AVIF/HEIF pictures share the box layout.
        return "image" if head[8:12] in _STILL_BRANDS else "video"
    if head.startswith(_IMAGE_MAGIC) or head[8:12] == b"WEBP":
        return "image"
    if (
        head.startswith(_CLIP_MAGIC)
        or head[4:8] in _QUICKTIME_ATOMS
        or head[8:12] in (b"AVI ", b"WAVE")
        # MPEG transport stream: a sync byte opens every 188-byte packet.
        or (data[:1] == b"\x47" and data[188:189] == b"\x47")
    ):
        return "video"
    ctype = (upload.content_type or "").lower()
    return "video" if ctype.startswith(("video/", "audio/")) else "image"


def decode_image(
    upload: Upload, kind: Pixels, max_pixels: int, *, reduce: bool = True
) -> npt.NDArray[np.uint8]:
    """Decode an uploaded image into `kind`'s pixels, refusing bombs and unreadable bytes."""
    return encoder_pixels(open_image(upload, kind.size, max_pixels, reduce=reduce), kind)


def encoder_pixels(image: Image.Image, kind: Pixels) -> npt.NDArray[np.uint8]:
    """An image from ``open_image`` -> `kind`'s (3, size, size) uint8, as training prepares it."""
    return kind.prepare(image)


def open_image(
    upload: Upload, size: int, max_pixels: int, cover: int = 0, *, reduce: bool = True
) -> Image.Image:
    """Decode an uploaded image, oriented by its EXIF tag, at the smallest scale that serves.

    A JPEG decodes straight to 1/2, 1/4 or 1/8 of its size (Pillow's draft mode: the
    inverse DCT skips the detail), as long as the shorter side stays at least ``size`` and
    the longer at least ``cover`` (a thumbnail's side): a 12 MP photo bound for a 128 px
    encoder then costs a small fraction of a full decode. The codes shift a little against
    a full decode (``bench.photos`` measures how many bits); ``reduce=False`` decodes whole.
    """
    name = upload.filename
    try:
        with Image.open(io.BytesIO(upload.data), formats=IMAGE_FORMATS) as image:
            w, h = image.size
            if w * h > max_pixels:
                raise _bomb(name, w, h, max_pixels)
            nw, nh = resized_dims(w, h, size)
            if nw * nh > max_pixels:
                raise PayloadTooLarge(
                    f"image {name!r} is {w}x{h}: scaled to {size} px on its shorter side it "
                    f"would be {nw}x{nh} = {nw * nh} pixels; the limit is {max_pixels} pixels "
                    "(HASHBRIDGE_MAX_IMAGE_PIXELS); crop it to a less elongated shape"
                )
            if reduce:
                reduce_decode(image, size, cover)
            image.load()
            return ImageOps.exif_transpose(image)
    except Image.DecompressionBombError as exc:
        # Pillow's own hard limit (twice Image.MAX_IMAGE_PIXELS) tripped before ours.
        raise PayloadTooLarge(f"image {name!r} is too large to decode safely: {exc}") from None
    except UnidentifiedImageError:
        raise MediaError(
            f"file {name!r} is not a recognised image; send {', '.join(IMAGE_FORMATS)}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaError(f"image {name!r} is corrupt or truncated: {exc}") from None


def reduce_decode(image: Image.Image, size: int, cover: int = 0) -> None:
    """Ask a not yet loaded JPEG to decode at a reduced scale that keeps the sides asked for.

    Pillow picks the largest of 1/2, 1/4, 1/8 whose result is at least the requested size;
    other formats ignore the request. ``image.size`` is the decoded size afterwards.
    """
    if image.format != "JPEG":
        return
    w, h = image.size
    short, long = min(w, h), max(w, h)
    scale = max(size / short, cover / long)
    if scale < 1:
        # Requested (w, h) keep the aspect ratio: draft then honours both sides.
        image.draft(image.mode, (math.ceil(w * scale), math.ceil(h * scale)))


def decoded_pixels(upload: Upload, size: int, cover: int = 0, *, reduce: bool = True) -> int:
    """Pixels ``open_image`` would decode for this upload (0 when it is no readable image).

    Read from the header alone, so a request's total decode work is known before any
    decode starts; an unreadable file counts 0 here and is refused by its decode.
    """
    try:
        with Image.open(io.BytesIO(upload.data), formats=IMAGE_FORMATS) as image:
            if reduce:
                reduce_decode(image, size, cover)
            w, h = image.size
            return w * h
    except (Image.DecompressionBombError, UnidentifiedImageError, OSError, SyntaxError):
        return 0
    except (ValueError, EOFError):
        return 0


def clip_limits(settings: Settings) -> ClipLimits:
    """The clip limits the service's settings set (for the encoder and posters alike)."""
    return ClipLimits(
        max_seconds=settings.max_clip_seconds,
        max_bytes=settings.max_upload_bytes,
        max_pixels=settings.max_clip_pixels,
        max_frames=settings.max_clip_frames,
    )


def decode_clip(upload: Upload, kind: Clip, limits: ClipLimits) -> npt.NDArray[np.uint8]:
    """Decode a video clip into `kind`'s (clips, frames, 3, size, size) uint8 pixels."""
    try:
        return kind.prepare(upload.data, limits, upload.filename)
    except ClipError as exc:
        status, setting = _CLIP_ERRORS.get(exc.reason, (MediaError, None))
        hint = f" (service setting {setting})" if setting else ""
        raise status(f"{exc}{hint}") from None


#: How each reason a clip is refused for is answered, and the setting behind a limit.
_CLIP_ERRORS: dict[str, tuple[type[ServiceError], str | None]] = {
    "corrupt": (MediaError, None),
    "empty": (MediaError, None),
    "no_video_stream": (UnsupportedMediaType, None),
    "unsupported": (UnsupportedMediaType, None),
    "too_long": (PayloadTooLarge, "HASHBRIDGE_MAX_CLIP_SECONDS"),
    "too_large_file": (PayloadTooLarge, "HASHBRIDGE_MAX_UPLOAD_BYTES"),
    "too_large_frame": (PayloadTooLarge, "HASHBRIDGE_MAX_CLIP_PIXELS"),
    "too_many_frames": (PayloadTooLarge, "HASHBRIDGE_MAX_CLIP_FRAMES"),
}


def _bomb(name: str, w: int, h: int, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"image {name!r} is {w}x{h} = {w * h} pixels; the limit is {limit} pixels "
        "(HASHBRIDGE_MAX_IMAGE_PIXELS)"
    )
