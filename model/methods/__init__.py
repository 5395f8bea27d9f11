"""Hashing methods built on the shared streams: how streams and losses combine."""

from __future__ import annotations

import numpy as np
import torch

from model.backbones.efficientnet import FEATURE_DIM, TrunkTail, load_pretrained, split_shape
from model.backbones.video import build_temporal, clip_map_shape
from model.config import RunConfig
from model.methods.djsrh import DJSRH
from model.methods.dsmhn import DSMHN
from model.streams import ImageTailStream, MLPStream, VideoStream
from model.video_features import channel_statistics

METHODS: dict[str, type[DSMHN] | type[DJSRH]] = {"dsmhn": DSMHN, "djsrh": DJSRH}


def needs_labels(method: str) -> bool:
    """Whether the named method trains on labels (DSMHN does, DJSRH does not)."""
    return getattr(METHODS[method], "needs_labels", True)


def build_method(
    config: RunConfig,
    input_dims: dict[str, int],
    kinds: dict[str, str],
    num_labels: int,
    multi_label: bool,
) -> DSMHN | DJSRH:
    """Construct the configured method with one stream per modality."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
    streams = {}
    for modality, dim in input_dims.items():
        section = {
            "pixels": config.image,
            "bag_of_words": config.text,
            "sentence": config.text,
        }.get(kinds[modality], config.features)
        if kinds[modality] == "clip":
            streams[modality] = _video_stream(config)
            continue
        if kinds[modality] == "pixels" and config.image.finetune_blocks:
            streams[modality] = _tail_stream(config)
            continue
        signed_sqrt = section is config.features and config.features.signed_sqrt
        streams[modality] = MLPStream(
            dim, section.hidden, config.bits, section.dropout, signed_sqrt=signed_sqrt
        )
    if config.method == "djsrh":
        return DJSRH(streams, config.bits, config.djsrh)
    return DSMHN(streams, config.bits, num_labels, multi_label, config.loss)


def _tail_stream(config: RunConfig) -> ImageTailStream:
    """Image stream that fine-tunes the backbone's last blocks, starting from ImageNet weights."""
    image, n = config.image, config.image.finetune_blocks
    tail = TrunkTail(load_pretrained(image.backbone), n)
    mlp = MLPStream(FEATURE_DIM, image.hidden, config.bits, image.dropout)
    return ImageTailStream(tail, split_shape(image.backbone, image.size, n), mlp)


def _video_stream(config: RunConfig) -> VideoStream:
    """Temporal model (or the frame-averaging baseline) over cached per-frame maps."""
    video = config.video
    shape = clip_map_shape(video.backbone, video.size, video.frames, video.clips)
    temporal = build_temporal(video.temporal, shape[2], video.width, video.blocks, video.time_bins)
    return VideoStream(shape, temporal, video.hidden, config.bits, video.dropout)


def standardize_inputs(
    method: DSMHN | DJSRH, inputs: dict[str, np.ndarray], kinds: dict[str, str], rows: np.ndarray
) -> None:
    """Fit each dense stream's input standardisation on the training rows (not bag of words)."""
    for modality, x in inputs.items():
        stream = method.streams[modality]
        if isinstance(stream, VideoStream):
            stream.set_standardization(*channel_statistics(x, rows, stream.map_shape))
            continue
        if kinds[modality] == "bag_of_words" or not isinstance(stream, MLPStream):
            continue
        train = stream.transform(torch.from_numpy(x[rows]))
        stream.set_standardization(train.mean(0), train.std(0))
