"""Atomic checkpoint files: everything needed to resume training or rebuild the encoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.fileio import atomic_write

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> Path:
    """Write the checkpoint to a temp file, fsync, then rename over the old one."""
    return atomic_write(Path(run_dir) / CHECKPOINT, lambda handle: torch.save(state, handle))


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read a run's checkpoint, with a clear error when there is none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train a run first (hashbridge train ... --out {run_dir})"
        )
    return torch.load(path, map_location="cpu", weights_only=False)
