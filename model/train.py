"""Offline trainer: epochs over cached inputs, atomic checkpoints, resume, periodic evaluation.

Each epoch's shuffling and dropout are seeded from (seed, epoch), so a run resumed from the
checkpoint of epoch e continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import (
    CHECKPOINT,
    RESUME_KEYS,
    corrupt,
    finite_weights,
    load_checkpoint,
    run_config,
    save_checkpoint,
)
from model.config import ConfigError, RunConfig
from model.data.records import DataError
from model.evaluate import quick_map
from model.fileio import write_json
from model.methods import build_method, standardize_inputs
from model.methods.djsrh import DJSRH
from model.prepare import Prepared, data_fingerprint, prepare

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished training run reports."""

    run_dir: Path
    epochs: int
    history: list[dict[str, Any]]
    seconds: float


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _device(config: RunConfig, resumed: Path | None = None) -> torch.device:
    """The configured device, or a ConfigError when this machine cannot train on it."""
    name = config.train.device
    # A resumed run keeps its saved config, so --device cannot change it.
    fix = f"resume {resumed} on a machine with a CUDA GPU" if resumed else "use --device cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device {name!r} is not a device; use cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device is {name} but no CUDA GPU is available; {fix}")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(
                f"train.device is {name} but this machine has {count} CUDA GPU(s) "
                f"(cuda:0 to cuda:{count - 1}); "
                + (f"resume {resumed} on a machine with more" if resumed else "use --device cuda")
            )
    elif device.type != "cpu":
        raise ConfigError(f"train.device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def train(
    config: RunConfig, run_dir: Path, *, resume: bool = False, data: Path | None = None
) -> TrainResult:
    """Train `config` into `run_dir`, or resume it from its checkpoint (its data moved to
    `data` when given)."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir, require=RESUME_KEYS) if resume else None
    if state is not None:
        config = run_config(state, run_dir, data)
        if state["epoch"] >= config.train.epochs:
            log.info(
                "%s finished all its %d epochs; nothing is left to resume", run_dir, state["epoch"]
            )
        else:
            log.info("resuming %s from epoch %d", run_dir, state["epoch"])
    # Before any data is prepared: a wrong device should not cost a feature extraction.
    device = _device(config, run_dir if resume else None)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.seed)
    started = time.perf_counter()
    prepared = prepare(config)
    fingerprint = data_fingerprint(prepared)
    if state is not None:
        _check_same_data(state, prepared, fingerprint, run_dir, config)
    # Re-seed: building the backbone on a feature-cache miss draws random numbers.
    seed_everything(config.seed)
    data, split = prepared.data, prepared.split
    method = build_method(
        config,
        {m: x.shape[1] for m, x in prepared.inputs.items()},
        prepared.kinds,
        len(data.label_names),
        data.multi_label,
    )
    standardize_inputs(method, prepared.inputs, prepared.kinds, split.train)
    method.to(device)
    inputs = {m: torch.from_numpy(x).to(device) for m, x in prepared.inputs.items()}
    labels = torch.from_numpy(data.labels.astype(np.float32)).to(device)
    train_rows = torch.from_numpy(split.train).to(device)
    train_labels = labels[train_rows]
    optimizer = (
        method.optimizer()
        if isinstance(method, DJSRH)
        else torch.optim.Adam(
            method.parameters(), lr=config.train.lr, weight_decay=config.train.weight_decay
        )
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.train.epochs)
    method.init_banks(len(split.train), device)
    history: list[dict[str, Any]] = []
    first_epoch = 0
    if state is not None:
        try:
            method.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            method.banks = {m: b.to(device) for m, b in state["banks"].items()}
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
            # Weights of another model, or state saved by a different optimiser or version.
            detail = " ".join(str(exc).split())[:200]
            raise corrupt(
                run_dir / CHECKPOINT, f"its state does not fit the run: {detail}"
            ) from None
        history = state["history"]
        first_epoch = state["epoch"]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    n = len(split.train)
    bounds = batch_bounds(n, config.train.batch_size, has_batch_norm(method))
    bar = tqdm(range(first_epoch, config.train.epochs), desc="training", unit="epoch")
    for epoch in bar:
        method.train()
        method.set_epoch(epoch)
        torch.manual_seed(config.seed * 100_003 + epoch)
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        )
        sums: dict[str, float] = {}
        for start, stop in pairwise(bounds):
            positions = order[start:stop].to(device)
            rows = train_rows[positions]
            try:
                with amp:
                    terms = method.training_loss(
                        {m: x[rows] for m, x in inputs.items()},
                        positions,
                        labels[rows],
                        train_labels,
                    )
            except ValueError as exc:
                if "more than 1 value per channel" not in str(exc):
                    raise
                raise ConfigError(
                    f"batches of one item (train.batch_size {config.train.batch_size}, {n} "
                    "training item(s)) cannot train the batch norm layers of "
                    "image.finetune_blocks or the video network at this input size; use "
                    "train.batch_size 2 or more, on 2 or more training items"
                ) from None
            # Checked before the step: one nan loss would turn every weight into nan.
            total = float(terms["total"].detach())
            if not math.isfinite(total):
                raise diverged(config, epoch, f"its loss became {total}")
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            try:
                optimizer.step()
            except RuntimeError as exc:
                # Adam's step of lr / bias correction does not fit a float32 (lr ~1e38).
                if "overflow" not in str(exc):
                    raise
                raise diverged(config, epoch, "its step overflowed float32") from None
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        if not finite_weights(method):
            # A finite loss with overflowing gradients: never checkpoint such weights.
            raise diverged(config, epoch, "its weights became nan or infinite")
        scheduler.step()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "loss": {k: v / (len(bounds) - 1) for k, v in sums.items()},
        }
        last = epoch + 1 == config.train.epochs
        if config.train.eval_every and ((epoch + 1) % config.train.eval_every == 0 or last):
            record["map"] = quick_map(method, prepared, device)
            log.info("epoch %d: %s", epoch + 1, record["map"])
        history.append(record)
        bar.set_postfix(loss=f"{record['loss']['total']:.4f}")
        save_checkpoint(
            checkpoint_state(
                config, method, prepared, fingerprint, optimizer, scheduler, epoch + 1, history
            ),
            run_dir,
        )
    seconds = time.perf_counter() - started
    write_json(
        run_dir / "metrics.json",
        {
            "bits": config.bits,
            "split_seed": config.split_seed,
            "history": history,
            "seconds": seconds,
        },
    )
    return TrainResult(
        run_dir=run_dir, epochs=config.train.epochs, history=history, seconds=seconds
    )


def has_batch_norm(method: torch.nn.Module) -> bool:
    """Whether `method` holds batch norm layers (fine-tuned image blocks, the video network)."""
    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    return any(isinstance(module, kinds) for module in method.modules())


def batch_bounds(n: int, batch_size: int, batch_norm: bool) -> list[int]:
    """Start of every batch over `n` items, then `n`.

    With batch norm a last batch of one item joins the batch before it: batch norm cannot
    train on one item whose maps are 1x1, and n % batch_size == 1 is no user mistake.
    """
    bounds = [*range(0, n, batch_size), n]
    if batch_norm and len(bounds) > 2 and n - bounds[-2] == 1:
        del bounds[-2]
    return bounds


def diverged(config: RunConfig, epoch: int, what: str) -> ConfigError:
    """The error for a run whose training blew up; the last finished epoch stays saved."""
    return ConfigError(
        f"training diverged in epoch {epoch + 1}: {what} (train.lr = {config.train.lr:g}); "
        f"train a new run with a lower learning rate, e.g. --set train.lr="
        f"{min(config.train.lr / 10, 1e-3):g}"
    )


def _check_same_data(
    state: dict[str, Any], prepared: Prepared, fingerprint: str, run_dir: Path, config: RunConfig
) -> None:
    """Refuse to resume on other data than the run began on: its weights and banks fit only that."""
    data, n_train = prepared.data, len(prepared.split.train)
    banks = state["banks"]
    then_train = len(next(iter(banks.values()))) if banks else n_train
    changed = None
    if list(state["label_names"]) != data.label_names:
        changed = (
            f"its {len(state['label_names'])} labels are not the {len(data.label_names)} "
            "labels the data has now"
        )
    elif then_train != n_train:
        changed = f"it trained on {then_train} items, the data now has {n_train} to train on"
    elif state.get("data_fingerprint") not in (None, fingerprint):
        # Checkpoints written before the fingerprint existed are checked by the two above only.
        changed = "its items, labels, texts or split are not the same"
    if changed:
        raise DataError(
            f"cannot resume {run_dir}: its data {config.data.path or config.data.kind} changed "
            f"since the run began ({changed}); restore that data, or train a new run "
            "(hashbridge train --config FILE --out NEW_FOLDER)"
        )


def checkpoint_state(
    config: RunConfig,
    method: torch.nn.Module,
    prepared: Prepared,
    fingerprint: str,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything needed to resume, evaluate and export."""
    return {
        "format": 1,
        "config": config.to_dict(),
        "epoch": epoch,
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "banks": {m: b.cpu() for m, b in method.banks.items()},  # type: ignore[attr-defined]
        "history": history,
        "input_dims": {m: int(x.shape[1]) for m, x in prepared.inputs.items()},
        "kinds": prepared.kinds,
        "vocabulary": prepared.vocabulary.to_json() if prepared.vocabulary else None,
        "label_names": prepared.data.label_names,
        "multi_label": prepared.data.multi_label,
        "data_fingerprint": fingerprint,  # see model.prepare.data_fingerprint
    }
