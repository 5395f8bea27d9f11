"""Distributed training runs for tests: through the CLI's --nproc, or as spawned processes
stopped by Ctrl-C after a given epoch (as a user stops a run)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from hashbridge.launch import free_port, worker_environment

ROOT = Path(__file__).resolve().parents[2]


def hashbridge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`hashbridge ARGS` in a fresh process (one thread a worker), its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-m", "hashbridge.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _rank_until(
    rank: int, size: int, port: int, config: dict[str, Any], run_dir: str, epoch: int
) -> None:
    os.environ.update(worker_environment(rank, size, port))
    torch.set_num_threads(1)
    import model.train
    from model.config import config_from_dict

    real_save = model.train._Loop.save

    def save_then_interrupt(loop: Any, progress: Any) -> None:
        real_save(loop, progress)
        if progress.epoch == epoch:
            raise KeyboardInterrupt  # in every process, after the same checkpoint

    model.train._Loop.save = save_then_interrupt  # type: ignore[method-assign]
    try:
        model.train.train(config_from_dict(config), Path(run_dir))
    except KeyboardInterrupt:
        return
    raise AssertionError(f"rank {rank} finished without stopping after epoch {epoch}")


def train_ranks_until(config: dict[str, Any], run_dir: Path, epoch: int, size: int = 2) -> None:
    """Train `config` as `size` processes into `run_dir`, all stopped after run-wide `epoch`."""
    context = multiprocessing.get_context("spawn")
    port = free_port()
    workers = [
        context.Process(
            target=_rank_until, args=(rank, size, port, config, str(run_dir), epoch), daemon=True
        )
        for rank in range(size)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    codes = [worker.exitcode for worker in workers]
    assert codes == [0] * size, f"workers ended with {codes}"
