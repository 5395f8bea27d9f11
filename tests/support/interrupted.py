"""Training stopped by Ctrl-C right after a given epoch's checkpoint, as a user would stop it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import model.train
from model.config import RunConfig


def train_until(
    config: RunConfig,
    run_dir: Path,
    epoch: int,
    monkeypatch: pytest.MonkeyPatch,
    rewrite: Callable[[dict[str, Any]], dict[str, Any]] = lambda state: state,
) -> None:
    """Train `config` into `run_dir` until the checkpoint of run-wide `epoch` is written.

    `rewrite` changes every checkpoint before it is written (an older format, say).
    """
    real_save = model.train.save_checkpoint

    def save_then_interrupt(state: dict[str, Any], folder: Path) -> Path:
        path = real_save(rewrite(state), folder)
        if state["epoch"] == epoch:
            raise KeyboardInterrupt
        return path

    with monkeypatch.context() as patch:
        patch.setattr(model.train, "save_checkpoint", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            model.train.train(config, run_dir)
