"""An untrained model built the way export builds it, for speed benchmarks (weights don't matter).

The method comes from ``model.build.build_method`` with a small config that has the shapes
of the MIRFlickr-25K setup (EfficientNet-Lite0 at 128 px with its ImageNet weights, a 1,386-
word bag of words, 24 labels); its streams keep their random initialisation. It is written as
a checkpoint so that ``model.export`` can rebuild the eager encoders and write a real bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle.text import Vocabulary
from model.build import build_method
from model.checkpoint import save_checkpoint
from model.config import config_from_dict
from model.export import ModalityExport, build_encoders, export_bundle, load_run

VOCAB_SIZE = 1386  # MIRFlickr-25K's tag vocabulary in this project's runs
NUM_LABELS = 24
IMAGE_SIZE = 128
SENTENCE_DIM = 384  # all-MiniLM-L6-v2's embedding width
MODEL_NOTE = (
    "Untrained DSMHN built with model.build.build_method (config: bits={bits}, image "
    "backbone efficientnet-lite0 with its ImageNet weights at {size} px, stream hidden "
    "[1024], text bag of words over {vocab} tokens, {labels} labels); eager encoders from "
    "model.export.build_encoders, TorchScript from model.export.export_bundle (traced, "
    "saved, reloaded with torch.jit.load as the service does). Weights are random where "
    "training would set them, which does not change the cost."
)


def vocabulary(size: int = VOCAB_SIZE) -> Vocabulary:
    """A word vocabulary of ``size`` made-up tags (tag0000, tag0001, ...)."""
    return Vocabulary(tokens=[f"tag{i:04d}" for i in range(size)])


def write_untrained_run(
    run_dir: Path,
    *,
    bits: int = 64,
    image_size: int = IMAGE_SIZE,
    vocab_size: int = VOCAB_SIZE,
    seed: int = 0,
    sentences: bool = False,
) -> Path:
    """Write a checkpoint of an untrained image+text method that model.export can read.

    With `sentences`, texts go through the pretrained MiniLM sentence encoder instead of a
    bag of words (`text.encoder = "minilm"`).
    """
    config = config_from_dict(
        {
            "bits": bits,
            "seed": seed,
            # No data: export then verifies on synthetic inputs only (it logs that).
            "data": {"kind": "manifest", "path": str(run_dir / "no-such-manifest.csv")},
            "image": {"size": image_size},
            "text": {"encoder": "minilm" if sentences else "bag_of_words"},
        }
    )
    dims = {"image": 1280, "text": SENTENCE_DIM if sentences else vocab_size}
    kinds = {"image": "pixels", "text": "sentence" if sentences else "bag_of_words"}
    torch.manual_seed(seed)
    method = build_method(config, dims, kinds, NUM_LABELS, True).eval()
    state: dict[str, Any] = {
        "config": config.to_dict(),
        "model": method.state_dict(),
        "input_dims": dims,
        "kinds": kinds,
        "label_names": [f"label{i:02d}" for i in range(NUM_LABELS)],
        "multi_label": True,
        "vocabulary": vocabulary(vocab_size).to_json(),
        "epoch": 0,
    }
    save_checkpoint(state, run_dir)
    return run_dir


def quiet_export_logs() -> None:
    """Export warns that it verifies on synthetic inputs; expected here, so keep stderr clean."""
    logging.getLogger("model.export").setLevel(logging.ERROR)


def eager_encoders(run_dir: Path) -> dict[str, ModalityExport]:
    """The eager encoders export would trace, by modality."""
    quiet_export_logs()
    return build_encoders(load_run(run_dir))


def export_untrained(run_dir: Path, bundle_dir: Path) -> Path:
    """Export the run's bundle with model.export (verified against the eager model)."""
    quiet_export_logs()
    return export_bundle(run_dir, bundle_dir)


def random_texts(n: int, vocab_size: int, rng: np.random.Generator, words: int = 8) -> list[str]:
    """Texts of ``words`` known tags plus two unknown words each."""
    out = []
    for _ in range(n):
        tags = [f"tag{i:04d}" for i in rng.integers(vocab_size, size=words)]
        out.append(" ".join([*tags, "the", "photo"]))
    return out
