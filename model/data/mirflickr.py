"""MIRFlickr-25K (20,015 image/tag pairs, 24 concepts) from its manifest."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from model.data.records import DataError, PairedData

# Column order of the standard mirflickr25k-lall.mat (LAll); concepts.txt holds the same list.
MIRFLICKR_CONCEPTS = (
    "animals", "baby", "bird", "car", "clouds", "dog", "female", "flower", "food", "indoor",
    "lake", "male", "night", "people", "plant_life", "portrait", "river", "sea", "sky",
    "structures", "sunset", "transport", "tree", "water",
)  # fmt: skip
MANIFEST_COLUMNS = ("row", "image_id", "image", "tags", "labels")


def load_mirflickr(root: str | Path, require_images: bool = True) -> PairedData:
    """Pairs from manifest.csv (ids: image ids; texts: tag strings; text_features: tag one-hots)."""
    root = Path(root)
    concepts = _read_list(root / "concepts.txt")
    vocab = _read_list(root / "tag_vocab.txt")
    concept_col = {c: j for j, c in enumerate(concepts)}
    tag_col = {t: j for j, t in enumerate(vocab)}
    path = root / "manifest.csv"
    if not path.is_file():
        raise DataError("MIRFlickr manifest not found", path=path)

    ids: list[str] = []
    texts: list[str] = []
    image_paths: list[Path | None] = []
    label_cells: list[list[int]] = []
    tag_cells: list[list[int]] = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", path=path)
        for row_no, rec in enumerate(reader, start=1):

            def fail(problem: str, row_no: int = row_no) -> DataError:
                return DataError(problem, path=path, row=row_no, line=reader.line_num)

            # The row column ties each pair to its row in LAll/YAll; a shuffled file would not.
            if rec["row"] != str(row_no - 1):
                raise fail(f"'row' is {rec['row']!r}, expected {row_no - 1}; keep the file order")
            image = rec["image"].strip()
            image_path = root / image if image else None
            # require_images: drop pairs without a picture, and treat a listed but absent file as a
            # broken copy; otherwise keep every row (image_paths None where there is no picture).
            if require_images:
                if image_path is None:
                    continue
                if not image_path.is_file():
                    raise fail(
                        f"image file not found: {image_path}; the dataset copy is incomplete"
                    )
            labels = [c for c in rec["labels"].split("|") if c]
            if not labels:
                raise fail("no labels")
            tags = rec["tags"].split()
            if not tags:
                raise fail("no tags")
            try:
                label_cells.append([concept_col[c] for c in labels])
            except KeyError as e:
                raise fail(f"unknown concept {e.args[0]!r}; not in concepts.txt") from e
            try:
                tag_cells.append([tag_col[t] for t in tags])
            except KeyError as e:
                raise fail(f"unknown tag {e.args[0]!r}; not in tag_vocab.txt") from e
            ids.append(rec["image_id"])
            texts.append(rec["tags"])
            image_paths.append(image_path)

    labels_mh = _multi_hot(label_cells, len(concepts))
    return PairedData(
        ids=ids,
        label_names=concepts,
        labels=labels_mh,
        multi_label=bool((labels_mh.sum(axis=1) > 1).any()),
        texts=texts,
        image_paths=image_paths,
        text_features=_multi_hot(tag_cells, len(vocab)),
    )


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError("file not found", path=path)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [name for name in names if name]


def _multi_hot(cells: list[list[int]], width: int) -> np.ndarray:
    out = np.zeros((len(cells), width), dtype=np.uint8)
    rows = np.repeat(np.arange(len(cells)), [len(c) for c in cells])
    cols = np.fromiter((j for c in cells for j in c), dtype=np.int64, count=len(rows))
    out[rows, cols] = 1
    return out
