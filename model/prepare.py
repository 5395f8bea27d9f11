"""Turn a configured dataset into per-modality input matrices and a split.

Image files go through the frozen backbone once (features cached on disk); text goes
through a vocabulary built from the training items only (a bag of words, or word ids in
their order for a recurrent stream), or through a frozen pretrained
sentence encoder (embeddings cached on disk); datasets that ship feature
vectors (Wikipedia) are used as they are.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bundle.inputs import BagOfWords, Clip, Features, Pixels, Sentence, TokenIds
from bundle.text import Vocabulary
from model.config import DATA_KINDS, ConfigError, RunConfig
from model.data.flickr8k import flickr8k_split, load_flickr8k
from model.data.kinetics import load_kinetics
from model.data.manifest import load_manifest
from model.data.mirflickr import load_mirflickr
from model.data.records import DataError, PairedData, concat
from model.data.splits import (
    Split,
    by_group,
    check_groups_unsplit,
    split_from_column,
    standard_split,
)
from model.data.synthetic_video import generate_video_dataset
from model.data.wikipedia import load_wikipedia
from model.distributed import ALONE, Share
from model.features import extract_image_features
from model.sentence_features import extract_sentence_features
from model.video_features import extract_clip_maps

#: Where data.kind "synthetic_video" writes its clips unless data.path names a folder.
SYNTHETIC_VIDEO_DIR = Path(".cache/synthetic-video")

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    """Model inputs for every item, with how they were made (so export can redo it)."""

    data: PairedData
    split: Split
    inputs: dict[str, np.ndarray]
    kinds: dict[str, str]  # modality -> the name of its input kind (bundle.inputs.KINDS)
    vocabulary: Vocabulary | None = None

    def input_dims(self) -> dict[str, int]:
        """Each stream's input width: a row's width, or for word ids the ids it embeds."""
        dims = {m: int(x.shape[1]) for m, x in self.inputs.items()}
        for m, kind in self.kinds.items():
            if kind == TokenIds.name:
                assert self.vocabulary is not None  # prepare builds one for word ids
                dims[m] = TokenIds(self.vocabulary, 1).num_ids
        return dims


@contextmanager
def _split_sizes(n_items: int) -> Iterator[None]:
    """Report split sizes the dataset cannot hold as the config mistake they are."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(
            f"data.n_query / data.n_train do not fit this dataset of {n_items} items: {exc}"
        ) from None


#: Data kinds whose data.path is a dataset folder (the rest read a manifest file).
_FOLDER_KINDS = ("mirflickr", "wikipedia", "flickr8k", "kinetics")


def load_dataset(config: RunConfig, share: Share = ALONE) -> tuple[PairedData, Split]:
    """Load the configured dataset and its query/database/train split (data that is
    generated, by the first of a distributed run's processes only)."""
    kind, path = config.data.kind, Path(config.data.path)
    if kind in _FOLDER_KINDS and not path.is_dir():
        # Named by the folder, not by the first file a loader happens to open in it.
        problem = "is a file" if path.exists() else "not found"
        raise DataError(
            f"dataset folder {problem}: data.kind {kind!r} reads a folder; set data.path to it",
            path=path,
        )
    if kind == "mirflickr":
        data = load_mirflickr(path)
        with _split_sizes(len(data)):
            split = standard_split(
                len(data),
                n_query=config.data.n_query,
                n_train=config.data.n_train,
                seed=config.split_seed,
            )
    elif kind == "wikipedia":
        data = concat(list(load_wikipedia(path)))
        split = split_from_column(data.splits, len(data), seed=config.split_seed)
    elif kind == "flickr8k":
        data = load_flickr8k(path)
        with _split_sizes(len(data)):
            split = flickr8k_split(
                data,
                n_query=config.data.n_query,
                n_train=config.data.n_train,
                seed=config.split_seed,
            )
    elif kind == "kinetics":
        data = load_kinetics(path)
        split = split_from_column(data.splits, len(data))
    elif kind in ("manifest", "synthetic_video"):
        if kind == "synthetic_video":
            if share.rank == 0:
                path = _synthetic_videos(config)
            share.wait()  # the others find it generated, and only read it
            if share.rank != 0:
                path = _synthetic_videos(config)
        data = load_manifest(path)
        if data.splits is None and len(data) < 2:
            raise DataError(
                "only 1 item: a run needs at least 2, some held out as queries and the rest "
                "to train on and search",
                path=path,
            )
        split = _manifest_split(config, data)
    else:
        raise ConfigError(f"unknown data.kind {kind!r}; use one of {', '.join(DATA_KINDS)}")
    return data, split


def require_labels(config: RunConfig, data: PairedData) -> None:
    """Refuse unlabelled data for a method that trains on labels, naming one that needs none."""
    from model.methods.registry import METHODS, method_class  # imports the method's networks

    if data.labelled or not method_class(config.method).labels_needed(config.options):
        return
    free = [
        name for name in METHODS if not method_class(name).labels_needed(METHODS[name].options())
    ]
    raise DataError(
        f"method {config.method!r} trains on labels, but {config.data.path or config.data.kind} "
        "has none (no 'labels' column); add labels, or train a method that needs none: "
        + " or ".join(f"--set method={name}" for name in free)
    )


def _manifest_split(config: RunConfig, data: PairedData) -> Split:
    """The split column's split, or a seeded one; with groups, whole groups are drawn."""
    groups = data.group_ids()
    if data.splits is not None:
        if data.groups is not None:
            check_groups_unsplit(data.splits, groups, data.ids)
        return split_from_column(data.splits, len(data))
    n = int(groups.max()) + 1
    if n < 2:
        raise DataError("only 1 group: a run needs at least 2, some held out as queries")
    n_query = min(config.data.n_query, max(1, n // 10))
    n_train = min(config.data.n_train, n - n_query)
    split = split_from_column(None, n, n_query=n_query, n_train=n_train, seed=config.split_seed)
    return split if data.groups is None else by_group(split, groups)


def prepare(
    config: RunConfig, vocabulary: Vocabulary | None = None, share: Share = ALONE
) -> Prepared:
    """Inputs for the configured modalities; `vocabulary` reuses a trained run's vocabulary.

    With `share`, the processes of a distributed run split the feature extraction."""
    data, split = load_dataset(config, share)
    require_labels(config, data)
    inputs: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for modality in config.data.modalities:
        if modality not in data.modalities:
            raise ConfigError(
                f"data.modalities lists {modality!r} but the dataset has {data.modalities}"
            )
        if modality == "image":
            if data.image_features is not None:
                inputs["image"], kinds["image"] = (
                    data.image_features.astype(np.float32),
                    Features.name,
                )
            else:
                assert data.image_paths is not None
                missing = [i for i, p in enumerate(data.image_paths) if p is None]
                if missing:
                    raise ConfigError(
                        f"{len(missing)} items have no image (first: {data.ids[missing[0]]})"
                    )
                distinct, rows = _distinct_paths(data.image_paths)
                inputs["image"] = extract_image_features(
                    distinct,
                    backbone=config.image.backbone,
                    size=config.image.size,
                    cache_dir=Path(config.image.cache_dir),
                    flip=config.image.flip_features,
                    tail_blocks=config.image.finetune_blocks,
                    share=share,
                )[rows]
                kinds["image"] = Pixels.name
        elif modality == "text":
            if config.text.encoder == "minilm":
                inputs["text"], kinds["text"] = (
                    _sentence_embeddings(config, data, share),
                    Sentence.name,
                )
            elif data.texts is not None:
                if vocabulary is None:
                    vocabulary = Vocabulary.build(
                        [data.texts[i] for i in split.train],
                        mode=config.text.tokenizer,
                        ngram=config.text.ngram,
                        min_count=config.text.min_count,
                        max_size=config.text.max_vocab,
                    )
                if config.text.encoder == "recurrent":
                    # Every row as wide as the longest allowed: one array for the whole set.
                    tokens = TokenIds(vocabulary, config.text.max_length)
                    inputs["text"] = tokens.vectorize(data.texts, width=tokens.max_length)[0]
                    kinds["text"] = TokenIds.name
                else:
                    inputs["text"], kinds["text"] = vocabulary.encode(data.texts), BagOfWords.name
            elif config.text.encoder == "recurrent":
                raise ConfigError(
                    "text.encoder = 'recurrent' needs raw texts, but this dataset ships text "
                    "feature vectors; use text.encoder = 'bag_of_words'"
                )
            else:
                assert data.text_features is not None
                inputs["text"], kinds["text"] = data.text_features.astype(np.float32), Features.name
        elif modality == "video":
            inputs["video"], kinds["video"] = _clip_maps(config, data, share), Clip.name
        else:
            raise ConfigError(f"unknown modality {modality!r}; use image, video and text")
    return Prepared(data=data, split=split, inputs=inputs, kinds=kinds, vocabulary=vocabulary)


def data_fingerprint(prepared: Prepared) -> str:
    """A digest of the items a run trains and evaluates on: ids, labels, texts and split."""
    data, split = prepared.data, prepared.split
    digest = hashlib.sha256()
    digest.update(json.dumps([data.ids, data.label_names, data.texts]).encode())
    if data.groups is not None:  # absent before groups existed: earlier runs keep their digest
        digest.update(json.dumps(data.groups).encode())
    for part in (data.labels, split.query, split.database, split.train, split.val):
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part.tobytes())
    return digest.hexdigest()


def _synthetic_videos(config: RunConfig) -> Path:
    """Generate (or reuse) the synthetic video dataset that `data.generate` describes."""
    params = config.data.generate
    try:
        defaults = inspect.signature(generate_video_dataset).bind(".", **params)
    except TypeError as exc:
        raise ConfigError(f"data.generate: {exc} (see generate_video_dataset)") from None
    defaults.apply_defaults()
    # One folder per parameter set: runs with different data never regenerate each other's.
    key = "-".join(f"{k}{v}" for k, v in defaults.arguments.items() if k != "out_dir")
    out = Path(config.data.path) if config.data.path else SYNTHETIC_VIDEO_DIR / key
    try:
        return generate_video_dataset(out, **params)
    except ValueError as exc:
        raise ConfigError(f"data.generate: {exc}") from None


def _clip_maps(config: RunConfig, data: PairedData, share: Share) -> np.ndarray:
    """Frozen per-frame maps of every item's clip (cached), flattened per item."""
    assert data.video_paths is not None
    missing = [i for i, p in enumerate(data.video_paths) if p is None]
    if missing:
        raise ConfigError(f"{len(missing)} items have no video (first: {data.ids[missing[0]]})")
    video = config.video
    distinct, rows = _distinct_paths(data.video_paths)
    return extract_clip_maps(
        distinct,
        backbone=video.backbone,
        size=video.size,
        frames=video.frames,
        clips=video.clips,
        cache_dir=Path(video.cache_dir),
        workers=video.workers,
        share=share,
    )[rows]


def _distinct_paths(paths: Sequence[Path | None]) -> tuple[list[Path], np.ndarray]:
    """Each media file once, and for every row the position of its file among them.

    Rows sharing a photo or a clip (a group's captions) share its features: it is decoded
    and run through the backbone once.
    """
    position: dict[Path, int] = {}
    rows = np.asarray([position.setdefault(Path(p), len(position)) for p in paths if p], np.int64)
    return list(position), rows


def _sentence_embeddings(config: RunConfig, data: PairedData, share: Share) -> np.ndarray:
    """Frozen sentence-encoder embeddings of every item's text (cached)."""
    if data.texts is None:
        raise ConfigError(
            f"text.encoder = {config.text.encoder!r} needs raw texts, but this dataset ships "
            "text feature vectors; use text.encoder = 'bag_of_words'"
        )
    return extract_sentence_features(
        data.texts,
        encoder=config.text.encoder,
        max_length=config.text.max_length,
        cache_dir=Path(config.text.cache_dir),
        share=share,
    )
