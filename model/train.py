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
from torch import nn
from tqdm import tqdm

from bundle.fileio import write_json
from model.build import build_method, standardize_inputs
from model.checkpoint import (
    CHECKPOINT,
    RESUME_KEYS,
    Position,
    corrupt,
    finite_weights,
    load_checkpoint,
    resume_position,
    run_config,
    save_checkpoint,
    saved_train_size,
    saved_training_state,
)
from model.config import ConfigError, RunConfig
from model.data.records import DataError
from model.distributed import World, data_parallel, joined, trains_only
from model.evaluate import quick_map
from model.methods.base import Batch, Method, Stage, TrainingSet
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
    `data` when given).

    Started by torchrun (or `hashbridge train --nproc N`), each process trains its share
    of every batch (model.distributed); the first writes the run's files.
    """
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir, require=RESUME_KEYS) if resume else None
    if state is not None:
        config = run_config(state, run_dir, data)
    world = World.from_environment()
    # Before any data is prepared: a wrong device should not cost a feature extraction.
    device = world.device(_device(config, run_dir if resume else None))
    if (
        device.type == "cuda"
        and world.distributed
        and world.local_rank >= (count := torch.cuda.device_count())
    ):
        raise ConfigError(
            f"{world.size} processes train on one GPU each, but this machine has {count}; "
            f"use --nproc {count} (or torchrun --nproc_per_node {count})"
        )
    with joined(world, device):
        return _train(config, run_dir, state, world, device)


def _train(
    config: RunConfig,
    run_dir: Path,
    state: dict[str, Any] | None,
    world: World,
    device: torch.device,
) -> TrainResult:
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    seed_everything(config.seed)
    started = time.perf_counter()
    prepared = prepare(config, share=world.share())
    fingerprint = data_fingerprint(prepared)
    if state is not None:
        _check_same_data(state, prepared, fingerprint, run_dir, config)
    # Re-seed: building the backbone on a feature-cache miss draws random numbers.
    seed_everything(config.seed)
    data, split = prepared.data, prepared.split
    method = build_method(
        config,
        prepared.input_dims(),
        prepared.kinds,
        len(data.label_names),
        data.multi_label,
    )
    standardize_inputs(method, prepared.inputs, prepared.kinds, split.train)
    method.to(device)
    inputs = {m: torch.from_numpy(x).to(device) for m, x in prepared.inputs.items()}
    # A method that needs no labels gets none: nothing it does can depend on them.
    needs_labels = method.labels_needed(config.options)
    labels = data.labels[split.train].astype(np.float32) if needs_labels else None
    training = TrainingSet(
        inputs,
        torch.from_numpy(split.train).to(device),
        None if labels is None else torch.from_numpy(labels).to(device),
    )
    method.start_training(training)
    stages = method.stages()
    history: list[dict[str, Any]] = []
    at = Position(0, 0, 0)
    if state is not None:
        saved = saved_training_state(state)  # outside the try: a lacking entry says so itself
        try:
            method.load_state_dict(state["model"])
            method.load_training_state(saved, device)
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
            raise _does_not_fit(run_dir, exc) from None
        history = state["history"]
        at = resume_position(state, stages, run_dir)
        if at.stage == len(stages):
            log.info("%s finished all its %d epochs; nothing is left to resume", run_dir, at.done)
        else:
            log.info("resuming %s from epoch %d", run_dir, at.done)
    loop = _Loop(
        config, method, prepared, training, device, run_dir, fingerprint, history, stages, world
    )
    for index in range(at.stage, len(stages)):
        stage = stages[index]
        before = total_epochs(stages[:index])
        if not stage.epochs:
            # Trains nothing: its hooks compute what it gives, then its checkpoint is written.
            torch.manual_seed(config.seed * 100_003 + 50_021 * (index + 1))
            method.start_stage(stage.name, training)
            method.end_stage(stage.name, training)
            loop.save(Progress(stage.name, 0, before, None, None))
            log.info("stage %s (computed, no epochs) done", stage.name)
            continue
        assert stage.optimizer is not None  # Stage checks it for a stage with epochs
        optimizer = stage.optimizer(stage.parameters)
        scheduler = stage.schedule(optimizer) if stage.schedule else None
        first = at.epoch if index == at.stage else 0
        if first and state is not None:
            try:
                optimizer.load_state_dict(state["optimizer"])
                if scheduler is not None:
                    scheduler.load_state_dict(state["scheduler"])
            except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as exc:
                raise _does_not_fit(run_dir, exc) from None
        else:
            # Seeded: a run resumed between stages starts the next one as an uninterrupted run.
            torch.manual_seed(config.seed * 100_003 + 50_021 * (index + 1))
            method.start_stage(stage.name, training)
        loop.run_stage(stage, before, first, optimizer, scheduler)
    seconds = time.perf_counter() - started
    if world.main:
        write_json(
            run_dir / "metrics.json",
            {
                "bits": config.bits,
                "split_seed": config.split_seed,
                "history": history,
                "seconds": seconds,
                "processes": world.size,
            },
        )
    return TrainResult(
        run_dir=run_dir, epochs=total_epochs(stages), history=history, seconds=seconds
    )


def total_epochs(stages: list[Stage]) -> int:
    return sum(stage.epochs for stage in stages)


def _does_not_fit(run_dir: Path, exc: BaseException) -> DataError:
    """Weights of another model, or state saved by a different optimiser or version."""
    detail = " ".join(str(exc).split())[:200]
    return corrupt(run_dir / CHECKPOINT, f"its state does not fit the run: {detail}")


@dataclass
class _Loop:
    """The epochs of one run: steps, checks, evaluation, checkpoints."""

    config: RunConfig
    method: Method
    prepared: Prepared
    training: TrainingSet
    device: torch.device
    run_dir: Path
    fingerprint: str
    history: list[dict[str, Any]]
    stages: list[Stage]
    world: World

    def __post_init__(self) -> None:
        self.total = total_epochs(self.stages)
        batch_size = self.config.train.batch_size
        self.bounds = batch_bounds(len(self.training), batch_size, has_batch_norm(self.method))

    def run_stage(
        self,
        stage: Stage,
        before: int,
        first: int,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
    ) -> None:
        """Epochs `first` .. of `stage`, which follows `before` epochs of earlier stages."""
        method, world = self.method, self.world
        desc = "training" if len(self.stages) == 1 else f"training: {stage.name}"
        bar = tqdm(range(first, stage.epochs), desc=desc, unit="epoch", disable=not world.main)
        with trains_only(method, stage.parameters) if world.distributed else nullcontext():
            # DDP is built for the stage's parameters alone: the others neither wait nor sync.
            step = data_parallel(_Step(method), world)
            for epoch in bar:
                self._epoch(stage, before, epoch, step, optimizer, scheduler, bar)

    def _epoch(
        self,
        stage: Stage,
        before: int,
        epoch: int,
        step: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        bar: Any,
    ) -> None:
        """One epoch of `stage`, its evaluation and its checkpoint."""
        config, method, device, world = self.config, self.method, self.device, self.world
        amp = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        )
        n = len(self.training)
        done = before + epoch  # epochs of the whole run before this one
        method.train()
        method.start_epoch(stage.name, epoch)
        torch.manual_seed(config.seed * 100_003 + done)
        order = torch.randperm(
            n, generator=torch.Generator().manual_seed(config.seed * 100_003 + done)
        )
        sums: dict[str, float] = {}
        for start, stop in pairwise(self.bounds):
            positions = order[start:stop].to(device)
            batch = self._batch(positions, stage.name, epoch)
            try:
                with amp, method.step_shared_by(world):
                    terms = step(batch)
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
                raise diverged(config, done, f"its loss became {total}")
            optimizer.zero_grad(set_to_none=True)
            terms["total"].backward()
            try:
                optimizer.step()
            except RuntimeError as exc:
                # Adam's step of lr / bias correction does not fit a float32 (lr ~1e38).
                if "overflow" not in str(exc):
                    raise
                raise diverged(config, done, "its step overflowed float32") from None
            for key, value in terms.items():
                sums[key] = sums.get(key, 0.0) + float(value.detach())
        if not finite_weights(method):
            # A finite loss with overflowing gradients: never checkpoint such weights.
            raise diverged(config, done, "its weights became nan or infinite")
        if scheduler is not None:
            scheduler.step()
        record: dict[str, Any] = {
            "epoch": done + 1,
            "stage": stage.name,
            "loss": {k: v / (len(self.bounds) - 1) for k, v in sums.items()},
        }
        last = done + 1 == self.total
        every = config.train.eval_every
        if every and ((done + 1) % every == 0 or last) and world.main:
            record["map"] = quick_map(method, self.prepared, device)
            log.info("epoch %d: %s", done + 1, record["map"])
        self.history.append(record)
        bar.set_postfix(loss=f"{record['loss']['total']:.4f}")
        if epoch + 1 == stage.epochs:
            method.end_stage(stage.name, self.training)
        self.save(Progress(stage.name, epoch + 1, done + 1, optimizer, scheduler))

    def save(self, progress: Progress) -> None:
        """Write the checkpoint of where the run stands (the first process only)."""
        if not self.world.main:
            return
        save_checkpoint(
            checkpoint_state(
                self.config, self.method, self.prepared, self.fingerprint, progress, self.history
            ),
            self.run_dir,
        )

    def _batch(self, positions: torch.Tensor, stage: str, epoch: int) -> Batch:
        labels = self.training.labels
        return Batch(
            inputs=self.training.inputs_at(positions),
            positions=positions,
            labels=None if labels is None else labels[positions],
            train_labels=labels,
            stage=stage,
            epoch=epoch,
        )


class _Step(nn.Module):
    """A method's training step as a module's forward: what DistributedDataParallel wraps."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> dict[str, torch.Tensor]:
        return self.method.training_step(batch)


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
    """Refuse to resume on other data than the run began on: its weights and state fit only that."""
    data, n_train = prepared.data, len(prepared.split.train)
    then_train = saved_train_size(state, n_train)
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


@dataclass
class Progress:
    """Where a checkpoint stands: its stage, epochs done in it and in all, and its optimiser
    (None in a stage of no epochs)."""

    stage: str
    stage_epoch: int
    epoch: int
    optimizer: torch.optim.Optimizer | None
    scheduler: Any


def checkpoint_state(
    config: RunConfig,
    method: Method,
    prepared: Prepared,
    fingerprint: str,
    progress: Progress,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    """Everything needed to resume, evaluate and export."""
    scheduler = progress.scheduler
    return {
        "format": 1,
        "config": config.to_dict(),
        "epoch": progress.epoch,
        "stage": progress.stage,
        "stage_epoch": progress.stage_epoch,
        "model": method.state_dict(),
        "optimizer": progress.optimizer.state_dict() if progress.optimizer is not None else {},
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "method_state": method.training_state(),
        "n_train": len(prepared.split.train),
        "history": history,
        "input_dims": prepared.input_dims(),
        "kinds": prepared.kinds,
        "vocabulary": prepared.vocabulary.to_json() if prepared.vocabulary else None,
        "label_names": prepared.data.label_names,
        "multi_label": prepared.data.multi_label,
        "data_fingerprint": fingerprint,  # see model.prepare.data_fingerprint
    }
