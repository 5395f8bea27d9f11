"""A small, seeded image-text dataset of coloured shapes, for tests and `hashbridge demo`.

Each item is one or two shapes drawn with Pillow on a tinted, slightly noisy background,
captioned in English with some wording variety. Its labels are the colour and shape names
it shows (multi-label), so image and text of an item share semantics a model can learn in
seconds. Background colours never reuse a shape colour's name, so captions never mention a
colour word that is not a label.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bundle.fileio import atomic_open

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "star", "cross")
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "grey": (128, 128, 128),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
    "beige": (225, 210, 175),
}
LABEL_NAMES = sorted([*COLOURS, *SHAPES])

_ONE = (
    "{a} {c} {s} on a {bg} background",
    "a {size} {c} {s}",
    "{c} {s}",
    "there is {a} {c} {s} near the {where}",
    "a picture of {a} {c} {s}",
    "one {c} {s} drawn on {bg}",
)
_TWO = (
    "two shapes: {a} {c} {s} and {a2} {c2} {s2}",
    "{a} {c} {s} next to {a2} {c2} {s2}",
    "{a} {c} {s} and {a2} {c2} {s2} on a {bg} background",
    "{c} {s} beside {c2} {s2}",
)


@dataclass(frozen=True)
class Scene:
    """One generated item: its picture, caption and label names."""

    image: Image.Image
    text: str
    labels: list[str]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners = [(math.pi / 4 + k * math.pi / 2) for k in range(4)]
        radii = [r] * 4
    elif shape == "triangle":
        corners = [(-math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
        radii = [r] * 3
    elif shape == "star":
        corners = [(-math.pi / 2 + k * math.pi / 5) for k in range(10)]
        radii = [r if k % 2 == 0 else r * 0.42 for k in range(10)]
    elif shape == "cross":
        w = 0.34  # half-width of each bar relative to r
        pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1)]
        pts += [(-x, -y) for x, y in pts]
        return [
            (
                cx + r * (x * math.cos(angle) - y * math.sin(angle)),
                cy + r * (x * math.sin(angle) + y * math.cos(angle)),
            )
            for x, y in pts
        ]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [
        (cx + rad * math.cos(a + angle), cy + rad * math.sin(a + angle))
        for a, rad in zip(corners, radii, strict=True)
    ]


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(v + rng.integers(-amount, amount + 1), 0, 255)) for v in rgb)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(cx: float, cy: float, size: int) -> str:
    vertical = "top" if cy < size / 3 else "bottom" if cy > 2 * size / 3 else "middle"
    horizontal = "left" if cx < size / 3 else "right" if cx > 2 * size / 3 else "centre"
    if vertical == "middle":
        return "centre" if horizontal == "centre" else f"{horizontal} side"
    return vertical if horizontal == "centre" else f"{vertical} {horizontal}"


def make_scene(rng: np.random.Generator, size: int = 64) -> Scene:
    """Draw one scene with `rng` (the only source of randomness)."""
    bg_name = str(rng.choice(list(BACKGROUNDS)))
    base = np.array(_jitter(BACKGROUNDS[bg_name], rng, 10), dtype=np.float32)
    # A gentle linear gradient keeps backgrounds from being a single flat colour.
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    direction = rng.uniform(-12, 12, size=2).astype(np.float32)
    canvas = base + (ramp[:, None, None] * direction[0] + ramp[None, :, None] * direction[1])
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)

    count = 1 if rng.random() < 0.5 else 2
    drawn: list[tuple[str, str, float, float, float]] = []
    for k in range(count):
        colour, shape = str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))
        if count == 1:
            r = size * rng.uniform(0.18, 0.32)
            lo, hi = r + 1, size - r - 1
            cx, cy = rng.uniform(lo, hi), rng.uniform(lo, hi)
        else:
            # Left and right halves, so the two shapes never hide each other.
            r = size * rng.uniform(0.12, 0.2)
            half = size / 2
            cx = rng.uniform(k * half + r + 1, (k + 1) * half - r - 1)
            cy = rng.uniform(r + 1, size - r - 1)
        fill = _jitter(COLOURS[colour], rng, 20)
        angle = float(rng.uniform(-0.25, 0.25))
        if shape == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
        else:
            draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)
        drawn.append((colour, shape, cx, cy, r))

    pixels = np.asarray(image, dtype=np.float32)
    pixels = pixels + rng.normal(0.0, 6.0, size=pixels.shape).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")

    c, s, cx, cy, r = drawn[0]
    words = {
        "a": _article(c),
        "c": c,
        "s": s,
        "bg": bg_name,
        "size": "large" if r > size * 0.25 else "small",
        "where": _where(cx, cy, size),
    }
    if count == 1:
        text = str(rng.choice(_ONE)).format(**words)
    else:
        c2, s2 = drawn[1][:2]
        text = str(rng.choice(_TWO)).format(a2=_article(c2), c2=c2, s2=s2, **words)
    labels = sorted({name for colour, shape, *_ in drawn for name in (colour, shape)})
    return Scene(image=image, text=text, labels=labels)


def write_synthetic_images(
    out_dir: str | Path,
    n: int,
    seed: int,
    size: int = 64,
    *,
    query_fraction: float = 0.0,
) -> Path:
    """Write `n` PNG scenes and `manifest.csv` (id,image,text,labels[,split]) under `out_dir`.

    With `query_fraction` > 0 a split column marks that share of items (at least one) as
    queries and the rest as training items. The same arguments always give the same files.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0.0 <= query_fraction < 1.0:
        raise ValueError(f"query_fraction must be in [0, 1), got {query_fraction}")
    if query_fraction > 0 and n < 2:
        raise ValueError("a split needs at least 2 items (one query, one to train on)")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        scene = make_scene(rng, size)
        rel = f"images/syn-{i:05d}.png"
        scene.image.save(out_dir / rel, format="PNG", compress_level=1)
        rows.append([f"syn-{i:05d}", rel, scene.text, "|".join(scene.labels)])
    header = ["id", "image", "text", "labels"]
    if query_fraction > 0:
        n_query = min(max(1, round(n * query_fraction)), n - 1)
        queries = set(np.random.default_rng([seed, 1]).permutation(n)[:n_query].tolist())
        header.append("split")
        for i, row in enumerate(rows):
            row.append("query" if i in queries else "train")
    manifest = out_dir / "manifest.csv"
    # The manifest is written last and atomically: a half-written dataset has no manifest.
    with atomic_open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return manifest
