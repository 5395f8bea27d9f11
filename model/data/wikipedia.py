"""Wikipedia cross-modal dataset (Rasiwasia et al. 2010): SIFT BoVW + LDA features, 10 classes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from model.data.records import DataError, PairedData, read_mat


def load_wikipedia(root: str | Path) -> tuple[PairedData, PairedData]:
    """The fixed 2,173 train / 693 test split; ids are the csvs' text ids, features float32."""
    root = Path(root)
    names = _read_categories(root / "categories.csv")
    # wikiData.mat also carries the labels; raw_features.mat has only the features, so the
    # labels then come from the csvs' category column (the two agree in the published files).
    mat_path = root / "wikiData.mat"
    with_labels = mat_path.is_file()
    if not with_labels:
        mat_path = root / "raw_features.mat"
        if not mat_path.is_file():
            raise DataError("neither wikiData.mat nor raw_features.mat found", path=root)
    kinds = ("I", "T", "L") if with_labels else ("I", "T")
    mat = read_mat(mat_path, [f"{k}_{s}" for k in kinds for s in ("tr", "te")])
    train = _load_part(root, "train", "tr", "trainset_txt_img_cat.csv", mat, names, mat_path)
    test = _load_part(root, "test", "te", "testset_txt_img_cat.csv", mat, names, mat_path)
    return train, test


def _load_part(
    root: Path,
    split: str,
    suffix: str,
    csv_name: str,
    mat: dict[str, np.ndarray],
    names: list[str],
    mat_path: Path,
) -> PairedData:
    ids, categories = _read_split_csv(root / csv_name, len(names))
    image_features = mat[f"I_{suffix}"].astype(np.float32)
    text_features = mat[f"T_{suffix}"].astype(np.float32)
    n = len(ids)
    for key, arr in ((f"I_{suffix}", image_features), (f"T_{suffix}", text_features)):
        if arr.ndim != 2 or arr.shape[0] != n:
            raise DataError(f"{key} has shape {arr.shape}; {csv_name} has {n} rows", path=mat_path)
    if f"L_{suffix}" in mat:
        mat_labels = mat[f"L_{suffix}"].reshape(-1).astype(np.int64)
        if not np.array_equal(mat_labels, categories):
            raise DataError(
                f"L_{suffix} disagrees with the categories in {csv_name}", path=mat_path
            )
    labels = np.zeros((n, len(names)), dtype=np.uint8)
    labels[np.arange(n), categories - 1] = 1
    return PairedData(
        ids=ids,
        label_names=names,
        labels=labels,
        multi_label=False,
        image_features=image_features,
        text_features=text_features,
        splits=[split] * n,
    )


def _read_categories(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError("file not found", path=path)
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _read_split_csv(path: Path, n_classes: int) -> tuple[list[str], np.ndarray]:
    """Text ids and 1-based categories from a headerless TSV `text_id, image_id, category`."""
    if not path.is_file():
        raise DataError("file not found", path=path)
    ids: list[str] = []
    categories: list[int] = []
    with path.open(newline="", encoding="utf-8") as f:
        for row_no, rec in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if len(rec) != 3 or not rec[2].strip().isdigit():
                raise DataError(
                    "expected 3 tab-separated fields: text_id, image_id, category",
                    path=path,
                    row=row_no,
                )
            category = int(rec[2])
            if not 1 <= category <= n_classes:
                raise DataError(
                    f"category {category} outside 1..{n_classes}", path=path, row=row_no
                )
            ids.append(rec[0])
            categories.append(category)
    return ids, np.asarray(categories, dtype=np.int64)
