"""The config of the tests' tiny DVSH runs (fixtures: tests/support/dvsh_fixtures.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from model.config import RunConfig, config_from_dict


def dvsh_config(manifest: Path, cache_dir: Path, **overrides: Any) -> RunConfig:
    """16 bits, 32-unit networks, 8 epochs of batches of 16 on the CPU."""
    data: dict[str, Any] = {
        "method": "dvsh",
        "bits": 16,
        "seed": 0,
        "data": {"path": str(manifest)},
        "image": {"size": 64, "hidden": [64], "cache_dir": str(cache_dir)},
        "text": {
            "encoder": "recurrent",
            "max_length": 12,
            "embedding_dim": 16,
            "rnn_hidden": 32,
            "hidden": [32],
        },
        "dvsh": {"fusion_hidden": 32, "image_projection": 16},
        "train": {"epochs": 8, "batch_size": 16, "lr": 3e-3, "eval_every": 4, "threads": 1},
        "eval": {"top_r": 50, "ks": [1, 10]},
    }
    data.update(overrides)
    return config_from_dict(data)
