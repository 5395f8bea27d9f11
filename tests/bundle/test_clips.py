"""decode_clip against real small clips written here with PyAV."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from bundle.clips import ClipError, ClipLimits, decode_clip, prepare_frame
from model.data.images import load_image, prepare_image

PALETTE = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (30, 30, 230),
    "white": (235, 235, 235),
    "black": (15, 15, 15),
    "yellow": (230, 230, 30),
    "cyan": (30, 220, 220),
    "magenta": (220, 30, 220),
}
NAMES = list(PALETTE)


def solid(name: str, w: int = 64, h: int = 48) -> np.ndarray:
    return np.broadcast_to(np.array(PALETTE[name], np.uint8), (h, w, 3)).copy()


def write_clip(
    path: Path,
    pictures: list[np.ndarray],
    *,
    times_ms: list[int] | None = None,
    rotation: float | None = None,
    hflip: bool = False,
    fps: int = 10,
) -> Path:
    """Encode RGB pictures as H.264 in `path`; `times_ms` gives variable frame timing."""
    h, w = pictures[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if times_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None:
            stream.set_display_rotation(rotation, hflip=hflip)
        for i, rgb in enumerate(pictures):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_audio(path: Path) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mp2", rate=16000, layout="mono")
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1152), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1152
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def write_song_with_cover(path: Path) -> Path:
    """An MP4 audio track whose only video stream is an attached cover picture."""
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=16000, layout="mono")
        cover = container.add_stream("mjpeg", rate=1)
        cover.width = cover.height = 16
        cover.pix_fmt = "yuvj420p"
        cover.disposition = av.stream.Disposition.attached_pic
        picture = cover.encode(av.VideoFrame.from_ndarray(solid("red", 16, 16), format="rgb24"))
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
            )
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(audio.encode(frame))
        container.mux(picture)
        container.mux(cover.encode())
        container.mux(audio.encode())
    return path


def colour_names(frames: np.ndarray) -> list[str]:
    """Nearest palette colour of each (3, s, s) frame's mean."""
    means = frames.reshape(len(frames), 3, -1).mean(axis=2)
    palette = np.array(list(PALETTE.values()), dtype=np.float64)
    nearest = np.linalg.norm(means[:, None] - palette[None], axis=2).argmin(axis=1)
    return [NAMES[i] for i in nearest]


@pytest.fixture(scope="module")
def rainbow(tmp_path_factory) -> Path:
    """Eight frames at 10 fps, one palette colour each, in palette order."""
    path = tmp_path_factory.mktemp("clips") / "rainbow.mp4"
    return write_clip(path, [solid(n) for n in NAMES])


def test_uniform_sampling_by_time(rainbow: Path) -> None:
    out = decode_clip(rainbow, frames=8, size=32)
    assert out.shape == (1, 8, 3, 32, 32) and out.dtype == np.uint8
    assert colour_names(out[0]) == NAMES
    # 0.8 s in 4 segments: centres 0.1, 0.3, 0.5, 0.7 s show frames 1, 3, 5, 7.
    assert colour_names(decode_clip(rainbow, frames=4, size=16)[0]) == NAMES[1::2]


def test_several_clips_are_consecutive_windows(rainbow: Path) -> None:
    out = decode_clip(rainbow, frames=2, size=16, clips=2)
    assert out.shape == (2, 2, 3, 16, 16)
    assert [colour_names(window) for window in out] == [NAMES[1:4:2], NAMES[5:8:2]]


def test_bytes_and_path_agree_and_repeat_exactly(rainbow: Path) -> None:
    first = decode_clip(rainbow, frames=5, size=24)
    np.testing.assert_array_equal(first, decode_clip(rainbow, frames=5, size=24))
    np.testing.assert_array_equal(first, decode_clip(rainbow.read_bytes(), frames=5, size=24))


def test_frame_prep_matches_prepare_image_bit_for_bit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pictures = [rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8) for _ in range(4)]
    clip = write_clip(tmp_path / "noise.mp4", pictures)
    with av.open(str(clip)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    out = decode_clip(clip, frames=4, size=40)[0]
    for i, rgb in enumerate(decoded):
        png = tmp_path / f"frame{i}.png"
        Image.fromarray(rgb).save(png)
        np.testing.assert_array_equal(out[i], load_image(png, 40))
        np.testing.assert_array_equal(prepare_frame(rgb, 40), prepare_image(Image.open(png), 40))


def test_portrait_clip_keeps_its_centre(tmp_path: Path) -> None:
    picture = solid("blue", w=48, h=96)
    picture[:24], picture[-24:] = PALETTE["red"], PALETTE["red"]  # bands the centre crop drops
    out = decode_clip(write_clip(tmp_path / "tall.mp4", [picture] * 3), frames=2, size=32)
    assert out.shape == (1, 2, 3, 32, 32)
    assert colour_names(out[0]) == ["blue", "blue"]


def quadrant_colours(frame: np.ndarray) -> list[str]:
    """Colours of the top-left, top-right, bottom-left, bottom-right quadrants."""
    half = frame.shape[-1] // 2
    quads = [frame[:, :half, :half], frame[:, :half, half:], frame[:, half:, :half]]
    return colour_names(np.stack([*quads, frame[:, half:, half:]]))


@pytest.mark.parametrize(
    ("rotation", "hflip", "expected"),
    [
        (None, False, ["red", "green", "blue", "white"]),
        (-90, False, ["blue", "red", "white", "green"]),  # phone portrait: a clockwise turn
        (90, False, ["green", "white", "red", "blue"]),
        (180, False, ["white", "blue", "green", "red"]),
        (0, True, ["green", "red", "white", "blue"]),
    ],
)
def test_display_matrix_turns_frames_upright(tmp_path, rotation, hflip, expected) -> None:
    picture = np.zeros((64, 64, 3), np.uint8)
    picture[:32, :32], picture[:32, 32:] = PALETTE["red"], PALETTE["green"]
    picture[32:, :32], picture[32:, 32:] = PALETTE["blue"], PALETTE["white"]
    clip = write_clip(tmp_path / "turned.mp4", [picture] * 2, rotation=rotation, hflip=hflip)
    assert quadrant_colours(decode_clip(clip, frames=1, size=32)[0, 0]) == expected


def test_rotated_landscape_becomes_portrait_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    clip = write_clip(
        tmp_path / "phone.mp4", [rng.integers(0, 256, (48, 64, 3), np.uint8)], rotation=-90
    )
    with av.open(str(clip)) as container:
        stored = next(container.decode(video=0)).to_ndarray(format="rgb24")
    upright = np.rot90(stored, k=-1)  # a clockwise quarter turn: 64 tall, 48 wide
    expected = prepare_image(Image.fromarray(np.ascontiguousarray(upright)), 32)
    np.testing.assert_array_equal(decode_clip(clip, frames=1, size=32)[0, 0], expected)


def test_variable_frame_rate_is_sampled_by_time(tmp_path: Path) -> None:
    # One red frame on screen for a whole second, then ten blue frames in the next second:
    # by frame index most samples would be blue, by time half are red.
    times = [0] + [1000 + 100 * i for i in range(10)]
    clip = write_clip(tmp_path / "vfr.mp4", [solid("red")] + [solid("blue")] * 10, times_ms=times)
    assert colour_names(decode_clip(clip, frames=4, size=16)[0]) == ["red"] * 2 + ["blue"] * 2


def test_short_clip_repeats_its_frames(tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "two.mp4", [solid("green"), solid("magenta")])
    out = decode_clip(clip, frames=8, size=16)
    assert colour_names(out[0]) == ["green"] * 4 + ["magenta"] * 4


def reason_and_message(source, **kwargs) -> tuple[str, str]:
    with pytest.raises(ClipError) as caught:
        decode_clip(source, frames=4, size=16, **kwargs)
    return caught.value.reason, str(caught.value)


def test_audio_only_file_has_no_video_stream(tmp_path: Path) -> None:
    reason, message = reason_and_message(write_audio(tmp_path / "song.mka"))
    assert reason == "no_video_stream"
    assert "'song.mka'" in message and "audio" in message


def test_cover_art_is_not_a_video_stream(tmp_path: Path) -> None:
    reason, message = reason_and_message(write_song_with_cover(tmp_path / "song.mp4"))
    assert reason == "no_video_stream"
    assert "audio, cover picture" in message


def test_empty_inputs(tmp_path: Path) -> None:
    (tmp_path / "zero.mp4").write_bytes(b"")
    assert reason_and_message(tmp_path / "zero.mp4")[0] == "empty"
    assert reason_and_message(b"", name="upload.mp4") == (
        "empty",
        "clip 'upload.mp4' is an empty file (0 bytes); send a video file",
    )


def test_garbage_and_truncated_files_are_corrupt(rainbow: Path) -> None:
    noise = np.random.default_rng(2).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert reason_and_message(noise)[0] == "corrupt"
    # PyAV writes the MP4 index at the end, so a cut-off file has none.
    reason, message = reason_and_message(rainbow.read_bytes()[:-200], name="cut.mp4")
    assert reason == "corrupt" and "'cut.mp4'" in message


def test_container_formats_off_the_list_are_unsupported() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    assert reason_and_message(buffer.getvalue())[0] == "unsupported"


def test_limits_name_the_limit_and_the_value(rainbow: Path) -> None:
    n_bytes = rainbow.stat().st_size
    reason, message = reason_and_message(rainbow, limits=ClipLimits(max_bytes=n_bytes - 1))
    assert reason == "too_large_file"
    assert f"{n_bytes} bytes" in message and f"limit is {n_bytes - 1} bytes" in message

    reason, message = reason_and_message(rainbow, limits=ClipLimits(max_pixels=64 * 48 - 1))
    assert reason == "too_large_frame"
    assert "64x48 = 3072 pixels" in message and "limit is 3071 pixels" in message

    reason, message = reason_and_message(rainbow, limits=ClipLimits(max_seconds=0.5))
    assert reason == "too_long"
    assert "lasts 0.8 s" in message and "limit is 0.5 s" in message

    # The rainbow has 8 frames: the count is checked while its packets are read.
    assert decode_clip(rainbow, frames=4, size=16, limits=ClipLimits(max_frames=8)).shape[1] == 4
    reason, message = reason_and_message(rainbow, limits=ClipLimits(max_frames=7))
    assert reason == "too_many_frames"
    assert "more than 7 frames; the limit is 7 frames" in message


def test_frames_that_resizing_would_inflate_are_refused(tmp_path: Path) -> None:
    # 16x400 is 6,400 pixels, under the limit; at 16 px on its shorter side it is 16x400
    # too, but at 64 px it would be 64x1600 = 102,400, so the limit must apply to that.
    thin = write_clip(tmp_path / "thin.mp4", [solid("red", 16, 400)] * 3)
    limits = ClipLimits(max_pixels=10_000)
    assert decode_clip(thin, frames=2, size=16, limits=limits).shape == (1, 2, 3, 16, 16)
    with pytest.raises(ClipError) as caught:
        decode_clip(thin, frames=2, size=64, limits=limits)
    assert caught.value.reason == "too_large_frame"
    assert "16x400 frames" in str(caught.value) and "64x1600 = 102400 pixels" in str(caught.value)


def test_a_one_frame_transport_stream_decodes(tmp_path: Path) -> None:
    # All its packets share one timestamp, so the frame step comes from the stream's rates,
    # which were once read after the container had closed: a crash of the whole process.
    # Decoded in a child process so that such a crash fails this test instead of the run.
    clip = tmp_path / "one.ts"
    with av.open(str(clip), "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(solid("red"), format="rgb24")))
        container.mux(stream.encode())
    script = (
        "import sys; from bundle.clips import decode_clip; "
        "print(decode_clip(sys.argv[1], frames=4, size=32).shape)"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(clip)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "(1, 4, 3, 32, 32)"


def test_a_tag_that_is_not_utf8_does_not_refuse_the_clip(tmp_path: Path) -> None:
    clip = tmp_path / "latin1.mkv"
    with av.open(str(clip), "w") as container:
        container.metadata["title"] = "CafeXYZ"
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for name in ("red", "green"):
            frame = av.VideoFrame.from_ndarray(solid(name), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    data = clip.read_bytes()
    assert data.count(b"CafeXYZ") == 1
    latin1 = data.replace(b"CafeXYZ", b"Caf\xe9XYZ")  # a Latin-1 title
    assert colour_names(decode_clip(latin1, frames=2, size=16)[0]) == ["red", "green"]


def test_an_unknown_codec_is_unsupported(tmp_path: Path) -> None:
    clip = tmp_path / "mjpeg.avi"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(solid("red"), format="rgb24")))
        container.mux(stream.encode())
    data = clip.read_bytes()
    assert b"MJPG" in data
    reason, message = reason_and_message(data.replace(b"MJPG", b"ZZZZ"), name="odd.avi")
    assert reason == "unsupported"
    assert "'odd.avi' uses a video codec that cannot be decoded here" in message


def test_clip_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ClipError("too_long", "clip 'x' lasts 9 s")))
    assert (error.reason, str(error)) == ("too_long", "clip 'x' lasts 9 s")


def test_bad_arguments_are_refused(rainbow: Path) -> None:
    with pytest.raises(ValueError, match="frames"):
        decode_clip(rainbow, frames=0, size=16)
    with pytest.raises(FileNotFoundError):
        decode_clip(rainbow.with_name("missing.mp4"), frames=2, size=16)
