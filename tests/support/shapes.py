"""Pictures of coloured shapes drawn here, with captions and labels: the tiny run's data.

tests/conftest.py writes them once a session (`shapes`) and trains the session's tiny run on
them (`tiny_run`, exported as `tiny_bundle`).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 20),
}
SHAPES = ("circle", "square", "triangle")
PER_COMBINATION = 5


@contextmanager
def one_thread() -> Iterator[None]:
    """Train and export on one intra-op thread, then restore the count.

    On two shared cores, OpenMP threads spinning against other processes make the many tiny
    ops of training ten times slower; train() would also leave its setting behind.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Shapes:
    """The generated dataset: one row per picture, with its caption and label set."""

    root: Path
    manifest: Path
    ids: list[str]
    images: list[Path]
    captions: list[str]
    labels: list[frozenset[str]]


def _draw(colour: str, shape: str, rng: np.random.Generator) -> Image.Image:
    # Not square, so the service's resize and centre crop have work to do.
    width, height = 80, 64
    image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
    r = int(rng.integers(14, 22))
    cx, cy = int(rng.integers(r + 8, width - r - 8)), int(rng.integers(r + 2, height - r - 2))
    fill = tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLOURS[colour])
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return image


def write_shapes(root: Path) -> Shapes:
    """60 PNGs (4 colours x 3 shapes x 5) and a manifest.csv of id,image,text,labels."""
    rng = np.random.default_rng(0)
    rows = []
    for colour in COLOURS:
        for shape in SHAPES:
            for k in range(PER_COMBINATION):
                name = f"{colour}-{shape}-{k}.png"
                _draw(colour, shape, rng).save(root / name)
                rows.append(
                    {
                        "id": f"item{len(rows):03d}",
                        "image": name,
                        "text": f"a {colour} {shape}",
                        "labels": f"{colour}|{shape}",
                    }
                )
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "image", "text", "labels"])
        writer.writeheader()
        writer.writerows(rows)
    return Shapes(
        root=root,
        manifest=manifest,
        ids=[r["id"] for r in rows],
        images=[root / r["image"] for r in rows],
        captions=[r["text"] for r in rows],
        labels=[frozenset(r["labels"].split("|")) for r in rows],
    )
