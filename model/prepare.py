"""Turn a configured dataset into per-modality input matrices and a split.

Image files go through the frozen backbone once (features cached on disk); text goes
through a vocabulary built from the training items only; datasets that ship feature
vectors (Wikipedia) are used as they are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.config import ConfigError, RunConfig
from model.data.manifest import load_manifest
from model.data.mirflickr import load_mirflickr
from model.data.records import PairedData, concat
from model.data.splits import Split, split_from_column, standard_split
from model.data.wikipedia import load_wikipedia
from model.features import extract_image_features
from model.text import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Model inputs for every item, with how they were made (so export can redo it)."""

    data: PairedData
    split: Split
    inputs: dict[str, np.ndarray]
    kinds: dict[str, str]  # modality -> "pixels" | "bag_of_words" | "features"
    vocabulary: Vocabulary | None = None


def load_dataset(config: RunConfig) -> tuple[PairedData, Split]:
    """Load the configured dataset and its query/database/train split."""
    kind, path = config.data.kind, Path(config.data.path)
    if kind == "mirflickr":
        data = load_mirflickr(path)
        split = standard_split(
            len(data),
            n_query=config.data.n_query,
            n_train=config.data.n_train,
            seed=config.split_seed,
        )
    elif kind == "wikipedia":
        data = concat(list(load_wikipedia(path)))
        split = split_from_column(data.splits, len(data), seed=config.split_seed)
    elif kind == "manifest":
        data = load_manifest(path)
        n_query = min(config.data.n_query, max(1, len(data) // 10))
        n_train = min(config.data.n_train, len(data) - n_query)
        split = split_from_column(
            data.splits, len(data), n_query=n_query, n_train=n_train, seed=config.split_seed
        )
    else:
        raise ConfigError(f"unknown data.kind {kind!r}; use manifest, mirflickr or wikipedia")
    return data, split


def prepare(config: RunConfig, vocabulary: Vocabulary | None = None) -> Prepared:
    """Inputs for the configured modalities; `vocabulary` reuses a trained run's vocabulary."""
    data, split = load_dataset(config)
    inputs: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for modality in config.data.modalities:
        if modality not in data.modalities:
            raise ConfigError(
                f"data.modalities lists {modality!r} but the dataset has {data.modalities}"
            )
        if modality == "image":
            if data.image_features is not None:
                inputs["image"], kinds["image"] = data.image_features.astype(np.float32), "features"
            else:
                assert data.image_paths is not None
                missing = [i for i, p in enumerate(data.image_paths) if p is None]
                if missing:
                    raise ConfigError(
                        f"{len(missing)} items have no image (first: {data.ids[missing[0]]})"
                    )
                inputs["image"] = extract_image_features(
                    [Path(p) for p in data.image_paths if p is not None],
                    backbone=config.image.backbone,
                    size=config.image.size,
                    cache_dir=Path(config.image.cache_dir),
                    flip=config.image.flip_features,
                    tail_blocks=config.image.finetune_blocks,
                )
                kinds["image"] = "pixels"
        elif modality == "text":
            if data.texts is not None:
                if vocabulary is None:
                    vocabulary = Vocabulary.build(
                        [data.texts[i] for i in split.train],
                        mode=config.text.tokenizer,
                        ngram=config.text.ngram,
                        min_count=config.text.min_count,
                        max_size=config.text.max_vocab,
                    )
                inputs["text"], kinds["text"] = vocabulary.encode(data.texts), "bag_of_words"
            else:
                assert data.text_features is not None
                inputs["text"], kinds["text"] = data.text_features.astype(np.float32), "features"
        else:
            raise ConfigError(f"modality {modality!r} is not supported yet; use image and text")
    return Prepared(data=data, split=split, inputs=inputs, kinds=kinds, vocabulary=vocabulary)
