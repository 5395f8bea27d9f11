"""Small JPEG thumbnails of ingested images and clips, stored with the item for result pages.

An image's thumbnail keeps its aspect ratio (unlike the encoder's centre crop); a clip's is
its middle frame (a square poster, decoded like the encoder's frames). Thumbnails are made
after the batch has been decoded and encoded, so an unreadable file has already refused the
batch, and are written in the same store transaction as their items.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from collections.abc import Sequence

from PIL import Image, ImageOps

from service.errors import MediaError, NotFound, PayloadTooLarge, ServiceError
from service.media import IMAGE_FORMATS, Upload, clip_limits, decode_clip
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

JPEG_QUALITY = 80
MEDIA_TYPE = "image/jpeg"


def image_thumbnail(upload: Upload, max_side: int, max_pixels: int) -> bytes:
    """JPEG bytes of an uploaded image: oriented, RGB on white, longest side <= ``max_side``."""
    name = upload.filename
    try:
        with Image.open(io.BytesIO(upload.data), formats=IMAGE_FORMATS) as opened:
            w, h = opened.size
            if w * h > max_pixels:
                raise PayloadTooLarge(f"image {name!r} is {w}x{h} pixels, over {max_pixels}")
            # JPEG decodes straight to a reduced scale (1/2 .. 1/8) that still covers the
            # thumbnail: a 12 MP photo costs a fraction of a full decode.
            scale = max_side / max(w, h)
            if scale < 1:
                opened.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            image = _on_white(ImageOps.exif_transpose(opened))
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise MediaError(f"image {name!r} could not be thumbnailed: {exc}") from None
    return _jpeg(image)


def clip_poster(upload: Upload, settings: Settings) -> bytes:
    """JPEG of the frame in the middle of a clip, a centre-cropped square of thumbnail_size."""
    # One clip of one frame, the middle one: (1, 1, 3, s, s).
    pixels = decode_clip(upload, 1, settings.thumbnail_size, 1, clip_limits(settings))
    return _jpeg(Image.fromarray(pixels[0, 0].transpose(1, 2, 0)))


def thumbnail(upload: Upload, modality: str, settings: Settings) -> bytes | None:
    """The thumbnail of one upload of ``modality`` (None for kinds without one, or on failure).

    The encoder has already accepted the upload; a thumbnail is a convenience, so one that
    cannot be made (e.g. a clip too elongated at thumbnail size, though not at the model's)
    leaves the item without one rather than refusing it.
    """
    try:
        if modality == "image":
            return image_thumbnail(upload, settings.thumbnail_size, settings.max_image_pixels)
        if modality == "video":
            return clip_poster(upload, settings)
    except ServiceError as exc:
        log.warning("no thumbnail for %r: %s", upload.filename, exc.detail)
    return None


async def thumbnails_for(
    rt: Runtime, sources: Sequence[str | Upload], modalities: Sequence[str]
) -> list[bytes | None]:
    """Thumbnails of a batch's uploads (None for texts, or for all when turned off)."""
    out: list[bytes | None] = [None] * len(sources)
    if not rt.settings.thumbnails:
        return out
    todo = [i for i, s in enumerate(sources) if isinstance(s, Upload)]
    made = await asyncio.gather(
        *(rt.run(thumbnail, sources[i], modalities[i], rt.settings) for i in todo)
    )
    for i, data in zip(todo, made, strict=True):
        out[i] = data
    return out


async def get_thumbnail(rt: Runtime, item_id: int) -> bytes:
    """An item's thumbnail, or NotFound saying why there is none."""
    data = await rt.run(rt.collection.thumbnail, item_id)
    if data is not None:
        return data
    item = await rt.run(rt.collection.get, item_id)
    if item is None:
        raise NotFound(f"no item with id {item_id}")
    if item.modality == "text":
        raise NotFound(f"item {item_id} is a text; texts have no thumbnail")
    if not rt.settings.thumbnails:
        raise NotFound(f"item {item_id} has no thumbnail: HASHBRIDGE_THUMBNAILS is off")
    raise NotFound(f"item {item_id} ({item.modality}) has no thumbnail")


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def _on_white(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white rather than black."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
