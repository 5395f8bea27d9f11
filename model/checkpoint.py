"""Atomic checkpoint files: everything needed to resume training or rebuild the encoders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> Path:
    """Write the checkpoint to a temp file, fsync, then rename over the old one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    target = run_dir / CHECKPOINT
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=".checkpoint-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_checkpoint(run_dir: Path) -> dict[str, Any]:
    """Read a run's checkpoint, with a clear error when there is none."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train a run first (hashbridge train ... --out {run_dir})"
        )
    return torch.load(path, map_location="cpu", weights_only=False)
