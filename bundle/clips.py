"""Decode a video clip into a fixed number of prepared frames (PyAV), shared by trainer and service.

Frames are picked by presentation time, not by index, so variable frame rate clips are
sampled evenly in time: a demux pass (no decoding) measures the clip's time span, then one
sequential decode keeps, for each target time, the frame on screen at that moment. Only the
kept frames are converted to RGB. Each is oriented by the stream's display matrix (phone
clips store portrait video as rotated landscape) and prepared exactly like
`bundle.pixels.prepare_image`: shorter side resized to `size` (bilinear, Pillow), centre
crop, CHW uint8. This module imports neither `model/` nor `service/`.
"""

from __future__ import annotations

import io
import os
import statistics
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Literal, cast

import av
import numpy as np
import numpy.typing as npt
from av.sidedata.sidedata import SideDataContainer
from av.sidedata.sidedata import Type as SideDataType
from PIL import Image

from bundle.pixels import resize_crop, resized_dims

ClipErrorReason = Literal[
    "corrupt",
    "no_video_stream",
    "empty",
    "too_long",
    "too_large_file",
    "too_large_frame",
    "too_many_frames",
    "unsupported",
]

#: Demuxers ffmpeg may use. Playlist-style demuxers (hls, concat, ...) are left out on
#: purpose: they open further files or URLs named inside an upload. Audio containers are
#: in so that an audio file is reported as "no video stream" rather than unreadable.
CONTAINER_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "mpegts",
    "flv",
    "ogg",
    "wav",
    "mp3",
    "flac",
    "aac",
)
SUPPORTED_HINT = "send an MP4, MOV, MKV, WebM, AVI, MPEG-TS, FLV or Ogg video"


class ClipError(ValueError):
    """A clip that cannot be used; the message says what is wrong and what to do."""

    def __init__(self, reason: ClipErrorReason, message: str) -> None:
        super().__init__(message)
        self.reason: ClipErrorReason = reason

    def __reduce__(self) -> tuple[type[ClipError], tuple[ClipErrorReason, str]]:
        # Keeps the reason when the error crosses a process boundary (decode workers).
        return type(self), (self.reason, str(self))


@dataclass(frozen=True)
class ClipLimits:
    """Refuse clips over these limits before spending time decoding them."""

    max_seconds: float = 600.0
    max_bytes: int = 256 * 2**20
    max_pixels: int = 3840 * 2160
    #: A clip is decoded whole (frames depend on earlier ones), so its frame count bounds the
    #: work: 600 s at 60 fps. A few MB of repeated 4K skip-frames at 240 fps would pass the
    #: other limits and hold a decoder for minutes.
    max_frames: int = 36_000


def decode_clip(
    source: str | os.PathLike[str] | bytes,
    *,
    frames: int,
    size: int,
    clips: int = 1,
    limits: ClipLimits = ClipLimits(),
    name: str | None = None,
) -> npt.NDArray[np.uint8]:
    """Return uint8 pixels (clips, frames, 3, size, size) sampled evenly in time.

    The clip's time span is cut into `clips` equal windows placed end to end; each window
    gives `frames` frames at the centres of `frames` equal segments. A clip with fewer
    frames than asked repeats the frame on screen at each target time. Raises `ClipError`
    for unusable input and FileNotFoundError for a missing path.
    """
    if frames < 1 or size < 1 or clips < 1:
        raise ValueError(f"frames, size and clips must be >= 1, got {frames}, {size}, {clips}")
    label = repr(name) if name is not None else _default_name(source)
    n_bytes = len(source) if isinstance(source, bytes) else os.stat(source).st_size
    if n_bytes == 0:
        raise ClipError("empty", f"clip {label} is an empty file (0 bytes); send a video file")
    if n_bytes > limits.max_bytes:
        raise ClipError(
            "too_large_file",
            f"clip {label} is {n_bytes} bytes; the limit is {limits.max_bytes} bytes; "
            "send a shorter or more compressed clip",
        )
    start, end = _time_span(source, label, limits)
    targets = _target_times(start, end, frames * clips)
    with _open(source, label) as container:
        stream = cast(av.video.stream.VideoStream, _video_stream(container))
        picked = _pick_frames(_decode(container, stream, label), targets, size, label, limits)
    return picked.reshape(clips, frames, 3, size, size)


def prepare_frame(rgb: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    """(H, W, 3) RGB -> (3, size, size): shorter side to `size` (bilinear), centre crop."""
    return resize_crop(Image.fromarray(rgb), size)


def upright_rgb(frame: av.VideoFrame) -> npt.NDArray[np.uint8]:
    """The frame as (H, W, 3) RGB, turned and mirrored as its display matrix says."""
    rgb = np.asarray(frame.to_ndarray(format="rgb24"), dtype=np.uint8)
    matrix = _display_matrix(frame)
    if matrix is None:
        return rgb
    # The matrix maps stored (x, y) to displayed (a*x + c*y, b*x + d*y); for the eight
    # orientations this is an optional transpose followed by flips of each axis.
    a, b, c, d = matrix
    if abs(b) > abs(a):  # quarter turn: displayed x follows stored y
        rgb, x_sign, y_sign = rgb.transpose(1, 0, 2), c, b
    else:
        x_sign, y_sign = a, d
    if x_sign < 0:
        rgb = rgb[:, ::-1]
    if y_sign < 0:
        rgb = rgb[::-1]
    return np.ascontiguousarray(rgb)


def _display_matrix(frame: av.VideoFrame) -> tuple[int, int, int, int] | None:
    """(a, b, c, d) of the frame's display matrix rounded to -1/0/1, None when upright."""
    # cast: PyAV's stubs type frame.side_data as one SideData, it is a mapping of them.
    side = cast(SideDataContainer, frame.side_data).get(SideDataType.DISPLAYMATRIX)
    if side is not None and side.buffer_size >= 36:
        # Nine int32: a, b, u, c, d, v, x, y, w; a..d are 16.16 fixed point.
        raw = np.frombuffer(bytes(side), dtype=np.int32, count=9)
        a, b, c, d = (int(np.round(raw[i] / 65536.0)) for i in (0, 1, 3, 4))
    else:
        a, b, c, d = 1, 0, 0, 1
    if (a, b, c, d) == (1, 0, 0, 1) or (a * d - b * c) == 0:
        return None  # upright, or not a right-angle orientation
    return a, b, c, d


def _default_name(source: str | os.PathLike[str] | bytes) -> str:
    return "(uploaded bytes)" if isinstance(source, bytes) else repr(Path(source).name)


def _open(source: str | os.PathLike[str] | bytes, label: str) -> av.container.InputContainer:
    """Open with only `CONTAINER_FORMATS` allowed; map ffmpeg's errors to `ClipError`."""
    options = {"format_whitelist": ",".join(CONTAINER_FORMATS)}
    target: str | io.BytesIO = io.BytesIO(source) if isinstance(source, bytes) else str(source)
    try:
        # Tags are not used; a tag in another encoding than UTF-8 must not refuse the clip.
        container = av.open(target, mode="r", options=options, metadata_errors="replace")
    except av.error.ArgumentError:
        # ffmpeg recognised the data as a container type that is not on the list.
        raise ClipError(
            "unsupported",
            f"clip {label} is in a container format this service does not read; {SUPPORTED_HINT}",
        ) from None
    except (av.error.FFmpegError, EOFError) as exc:
        raise ClipError(
            "corrupt", f"clip {label} is not a readable video file ({_why(exc)}); {SUPPORTED_HINT}"
        ) from None
    stream = _video_stream(container)
    if stream is None:
        kinds = sorted(
            "cover picture" if s.type == "video" else str(s.type) for s in container.streams
        )
        container.close()
        raise ClipError(
            "no_video_stream",
            f"clip {label} has no video stream (it holds: {', '.join(kinds) or 'no streams'}); "
            "send a video",
        )
    if stream.codec_context is None:  # ffmpeg does not know the codec (or cannot tell it)
        container.close()
        raise ClipError(
            "unsupported",
            f"clip {label} uses a video codec that cannot be decoded here; {SUPPORTED_HINT}",
        )
    return container


def _video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first real video stream: cover art (attached pictures) does not count."""
    stills = av.stream.Disposition.attached_pic | av.stream.Disposition.still_image
    return next((s for s in container.streams.video if not s.disposition & stills), None)


def _time_span(
    source: str | os.PathLike[str] | bytes, label: str, limits: ClipLimits
) -> tuple[Fraction, Fraction]:
    """(start, end) of the video stream in exact seconds, from its packets, not its headers.

    Times stay exact fractions so that a target on a frame boundary (common: 8 of 16
    frames) picks the same frame on every machine, not whichever side rounding favours.
    """
    with _open(source, label) as container:
        stream = cast(av.video.stream.VideoStream, _video_stream(container))
        _check_frame_size(stream.codec_context.width, stream.codec_context.height, label, limits)
        declared = _declared_seconds(container, stream)
        if declared is not None and declared > limits.max_seconds:
            raise _too_long(label, declared, limits)
        times: list[Fraction] = []
        ends: list[Fraction] = []
        try:
            for packet in container.demux(stream):
                if packet.pts is None or packet.size == 0 or packet.is_discard:
                    continue
                t = packet.pts * packet.time_base
                times.append(t)
                if len(times) > limits.max_frames:
                    raise ClipError(
                        "too_many_frames",
                        f"clip {label} has more than {limits.max_frames} frames; the limit is "
                        f"{limits.max_frames} frames; send a shorter clip or a lower frame rate",
                    )
                ends.append(t + (packet.duration or 0) * packet.time_base)
                if t - times[0] > limits.max_seconds:
                    raise _too_long(label, float(t - times[0]), limits)
        except av.error.FFmpegError as exc:
            if not times:
                raise ClipError(
                    "corrupt",
                    f"clip {label} is corrupt: its video data cannot be read ({_why(exc)})",
                ) from None
            # A truncated tail: use what was readable.
        if not times:
            raise ClipError("empty", f"clip {label} has a video stream with no frames in it")
        # Inside the block: the stream's rates are read from the open container (after it
        # closes they are freed memory, and reading them crashed the process).
        step = _frame_step(times, stream)
    start, last = min(times), max(times)
    end = max(max(ends), last + step)
    if end - start > limits.max_seconds:
        raise _too_long(label, float(end - start), limits)
    return start, end


def _frame_step(times: list[Fraction], stream: av.video.stream.VideoStream) -> Fraction:
    """Typical time between frames, for a last frame whose packet carries no duration."""
    ordered = sorted(times)
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False) if b > a]
    if gaps:
        return statistics.median_low(gaps)
    return _nominal_step(stream)


def _nominal_step(stream: av.video.stream.VideoStream) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate
    return 1 / Fraction(rate) if rate else Fraction(1, 25)


def _declared_seconds(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream
) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _target_times(start: Fraction, end: Fraction, count: int) -> list[Fraction]:
    """Centres of `count` equal segments of [start, end)."""
    step = (end - start) / count
    return [start + (2 * i + 1) * step / 2 for i in range(count)]


def _decode(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, label: str
) -> Iterator[tuple[Fraction, av.VideoFrame]]:
    """(presentation time, frame) in display order; stops quietly at a corrupt tail."""
    previous: Fraction | None = None
    step = _nominal_step(stream)
    try:
        for frame in container.decode(stream):
            if frame.pts is not None and frame.time_base is not None:
                t = frame.pts * frame.time_base
            else:
                t = previous + step if previous is not None else Fraction(0)
            # Never let a bad timestamp go back in time.
            previous = t if previous is None else max(previous, t)
            yield previous, frame
    except av.error.DecoderNotFoundError as exc:
        raise ClipError(
            "unsupported",
            f"clip {label} uses a video codec that cannot be decoded here ({_why(exc)})",
        ) from None
    except av.error.FFmpegError as exc:
        if previous is None:
            raise ClipError(
                "corrupt", f"clip {label} is corrupt: no frame could be decoded ({_why(exc)})"
            ) from None


def _pick_frames(
    decoded: Iterator[tuple[Fraction, av.VideoFrame]],
    targets: list[Fraction],
    size: int,
    label: str,
    limits: ClipLimits,
) -> npt.NDArray[np.uint8]:
    """For each target time the frame on screen then (the last one starting at or before it)."""
    out = np.empty((len(targets), 3, size, size), dtype=np.uint8)
    filled = 0
    held: av.VideoFrame | None = None
    held_pixels: npt.NDArray[np.uint8] | None = None

    def pixels_of_held() -> npt.NDArray[np.uint8]:
        nonlocal held_pixels
        if held_pixels is None:
            assert held is not None
            held_pixels = prepare_frame(upright_rgb(held), size)
        return held_pixels

    for t, frame in decoded:
        _check_frame_size(frame.width, frame.height, label, limits, size)
        while held is not None and filled < len(targets) and t > targets[filled]:
            out[filled] = pixels_of_held()
            filled += 1
        if filled == len(targets):
            break
        held, held_pixels = frame, None
    if held is None:
        raise ClipError("empty", f"clip {label} has a video stream but no decodable frames")
    while filled < len(targets):
        out[filled] = pixels_of_held()
        filled += 1
    return out


def _check_frame_size(
    width: int, height: int, label: str, limits: ClipLimits, size: int | None = None
) -> None:
    """Refuse frames over the pixel limit, and (given `size`) frames that resizing inflates."""
    if width * height > limits.max_pixels:
        raise ClipError(
            "too_large_frame",
            f"clip {label} has {width}x{height} = {width * height} pixels per frame; the limit "
            f"is {limits.max_pixels} pixels; send a lower-resolution clip",
        )
    if size is None:
        return
    nw, nh = resized_dims(width, height, size)
    if nw * nh > limits.max_pixels:
        raise ClipError(
            "too_large_frame",
            f"clip {label} has {width}x{height} frames: scaled to {size} px on the shorter "
            f"side they would be {nw}x{nh} = {nw * nh} pixels; the limit is "
            f"{limits.max_pixels} pixels; send a less elongated clip",
        )


def _why(exc: Exception) -> str:
    """ffmpeg's own words, without PyAV's errno and '<none>' file name decoration."""
    return str(getattr(exc, "strerror", None) or exc)


def _too_long(label: str, seconds: float, limits: ClipLimits) -> ClipError:
    return ClipError(
        "too_long",
        f"clip {label} lasts {seconds:.1f} s; the limit is {limits.max_seconds:g} s; "
        "trim it or send a shorter clip",
    )
