"""Kinetics-style clip folders with a ``labels.csv`` (clip,split,label), e.g. kinetics-tiny-2class.

The clips come with class labels only, no descriptions, so each clip's caption is derived
from its label ("a video of a person typing", with a few seeded wordings). Text<->video
retrieval on such captions measures whether a clip is recognised as its class, not whether
free-form language is understood.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from model.data.manifest import SPLIT_NAMES
from model.data.records import DataError, PairedData

CAPTION_TEMPLATES = (
    "a video of a person {label}",
    "someone {label}",
    "a clip of a person {label}",
    "a person {label} on camera",
)
_COLUMNS = ("clip", "split", "label")


def load_kinetics(root: str | Path, seed: int = 0) -> PairedData:
    """Clips listed in ``root/labels.csv`` with label-derived captions and the csv's splits.

    ``split`` values follow the manifest's meaning: ``test`` rows are queries, ``train``
    rows are trained on and searched, ``val`` rows are for validation only.
    """
    root = Path(root)
    table = root / "labels.csv"
    if not table.is_file():
        raise DataError("labels.csv not found (expected columns clip,split,label)", path=root)
    with table.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", path=table)
        rows = list(reader)
    if not rows:
        raise DataError("no rows: labels.csv lists no clips", path=table)
    label_names = sorted({row["label"].strip() for row in rows})
    rng = np.random.default_rng(seed)
    ids, paths, texts, splits = [], [], [], []
    labels = np.zeros((len(rows), len(label_names)), dtype=np.uint8)
    for i, row in enumerate(rows):
        where = {"path": table, "row": i + 1, "line": i + 2}
        clip, split, label = (row[c].strip() for c in _COLUMNS)
        path = root / clip
        if not path.is_file():
            raise DataError(f"clip file not found: {path}", **where)
        if split not in SPLIT_NAMES:
            raise DataError(
                f"unknown split {split!r}; use one of {', '.join(SPLIT_NAMES)}", **where
            )
        if not label:
            raise DataError("empty label", **where)
        ids.append(Path(clip).stem)
        paths.append(path)
        texts.append(str(rng.choice(CAPTION_TEMPLATES)).format(label=label))
        splits.append(split)
        labels[i, label_names.index(label)] = 1
    if len(set(ids)) != len(ids):
        raise DataError("two clips share a file name; clip ids must be unique", path=table)
    return PairedData(
        ids=ids,
        label_names=label_names,
        labels=labels,
        multi_label=False,
        texts=texts,
        video_paths=list(paths),
        splits=splits,
    )
