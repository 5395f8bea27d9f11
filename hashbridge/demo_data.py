"""The demo's data: captioned clips of moving shapes, each paired with a still frame of itself.

DSMHN trains on items that have every trained modality, so each demo item is one clip from
`model.data.synthetic_video`, its caption, and as its picture a still taken from that clip.
The model trains on the clip's class alone: with colour and shape as labels too, a red bar
would count as similar to a red circle. The collection's items are tagged with all three
(`SHOWN_LABELS_FILE`), so picture results are judged by the colour and shape a still
shows, clip results by the class only the motion shows ("circle_rightwards" and
"circle_leftwards" hold the same frames in opposite order).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import av
from PIL import Image
from tqdm import tqdm

from bundle.fileio import atomic_open, write_json
from hashbridge.demo_service import SHOWN_LABELS_FILE
from model.data.synthetic_video import CLASS_BY_NAME, CLASSES, generate_video_dataset

log = logging.getLogger(__name__)

#: Frames per clip: the video stream samples exactly these (8 states, see synthetic_video).
FRAMES_PER_CLIP = 8
#: Share of the items held out of training but ingested into the collection.
DATABASE_FRACTION = 0.3


def write_demo_items(out: Path, n: int, *, seed: int, size: int, query_fraction: float) -> Path:
    """Write `n` clips, their stills and `manifest.csv` (id,image,video,text,labels,split)."""
    clips_manifest = generate_video_dataset(
        out / "clips",
        n,
        seed=seed,
        size=size,
        frames_per_clip=FRAMES_PER_CLIP,
        query_fraction=query_fraction,
        database_fraction=DATABASE_FRACTION,
    )
    with clips_manifest.open(newline="", encoding="utf-8") as f:
        clips = list(csv.DictReader(f))
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for clip in tqdm(clips, desc="stills", unit="clip", leave=False, disable=None):
        cls = CLASS_BY_NAME[clip["labels"]]
        image = f"images/{clip['id']}.png"
        _still(clips_manifest.parent / clip["video"], reverse=cls.reverse_of is not None).save(
            out / image
        )
        video = f"clips/{clip['video']}"
        rows.append([clip["id"], image, video, clip["text"], cls.name, clip["split"]])
    write_json(out / SHOWN_LABELS_FILE, {c.name: [c.colour, c.shape, c.name] for c in CLASSES})
    manifest = out / "manifest.csv"
    with atomic_open(manifest, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "video", "text", "labels", "split"])
        writer.writerows(rows)
    log.info("wrote %d clips with stills and captions to %s", n, out)
    return manifest


def _still(clip: Path, reverse: bool) -> Image.Image:
    """The clip's middle state counted in its forward order, so both classes of an order
    pair show the same kind of still (and a fading object is already visible in it)."""
    wanted = FRAMES_PER_CLIP - 1 - FRAMES_PER_CLIP // 2 if reverse else FRAMES_PER_CLIP // 2
    with av.open(str(clip)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == wanted:
                return frame.to_image()
    raise ValueError(f"{clip} has fewer than {wanted + 1} frames")
