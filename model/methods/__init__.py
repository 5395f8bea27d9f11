"""Hashing methods built on the shared streams: how streams and losses combine."""

from __future__ import annotations

import numpy as np
import torch

from model.config import RunConfig
from model.methods.dsmhn import DSMHN
from model.streams import MLPStream

METHODS = {"dsmhn": DSMHN}


def build_method(
    config: RunConfig,
    input_dims: dict[str, int],
    kinds: dict[str, str],
    num_labels: int,
    multi_label: bool,
) -> DSMHN:
    """Construct the configured method with one stream per modality."""
    if config.method not in METHODS:
        raise ValueError(f"unknown method {config.method!r}; choose one of {sorted(METHODS)}")
    streams = {}
    for modality, dim in input_dims.items():
        section = {"pixels": config.image, "bag_of_words": config.text}.get(
            kinds[modality], config.features
        )
        signed_sqrt = section is config.features and config.features.signed_sqrt
        streams[modality] = MLPStream(
            dim, section.hidden, config.bits, section.dropout, signed_sqrt=signed_sqrt
        )
    return METHODS[config.method](streams, config.bits, num_labels, multi_label, config.loss)


def standardize_inputs(
    method: DSMHN, inputs: dict[str, np.ndarray], kinds: dict[str, str], rows: np.ndarray
) -> None:
    """Fit each dense stream's input standardisation on the training rows (not bag of words)."""
    for modality, x in inputs.items():
        if kinds[modality] == "bag_of_words":
            continue
        stream = method.streams[modality]
        train = stream.transform(torch.from_numpy(x[rows]))
        stream.set_standardization(train.mean(0), train.std(0))
