"""Flickr8k photos with five English captions each (the `flickr8k-1000` layout).

Layout: ``captions.csv`` (``image,caption_idx,caption``) and ``images/<image>``. Every
(photo, caption) pair is one item, and the five pairs of a photo are one group. The dataset
has no classes; for a supervised method each photo is also its own label, so that a caption
and a photo are relevant to each other exactly when they belong together, which makes mAP
measure caption<->photo retrieval.

Split (`flickr8k_split`), by photo so no query photo or caption is ever trained on: a seeded
draw of ``n_query`` held-out photos whose pairs are both the queries and the retrieval set
(a photo retrieves its own five captions among all held-out captions, a caption its photo
among the held-out photos, as in the usual Flickr8k test protocol); the pairs of up to
``n_train`` of the other photos are trained on.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from model.data.records import DataError, PairedData
from model.data.splits import Split

CAPTIONS = "captions.csv"
_COLUMNS = ["image", "caption_idx", "caption"]


def load_flickr8k(root: str | Path, check_files: bool = True) -> PairedData:
    """All (photo, caption) pairs in file order; ids are ``<image>#<caption_idx>``."""
    root = Path(root)
    path = root / CAPTIONS
    if not path.is_file():
        raise DataError(f"no {CAPTIONS}: is this the flickr8k-1000 folder?", path=root)
    images: list[str] = []
    texts: list[str] = []
    ids: list[str] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        if next(reader, None) != _COLUMNS:
            raise DataError(f"header must be {','.join(_COLUMNS)}", path=path)
        for row_no, rec in enumerate(reader, start=1):
            if len(rec) != 3 or not rec[0].strip() or not rec[2].strip():
                raise DataError(
                    "expected image, caption_idx and a non-empty caption", path=path, row=row_no
                )
            images.append(rec[0].strip())
            ids.append(f"{rec[0].strip()}#{rec[1].strip()}")
            texts.append(rec[2].strip())
    if not ids:
        raise DataError("no caption rows", path=path)
    if len(set(ids)) != len(ids):
        raise DataError("an (image, caption_idx) pair appears twice", path=path)
    names = list(dict.fromkeys(images))
    if check_files:
        absent = [n for n in names if not (root / "images" / n).is_file()]
        if absent:
            raise DataError(
                f"{len(absent)} photos missing under images/ (first: {absent[0]})", path=root
            )
    column = {name: i for i, name in enumerate(names)}
    labels = np.zeros((len(ids), len(names)), dtype=np.uint8)
    labels[np.arange(len(ids)), [column[n] for n in images]] = 1
    return PairedData(
        ids=ids,
        label_names=names,
        labels=labels,
        multi_label=False,
        texts=texts,
        image_paths=[root / "images" / n for n in images],
        groups=images,
    )


def flickr8k_split(data: PairedData, *, n_query: int, n_train: int, seed: int) -> Split:
    """Held-out photos (queries = retrieval set) and training photos, drawn by `seed`."""
    photo = data.group_ids()
    n_photos = int(photo.max()) + 1
    if not 1 <= n_query < n_photos:
        raise ValueError(
            f"data.n_query counts held-out photos for flickr8k: between 1 and {n_photos - 1}, "
            f"got {n_query}"
        )
    perm = np.random.default_rng(seed).permutation(n_photos)
    held_out = perm[:n_query]
    trained = perm[n_query : n_query + max(n_train, 1)]
    query = np.flatnonzero(np.isin(photo, held_out)).astype(np.int64)
    train = np.flatnonzero(np.isin(photo, trained)).astype(np.int64)
    return Split(query=query, database=query.copy(), train=train)
