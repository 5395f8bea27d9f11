"""Image decoding reproduces the model-side preprocessing exactly and refuses bad bytes."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from bundle.clips import ClipLimits
from bundle.inputs import Clip, Pixels
from service.errors import MediaError, PayloadTooLarge
from service.media import (
    Upload,
    check_upload_size,
    decode_clip,
    decode_image,
    decoded_pixels,
    open_image,
    sniff_kind,
)
from tests.support.service_bundle import grid_image, image_bytes, png, reference_pixels

BIG = 10_000_000


def upload(data: bytes, name: str = "x.png", ctype: str | None = None) -> Upload:
    return Upload(name, ctype, data)


def exif_jpeg(image: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return image_bytes(image, "JPEG", quality=95, exif=exif.tobytes())


def huge_png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR declares width x height (no real pixel data behind it)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("size", "mode", "out"),
    [
        ((64, 48), "RGB", 32),  # landscape, downscaled
        ((30, 90), "RGB", 32),  # portrait
        ((20, 10), "RGB", 32),  # smaller than the input size: upscaled
        ((33, 33), "RGBA", 16),
        ((50, 40), "L", 24),
        ((50, 40), "P", 24),
    ],
)
def test_decode_matches_the_contract(size, mode, out) -> None:
    image = grid_image(3, size).convert(mode)
    data = image_bytes(image)
    got = decode_image(upload(data), Pixels(out), BIG)
    want = reference_pixels(Image.open(io.BytesIO(data)), out)
    assert got.dtype == np.uint8 and got.shape == (3, out, out)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(orientation: int) -> None:
    image = grid_image(5, (60, 30))
    data = exif_jpeg(image, orientation)
    got = decode_image(upload(data, "rotated.jpg"), Pixels(32), BIG)
    np.testing.assert_array_equal(got, reference_pixels(Image.open(io.BytesIO(data)), 32))
    # Without the EXIF transpose the pixels would differ: the orientation really mattered.
    plain = Image.open(io.BytesIO(data))
    plain.getexif().clear()
    naive = np.asarray(
        plain.convert("RGB").resize((64, 32), Image.Resampling.BILINEAR).crop((16, 0, 48, 32)),
        np.uint8,
    ).transpose(2, 0, 1)
    assert not np.array_equal(got, naive)


def test_truncated_image_is_refused() -> None:
    data = image_bytes(grid_image(1, (200, 200)))
    with pytest.raises(MediaError, match="'x.png' is corrupt or truncated"):
        decode_image(upload(data[: len(data) // 2]), Pixels(32), BIG)


def test_corrupt_image_is_refused() -> None:
    data = bytearray(image_bytes(grid_image(1, (200, 200))))
    data[60:120] = b"\xff" * 60
    with pytest.raises(MediaError, match="corrupt or truncated"):
        decode_image(upload(bytes(data)), Pixels(32), BIG)


def test_non_image_bytes_are_refused() -> None:
    with pytest.raises(MediaError, match="'notes.txt' is not a recognised image"):
        decode_image(upload(b"hello, I am plain text" * 10, "notes.txt"), Pixels(32), BIG)


def test_declared_pixel_bomb_is_refused_before_decoding() -> None:
    # The header claims 4 MP; the file has almost no data, so only the header is trusted.
    bomb = upload(huge_png_header(2_000, 2_000), "bomb.png")
    with pytest.raises(
        PayloadTooLarge, match=r"'bomb.png' is 2000x2000 = 4000000 pixels; the limit"
    ):
        decode_image(bomb, Pixels(32), 1_000_000)
    # Far past Pillow's own hard limit, whatever ours is.
    with pytest.raises(PayloadTooLarge, match="too large to decode safely"):
        decode_image(upload(huge_png_header(50_000, 40_000)), Pixels(32), 10**12)


def test_pixel_limit_is_a_setting() -> None:
    data = image_bytes(grid_image(1, (600, 400)))
    assert decode_image(upload(data), Pixels(32), 240_000).shape == (3, 32, 32)
    with pytest.raises(PayloadTooLarge, match="600x400 = 240000 pixels; the limit is 239999"):
        decode_image(upload(data), Pixels(32), 239_999)


def test_upload_size_limit() -> None:
    check_upload_size(upload(b"x" * 100), 100)
    with pytest.raises(PayloadTooLarge, match="'x.png' is 101 bytes; the limit is 100 bytes"):
        check_upload_size(upload(b"x" * 101), 100)
    with pytest.raises(MediaError, match="empty"):
        check_upload_size(upload(b""), 100)


def test_sniff_kind() -> None:
    assert sniff_kind(upload(image_bytes(grid_image(0)), ctype="video/mp4")) == "image"
    assert sniff_kind(upload(b"\0\0\0\x18ftypisom" + b"\0" * 32)) == "video"
    assert sniff_kind(upload(b"\x1a\x45\xdf\xa3" + b"\0" * 32)) == "video"
    assert sniff_kind(upload(b"RIFF\0\0\0\0AVI LIST" + b"\0" * 8)) == "video"
    assert sniff_kind(upload(b"????" * 8, ctype="video/webm")) == "video"
    assert sniff_kind(upload(b"????" * 8)) == "image"
    # Sent as application/octet-stream, every container the clip decoder reads is a clip.
    transport_stream = (b"\x47" + b"\0" * 187) * 2
    for data in (
        transport_stream,
        b"FLV\x01\x05" + b"\0" * 16,
        b"OggS\0\x02" + b"\0" * 16,
        b"\0\0\0\x08wide\0\0\0\x10mdat" + b"\0" * 8,
        b"RIFF\0\0\0\0WAVEfmt " + b"\0" * 8,
        b"ID3\x04" + b"\0" * 16,
    ):
        assert sniff_kind(upload(data, ctype="application/octet-stream")) == "video", data[:12]
    # ...while AVIF and HEIF pictures, though ISO media like MP4, are images.
    for brand in (b"avif", b"heic", b"mif1"):
        assert sniff_kind(upload(b"\0\0\0\x1cftyp" + brand + b"\0" * 16)) == "image"


def test_unreadable_clip_is_a_media_error() -> None:
    with pytest.raises(MediaError, match="clip 'c.mp4' is not a readable video file"):
        decode_clip(upload(b"\0\0\0\x18ftypisom", "c.mp4"), Clip(frames=8, size=112), ClipLimits())


def test_a_big_jpeg_decodes_at_the_smallest_scale_that_covers_the_input() -> None:
    data = image_bytes(grid_image(7, (800, 600), cells=8), "JPEG", quality=95)
    # 64 px on the shorter side: 1/8 (100x75) still covers it; a 160 px thumbnail needs 1/4.
    assert decoded_pixels(upload(data, "big.jpg"), 64) == 100 * 75
    assert decoded_pixels(upload(data, "big.jpg"), 64, cover=160) == 200 * 150
    assert decoded_pixels(upload(data, "big.jpg"), 64, reduce=False) == 800 * 600
    assert open_image(upload(data, "big.jpg"), 64, BIG).size == (100, 75)
    # PNGs have no reduced decode: their full size is what decoding costs.
    assert decoded_pixels(upload(png(1, (300, 200))), 32) == 300 * 200
    reduced = decode_image(upload(data, "big.jpg"), Pixels(size=64), BIG).astype(int)
    full = decode_image(upload(data, "big.jpg"), Pixels(size=64), BIG, reduce=False)
    np.testing.assert_array_equal(full, reference_pixels(Image.open(io.BytesIO(data)), 64))
    # Close to the full decode (a few levels on smooth cells, more at the cell edges), not equal.
    difference = np.abs(reduced - full)
    assert 0 < difference.mean() < 6, difference.mean()
