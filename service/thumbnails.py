"""Small JPEG thumbnails of ingested images and clips, stored with the item for result pages.

An image's thumbnail keeps its aspect ratio (unlike the encoder's centre crop) and is made
from the decode the encoder's pixels come from; a clip's is its middle frame (a square
poster, decoded like the encoder's frames), made after the batch has been decoded and
encoded, so an unreadable file has already refused the batch. Thumbnails are written in the
same store transaction as their items.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Sequence

from PIL import Image

from bundle.inputs import Clip
from service.errors import NotFound, ServiceError
from service.media import Upload, clip_limits, decode_clip
from service.runtime import Runtime
from service.settings import Settings

log = logging.getLogger(__name__)

JPEG_QUALITY = 80
MEDIA_TYPE = "image/jpeg"


def thumbnail_of(image: Image.Image, max_side: int) -> bytes:
    """JPEG bytes of a decoded, oriented image: RGB on white, longest side <= ``max_side``.

    The service hands over the image its encoder's pixels came from (decoded at a reduced
    scale that still covers ``max_side``: ``service.media.open_image``), so an upload is
    decoded once for both.
    """
    small = _on_white(image)
    small.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return _jpeg(small)


def clip_poster(upload: Upload, settings: Settings) -> bytes:
    """JPEG of the frame in the middle of a clip, a centre-cropped square of thumbnail_size."""
    # One clip of one frame, the middle one: (1, 1, 3, s, s).
    poster = Clip(frames=1, size=settings.thumbnail_size)
    pixels = decode_clip(upload, poster, clip_limits(settings))
    return _jpeg(Image.fromarray(pixels[0, 0].transpose(1, 2, 0)))


def clip_thumbnail(upload: Upload, settings: Settings) -> bytes | None:
    """A clip's poster (None on failure; images get theirs from their decode).

    The encoder has already accepted the upload; a thumbnail is a convenience, so one that
    cannot be made (e.g. a clip too elongated at thumbnail size, though not at the model's)
    leaves the item without one rather than refusing it.
    """
    try:
        return clip_poster(upload, settings)
    except ServiceError as exc:
        log.warning("no thumbnail for %r: %s", upload.filename, exc.detail)
    return None


async def posters_for(
    rt: Runtime, sources: Sequence[str | Upload], modalities: Sequence[str]
) -> list[bytes | None]:
    """Posters of a batch's clips (None for the rest, or for all when turned off)."""
    out: list[bytes | None] = [None] * len(sources)
    if not rt.settings.thumbnails:
        return out
    todo = [i for i, (s, m) in enumerate(zip(sources, modalities, strict=True)) if m == "video"]
    made = await asyncio.gather(
        *(rt.run_media(clip_thumbnail, sources[i], rt.settings) for i in todo)
    )
    for i, data in zip(todo, made, strict=True):
        out[i] = data
    return out


async def get_thumbnail(rt: Runtime, item_id: int) -> bytes:
    """An item's thumbnail, or NotFound saying why there is none."""
    data = await rt.run(rt.collection.store.thumbnail, item_id)
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
