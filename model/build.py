"""Build a run's method: one stream per modality from its input kind, then the configured method.

`STREAMS` is the one table from an input kind's name (model/prepare.py) to how its stream is
built and whether the stream standardises its inputs with training-set statistics; a new kind
is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from model.backbones.efficientnet import FEATURE_DIM, TrunkTail, load_pretrained, split_shape
from model.backbones.video import build_temporal, clip_map_shape
from model.config import ConfigError, RunConfig
from model.methods.base import Method, MethodSetup
from model.methods.registry import METHODS, method_class
from model.streams import ImageTailStream, MLPStream, SentenceStream, VideoStream
from model.video_features import channel_statistics


@dataclass(frozen=True)
class StreamKind:
    """How the stream of one input kind is built: (config, input width) -> stream."""

    build: Callable[[RunConfig, int], nn.Module]
    #: Whether its inputs are standardised with training-set statistics (counts are not).
    standardize: bool = True


def _image_stream(config: RunConfig, dim: int) -> nn.Module:
    """MLP over frozen image features, or the fine-tuned last backbone blocks and an MLP."""
    image = config.image
    if not image.finetune_blocks:
        return MLPStream(dim, image.hidden, config.bits, image.dropout)
    n = image.finetune_blocks
    # Starts from ImageNet weights: the tail's inputs are the cached maps of the frozen front.
    tail = TrunkTail(load_pretrained(image.backbone), n)
    mlp = MLPStream(FEATURE_DIM, image.hidden, config.bits, image.dropout)
    return ImageTailStream(tail, split_shape(image.backbone, image.size, n), mlp)


def _video_stream(config: RunConfig, dim: int) -> nn.Module:
    """Temporal model (or the frame-averaging baseline) over cached per-frame maps."""
    video = config.video
    shape = clip_map_shape(video.backbone, video.size, video.frames, video.clips)
    temporal = build_temporal(video.temporal, shape[2], video.width, video.blocks, video.time_bins)
    return VideoStream(shape, temporal, video.hidden, config.bits, video.dropout)


def _text_stream(config: RunConfig, dim: int) -> nn.Module:
    return MLPStream(dim, config.text.hidden, config.bits, config.text.dropout)


def _recurrent_stream(config: RunConfig, dim: int) -> nn.Module:
    """Embeddings of `dim` word ids (trained from scratch) -> GRU or LSTM -> MLP."""
    text = config.text
    return SentenceStream(
        num_ids=dim,
        embedding_dim=text.embedding_dim,
        cell=text.cell,
        rnn_hidden=text.rnn_hidden,
        pooling=text.pooling,
        hidden=text.hidden,
        bits=config.bits,
        dropout=text.dropout,
    )


def _feature_stream(config: RunConfig, dim: int) -> nn.Module:
    features = config.features
    return MLPStream(
        dim, features.hidden, config.bits, features.dropout, signed_sqrt=features.signed_sqrt
    )


#: Input kind name -> its stream.
STREAMS: dict[str, StreamKind] = {
    "pixels": StreamKind(_image_stream),
    "clip": StreamKind(_video_stream),
    "bag_of_words": StreamKind(_text_stream, standardize=False),
    "sentence": StreamKind(_text_stream),
    # Its width is the number of ids it embeds (model.prepare.Prepared.input_dims).
    "token_ids": StreamKind(_recurrent_stream, standardize=False),
    "features": StreamKind(_feature_stream),
}


def build_method(
    config: RunConfig,
    input_dims: dict[str, int],
    kinds: dict[str, str],
    num_labels: int,
    multi_label: bool,
) -> Method:
    """Construct the configured method with one stream per modality."""
    if config.method not in METHODS:
        raise ConfigError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
    streams = {}
    for modality, dim in input_dims.items():
        if kinds[modality] not in STREAMS:
            raise ConfigError(
                f"{modality} input kind {kinds[modality]!r} has no stream; "
                f"known kinds: {', '.join(STREAMS)}"
            )
        streams[modality] = STREAMS[kinds[modality]].build(config, dim)
    setup = MethodSetup(config.bits, num_labels, multi_label, config.options, config.train)
    cls: type[Method] = method_class(config.method)
    return cls(streams, setup)


def standardize_inputs(
    method: Method, inputs: dict[str, np.ndarray], kinds: dict[str, str], rows: np.ndarray
) -> None:
    """Fit each dense stream's input standardisation on the training rows (not bag of words)."""
    for modality, x in inputs.items():
        stream = method.stream(modality)
        if not STREAMS[kinds[modality]].standardize:
            continue
        if isinstance(stream, VideoStream):
            stream.set_standardization(*channel_statistics(x, rows, stream.map_shape))
        elif isinstance(stream, MLPStream):
            train = stream.transform(torch.from_numpy(x[rows]))
            stream.set_standardization(train.mean(0), train.std(0))
