"""A seeded video-text dataset of moving shapes where half the classes differ only in order.

Every class shows one object of a fixed colour and silhouette (its identity), so a single
frame tells the classes apart, except within the five *order pairs*: each pair shares one
identity and its second class is, clip for clip, the first one's frames played backwards
(rightwards/leftwards, rises/falls, grows/shrinks, appears/disappears,
brightens/darkens). Frame averaging therefore sees exactly the same frames for both
classes of a pair and cannot separate them; a temporal model can. The other ten classes
are single identities that drift or stay still in random directions, so their own reversal
belongs to the same class.

Clips are lossless H.264 MP4 (decoded frames do not depend on their place in the stream,
so a pair's frames are bit-identical after decoding, not merely close) of
`frames_per_clip` frames, each a distinct state. Decode them with `frames` equal to
`frames_per_clip` or a multiple of it: other counts sample different states of a clip and
of its reversal. Captions use distinct words for the two classes of a pair ("rises" vs
"falls", never "from left to right" vs "from right to left") because a bag-of-words text
stream cannot read word order either.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from bundle.fileio import atomic_open, write_json

log = logging.getLogger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 180, 60),
    "blue": (35, 75, 230),
    "yellow": (245, 220, 40),
    "purple": (135, 45, 175),
    "orange": (250, 135, 20),
    "cyan": (40, 215, 225),
    "pink": (250, 120, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}


@dataclass(frozen=True)
class VideoClass:
    """One label: the object it shows, how it changes over time and how captions say so."""

    name: str
    colour: str
    shape: str
    motion: str  # a key of _RENDERERS
    phrases: tuple[str, ...]  # verb phrases; {speed} is filled with the clip's pace word
    reverse_of: str | None = None  # its clips are this class's clips played backwards


def _pair(
    forward: str, backward: str, colour: str, shape: str, motion: str, phrases: tuple, back: tuple
) -> tuple[VideoClass, VideoClass]:
    return (
        VideoClass(forward, colour, shape, motion, phrases),
        VideoClass(backward, colour, shape, motion, back, reverse_of=forward),
    )


_DRIFT = ("drifts {speed}", "wanders {speed} around", "glides {speed}")
_STILL = ("stays still", "sits still", "does not move")

CLASSES: tuple[VideoClass, ...] = (
    *_pair(
        "circle_rightwards", "circle_leftwards", "red", "circle", "horizontal",
        ("moves {speed} to the right", "slides {speed} rightwards", "travels right {speed}"),
        ("moves {speed} to the left", "slides {speed} leftwards", "travels left {speed}"),
    ),
    *_pair(
        "square_rises", "square_falls", "blue", "square", "vertical",
        ("rises {speed}", "moves {speed} upwards", "goes up {speed}"),
        ("falls {speed}", "moves {speed} downwards", "goes down {speed}"),
    ),
    *_pair(
        "triangle_grows", "triangle_shrinks", "green", "triangle", "size",
        ("grows {speed}", "gets bigger {speed}", "expands {speed}"),
        ("shrinks {speed}", "gets smaller {speed}", "contracts {speed}"),
    ),
    *_pair(
        "star_appears", "star_disappears", "white", "star", "fade",
        ("appears {speed}", "fades in {speed}", "shows up {speed}"),
        ("disappears {speed}", "fades out {speed}", "vanishes {speed}"),
    ),
    *_pair(
        "cross_brightens", "cross_darkens", "purple", "cross", "colour",
        ("brightens {speed} from purple to yellow", "lightens {speed} from purple into yellow"),
        ("darkens {speed} from yellow to purple", "dims {speed} from yellow into purple"),
    ),
    *(
        VideoClass(f"{colour}_{shape}", colour, shape, "drift", _DRIFT + _STILL)
        for colour, shape in (
            ("orange", "ring"),
            ("cyan", "heart"),
            ("pink", "arrow"),
            ("black", "crescent"),
            ("yellow", "hourglass"),
            ("green", "frame"),
            ("blue", "diamond"),
            ("red", "bar"),
            ("purple", "semicircle"),
            ("white", "chevron"),
        )
    ),
)  # fmt: skip
LABEL_NAMES = [c.name for c in CLASSES]
CLASS_BY_NAME = {c.name: c for c in CLASSES}
#: (forward, backward) label pairs whose clips hold the same frames in opposite order.
ORDER_PAIRS = tuple((c.reverse_of, c.name) for c in CLASSES if c.reverse_of is not None)
#: Bumped whenever rendering changes, so that an older dataset on disk is regenerated.
GENERATOR_VERSION = 3


_RGB = tuple[float, float, float]
_Point = tuple[float, float]


@dataclass(frozen=True)
class _State:
    """The object in one frame: centre, radius (pixels), colour and opacity."""

    cx: float
    cy: float
    r: float
    rgb: _RGB
    alpha: float = 1.0


@dataclass(frozen=True)
class VideoScene:
    """One generated clip: RGB frames (frames, size, size, 3) uint8, caption and label."""

    frames: np.ndarray
    text: str
    label: str


def make_video_scene(
    label: str, rng: np.random.Generator, size: int = 112, frames: int = 16
) -> VideoScene:
    """Render one clip of class `label` with `rng` (the only source of randomness)."""
    cls = CLASS_BY_NAME[label]
    pace = str(rng.choice(("slowly", "quickly")))
    rendered = _RENDERERS[cls.motion](rng, size, frames, pace == "quickly", _rgb(cls.colour))
    # Drift clips may stand still; their captions must then say so.
    still = cls.motion == "drift" and len({(s.cx, s.cy) for s in rendered}) == 1
    background = _background(rng, size)
    plain = np.clip(np.round(background), 0, 255).astype(np.uint8)
    pictures = np.stack([_draw(background, plain, cls.shape, s) for s in rendered])
    if cls.reverse_of is not None:
        pictures = pictures[::-1].copy()
    phrases = _STILL if still else tuple(p for p in cls.phrases if p not in _STILL)
    phrase = str(rng.choice(phrases)).format(speed=pace)
    article = "an" if cls.colour[0] in "aeiou" else "a"
    # The colour-changing class names both its colours in the phrase instead.
    subject = f"a {cls.shape}" if cls.motion == "colour" else f"{article} {cls.colour} {cls.shape}"
    where = str(rng.choice(("", " on a grey background", " in a short clip")))
    return VideoScene(frames=pictures, text=f"{subject} {phrase}{where}", label=label)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A grey, slightly tinted, gently graded (size, size, 3) float background."""
    level = rng.uniform(85, 150)
    base = level + rng.uniform(-8, 8, size=3)
    ramp = np.linspace(-1, 1, size)
    tilt = rng.uniform(-12, 12, size=2)
    grad = ramp[:, None] * tilt[0] + ramp[None, :] * tilt[1]
    return base[None, None, :] + grad[:, :, None]


def _draw(background: np.ndarray, plain: np.ndarray, shape: str, state: _State) -> np.ndarray:
    """`plain` (the rounded background) with the object blended in at `state.alpha`."""
    size = background.shape[0]
    mask_image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_image)
    cx, cy, r = state.cx, state.cy, state.r
    for kind, points, fill in SHAPES[shape]:
        xy = [(cx + r * x, cy + r * y) for x, y in points]
        if kind == "ellipse":
            draw.ellipse((*xy[0], *xy[1]), fill=fill)
        elif kind == "upper_half":
            draw.pieslice((*xy[0], *xy[1]), 180, 360, fill=fill)
        else:
            draw.polygon(xy, fill=fill)
    inside = np.asarray(mask_image) > 0  # blend only the object's pixels: far fewer
    under = background[inside]
    out = plain.copy()
    blended = under + (np.asarray(state.rgb) - under) * state.alpha
    out[inside] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


def _regular(corners: int, turn: float, radii: tuple[float, ...] = (1.0,)) -> list[_Point]:
    """Points on the unit circle (radii cycle, e.g. a star's outer and inner points)."""
    angles = turn + np.arange(corners) * 2 * np.pi / corners
    return [
        (radii[k % len(radii)] * float(np.cos(a)), radii[k % len(radii)] * float(np.sin(a)))
        for k, a in enumerate(angles)
    ]


def _box(half: float, dx: float = 0.0, dy: float = 0.0) -> list[_Point]:
    return [(dx - half, dy - half), (dx + half, dy + half)]


_W = 0.36  # half-width of a cross's bars
_CROSS = [(_W, 1), (_W, _W), (1, _W), (1, -_W), (_W, -_W), (_W, -1)]
#: Unit drawing steps per shape (within radius 1 of the centre): (kind, points, fill).
#: Every identity has its own silhouette, because frozen ImageNet features tell shapes
#: apart far more reliably than colours.
SHAPES: dict[str, list[tuple[str, list[_Point], int]]] = {
    "circle": [("ellipse", _box(1.0), 255)],
    "square": [("polygon", _regular(4, np.pi / 4), 255)],
    "triangle": [("polygon", _regular(3, -np.pi / 2), 255)],
    "star": [("polygon", _regular(10, -np.pi / 2, (1.0, 0.45)), 255)],
    "cross": [("polygon", _CROSS + [(-x, -y) for x, y in _CROSS], 255)],
    "ring": [("ellipse", _box(1.0), 255), ("ellipse", _box(0.55), 0)],
    "frame": [
        ("polygon", _regular(4, np.pi / 4), 255),
        ("polygon", _regular(4, np.pi / 4, (0.5,)), 0),
    ],
    "crescent": [("ellipse", _box(1.0), 255), ("ellipse", _box(0.85, 0.45, -0.2), 0)],
    "heart": [
        ("ellipse", _box(0.52, -0.46, -0.3), 255),
        ("ellipse", _box(0.52, 0.46, -0.3), 255),
        ("polygon", [(-0.96, -0.15), (0.96, -0.15), (0.0, 0.95)], 255),
    ],
    "arrow": [
        ("polygon", [(0.0, -1.0), (0.85, -0.1), (0.3, -0.1), (0.3, 1.0), (-0.3, 1.0),
                     (-0.3, -0.1), (-0.85, -0.1)], 255),
    ],
    "hourglass": [
        ("polygon", [(-0.75, -1.0), (0.75, -1.0), (0.0, 0.0)], 255),
        ("polygon", [(-0.75, 1.0), (0.75, 1.0), (0.0, 0.0)], 255),
    ],
    "diamond": [("polygon", [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)], 255)],
    "bar": [("polygon", [(-1.0, -0.32), (1.0, -0.32), (1.0, 0.32), (-1.0, 0.32)], 255)],
    "semicircle": [("upper_half", _box(1.0, 0.0, 0.4), 255)],
    "chevron": [
        ("polygon", [(-1.0, -0.6), (-0.45, -0.6), (0.0, 0.05), (0.45, -0.6), (1.0, -0.6),
                     (0.0, 0.8)], 255),
    ],
}  # fmt: skip


def _rgb(name: str) -> _RGB:
    r, g, b = COLOURS[name]
    return float(r), float(g), float(b)


def _progress(frames: int) -> np.ndarray:
    return np.linspace(0.0, 1.0, frames)


def _travel(
    rng: np.random.Generator, size: int, r: float, quick: bool
) -> tuple[float, float, float]:
    """(start, end, fixed) coordinates for a straight move of a radius-`r` object."""
    lo, hi = r + 2, size - r - 2
    length = (hi - lo) * (rng.uniform(0.85, 1.0) if quick else rng.uniform(0.5, 0.65))
    start = rng.uniform(lo, hi - length)
    return start, start + length, rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo))


def _horizontal(
    rng: np.random.Generator, size: int, frames: int, quick: bool, rgb: _RGB
) -> list[_State]:
    r = size * rng.uniform(0.16, 0.2)
    x0, x1, y = _travel(rng, size, r, quick)
    return [_State(x0 + (x1 - x0) * p, y, r, rgb) for p in _progress(frames)]


def _vertical(
    rng: np.random.Generator, size: int, frames: int, quick: bool, rgb: _RGB
) -> list[_State]:
    r = size * rng.uniform(0.16, 0.2)
    y0, y1, x = _travel(rng, size, r, quick)
    # Rising: from low in the picture (large y) to high (small y).
    return [_State(x, y1 - (y1 - y0) * p, r, rgb) for p in _progress(frames)]


def _size(rng: np.random.Generator, size: int, frames: int, quick: bool, rgb: _RGB) -> list[_State]:
    r0 = size * rng.uniform(0.07, 0.1)
    r1 = size * (rng.uniform(0.32, 0.36) if quick else rng.uniform(0.22, 0.26))
    cx, cy = size / 2 + rng.uniform(-0.08, 0.08, size=2) * size
    return [_State(cx, cy, r0 + (r1 - r0) * p, rgb) for p in _progress(frames)]


def _fade(rng: np.random.Generator, size: int, frames: int, quick: bool, rgb: _RGB) -> list[_State]:
    """Absent for the first part of the clip, then fades in (quickly: in one frame)."""
    r = size * rng.uniform(0.22, 0.28)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    ramp = 1 if quick else max(2, frames // 4)
    first = int(rng.integers(frames // 5, frames // 2 + 1))
    alphas = np.clip((np.arange(frames) - first + 1) / ramp, 0.0, 1.0)
    return [_State(cx, cy, r, rgb, float(a)) for a in alphas]


def _colour(
    rng: np.random.Generator, size: int, frames: int, quick: bool, rgb: _RGB
) -> list[_State]:
    """Purple, then a blend into yellow over a short (quick) or long stretch of the clip."""
    r = size * rng.uniform(0.22, 0.28)
    cx, cy = size / 2 + rng.uniform(-0.1, 0.1, size=2) * size
    span = rng.uniform(0.1, 0.25) if quick else rng.uniform(0.55, 0.75)
    start = rng.uniform(0.1, 0.9 - span)
    mix = np.clip((_progress(frames) - start) / span, 0.0, 1.0)
    a, b = np.asarray(_rgb("purple")), np.asarray(_rgb("yellow"))
    return [_State(cx, cy, r, tuple(float(v) for v in a + (b - a) * m)) for m in mix]


def _drift(
    rng: np.random.Generator, size: int, frames: int, quick: bool, rgb: _RGB
) -> list[_State]:
    """A straight move in a random direction, or (one clip in four) no move at all."""
    r = size * rng.uniform(0.17, 0.23)
    lo, hi = r + 2, size - r - 2
    start = rng.uniform(lo, hi, size=2)
    if rng.random() < 0.25:
        end = start
    else:
        angle = rng.uniform(0, 2 * np.pi)
        reach = (hi - lo) * (rng.uniform(0.5, 0.7) if quick else rng.uniform(0.2, 0.35))
        end = np.clip(start + reach * np.array([np.cos(angle), np.sin(angle)]), lo, hi)
    return [_State(*(start + (end - start) * p), r, rgb) for p in _progress(frames)]


_RENDERERS = {
    "horizontal": _horizontal,
    "vertical": _vertical,
    "size": _size,
    "fade": _fade,
    "colour": _colour,
    "drift": _drift,
}


def write_clip(path: Path, frames: np.ndarray, fps: int) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames as lossless H.264 MP4, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            # qp 0 is lossless; one thread keeps the bytes identical from run to run.
            stream = container.add_stream(
                "libx264", rate=fps, options={"qp": "0", "preset": "ultrafast"}
            )
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv444p"
            stream.codec_context.thread_count = 1
            for rgb in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
            container.mux(stream.encode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class _Params:
    version: int
    n: int
    seed: int
    size: int
    frames_per_clip: int
    fps: int
    query_fraction: float
    database_fraction: float


def generate_video_dataset(
    out_dir: str | Path,
    n: int = 1200,
    seed: int = 0,
    size: int = 112,
    frames_per_clip: int = 16,
    fps: int = 8,
    *,
    query_fraction: float = 0.1,
    database_fraction: float = 0.3,
) -> Path:
    """Write `n` captioned MP4 clips and `manifest.csv` (id,video,text,labels,split).

    Classes are balanced; the split column holds `query_fraction` queries and
    `database_fraction` database items (neither trained on), spread over the classes, and
    the rest ``train``. A second call with the same arguments returns the existing manifest
    without rewriting anything; other arguments regenerate the folder's clips.
    """
    params = _Params(
        GENERATOR_VERSION, n, seed, size, frames_per_clip, fps, query_fraction, database_fraction
    )
    _check(params)
    out_dir = Path(out_dir)
    manifest, recorded = out_dir / "manifest.csv", out_dir / "generator.json"
    if _reusable(manifest, recorded, params):
        return manifest
    manifest.unlink(missing_ok=True)  # a half-regenerated folder must not look complete
    classes = np.random.default_rng(seed).permutation(np.arange(n) % len(CLASSES))
    splits = _splits(classes, params)
    rows = []
    for i in tqdm(range(n), desc="synthetic clips", leave=False, disable=None):
        label = LABEL_NAMES[classes[i]]
        scene = make_video_scene(label, np.random.default_rng([seed, i]), size, frames_per_clip)
        rel = f"videos/synvid-{i:05d}.mp4"
        write_clip(out_dir / rel, scene.frames, fps)
        rows.append([f"synvid-{i:05d}", rel, scene.text, label, splits[i]])
    wanted = {out_dir / row[1] for row in rows}
    for stale in (out_dir / "videos").glob("synvid-*.mp4"):
        if stale not in wanted:
            stale.unlink()
    write_json(recorded, asdict(params))
    # The manifest is written last and atomically: a half-written dataset has no manifest.
    with atomic_open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "video", "text", "labels", "split"])
        writer.writerows(rows)
    log.info("wrote %d synthetic clips to %s", n, out_dir)
    return manifest


def _check(params: _Params) -> None:
    if params.n < 3:
        raise ValueError(
            f"n must be at least 3 (a query, a database item, a training item), got {params.n}"
        )
    if params.size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {params.size}")
    if params.frames_per_clip < 4:
        raise ValueError(f"frames_per_clip must be at least 4, got {params.frames_per_clip}")
    if params.fps < 1:
        raise ValueError(f"fps must be at least 1, got {params.fps}")
    q, d = params.query_fraction, params.database_fraction
    if not (0 < q < 1 and 0 < d < 1 and q + d < 1):
        raise ValueError(
            "query_fraction and database_fraction must be in (0, 1) and sum below 1, "
            f"got {q} and {d}"
        )


def _reusable(manifest: Path, recorded: Path, params: _Params) -> bool:
    """True when the folder already holds a complete dataset made with `params`."""
    if not (manifest.is_file() and recorded.is_file()):
        return False
    try:
        if json.loads(recorded.read_text(encoding="utf-8")) != asdict(params):
            return False
        with manifest.open(newline="", encoding="utf-8") as handle:
            paths = [row["video"] for row in csv.DictReader(handle)]
    except (OSError, ValueError, KeyError):
        return False
    return len(paths) == params.n and all((manifest.parent / p).is_file() for p in paths)


def _splits(classes: np.ndarray, params: _Params) -> list[str]:
    """Queries first, then database items, taken round-robin over classes; the rest train."""
    rng = np.random.default_rng([params.seed, 0, 1])  # apart from the clips [seed, i]
    rank = np.empty(len(classes), dtype=np.int64)
    for c in np.unique(classes):
        members = np.flatnonzero(classes == c)
        rank[rng.permutation(members)] = np.arange(len(members))
    # Round-robin: every class's first member, then every class's second, ...
    order = np.lexsort((rng.permutation(len(classes)), rank))
    n_query = max(1, round(params.n * params.query_fraction))
    n_database = max(1, round(params.n * params.database_fraction))
    n_database = min(n_database, params.n - n_query - 1)
    splits = ["train"] * params.n
    for position, i in enumerate(order[: n_query + n_database]):
        splits[i] = "query" if position < n_query else "database"
    return splits
