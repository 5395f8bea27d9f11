"""Atomic checkpoint files: everything needed to resume training or rebuild the encoders."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from bundle.fileio import atomic_write
from model.config import ConfigError, RunConfig, config_from_dict
from model.data.records import DataError

if TYPE_CHECKING:
    from model.methods.base import Method, Stage

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"

#: What evaluation and export read from a checkpoint.
MODEL_KEYS = (
    "config",
    "epoch",
    "model",
    "input_dims",
    "kinds",
    "label_names",
    "multi_label",
    "vocabulary",
)
#: What resuming a run reads besides (and the method's state: see saved_training_state).
RESUME_KEYS = (*MODEL_KEYS, "optimizer", "scheduler", "history")

#: The types each entry may have when present.
_TYPES: dict[str, tuple[type, ...]] = {
    "config": (dict,),
    "epoch": (int,),
    "model": (dict,),
    "input_dims": (dict,),
    "kinds": (dict,),
    "label_names": (list, tuple),
    "vocabulary": (dict, type(None)),
    "optimizer": (dict,),
    "scheduler": (dict,),
    "banks": (dict,),
    "method_state": (dict,),
    "stage": (str,),
    "stage_epoch": (int,),
    "n_train": (int,),
    "history": (list,),
    "data_fingerprint": (str,),
}


class Checkpoint(dict[str, Any]):
    """A loaded checkpoint: reading an entry it lacks is a DataError naming the file."""

    path: Path

    def __missing__(self, key: str) -> Any:
        raise corrupt(self.path, f"it lacks the entry {key!r}")


def corrupt(path: Path, detail: str) -> DataError:
    """The error for a checkpoint file that exists but cannot be used."""
    return DataError(
        f"checkpoint {path} is corrupt or not a hashbridge checkpoint: {detail}; "
        f"retrain the run (hashbridge train --config FILE --out {path.parent}) "
        "or restore the file from a backup"
    )


def finite_weights(module: torch.nn.Module) -> bool:
    """Whether every floating-point weight and buffer is finite (a diverged run's are not)."""
    return all(
        bool(w.isfinite().all()) for w in module.state_dict().values() if w.is_floating_point()
    )


def trained_method(state: dict[str, Any], config: RunConfig, run_dir: Path) -> Method:
    """The run's method rebuilt from its checkpoint, in eval mode on the CPU.

    Weights that do not fit the config, or that are not finite (a diverged run: every item
    would get one code, and a report or bundle of it would look like a real result), are a
    DataError naming the run.
    """
    from model.build import build_method  # the networks, only for callers that run them

    method = build_method(
        config, state["input_dims"], state["kinds"], len(state["label_names"]), state["multi_label"]
    )
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as exc:  # weights of another model than the config describes
        detail = " ".join(str(exc).split())[:200]
        raise corrupt(
            Path(run_dir) / CHECKPOINT, f"its weights do not fit its config: {detail}"
        ) from None
    if not finite_weights(method):
        raise DataError(
            f"{run_dir}: its weights hold nan or infinite values (its training diverged); "
            "train a new run with a lower train.lr"
        )
    return method.eval()


class Position(NamedTuple):
    """Where a run resumes: stage index (len(stages) once finished), epochs done within it and
    in the whole run."""

    stage: int
    epoch: int
    done: int


def resume_position(state: dict[str, Any], stages: list[Stage], run_dir: Path) -> Position:
    """The stage and epoch a checkpoint's run goes on from; a finished stage moves to the next.

    Checkpoints written before methods had stages hold a one-stage method's "epoch" alone.
    """
    names = [stage.name for stage in stages]
    path = Path(run_dir) / CHECKPOINT
    name = state.get("stage")
    if name is None:
        if len(stages) != 1:
            raise corrupt(path, "it names no stage, and this method trains in several")
        index, epoch = 0, state["epoch"]
    elif name in names:
        index, epoch = names.index(name), state["stage_epoch"]
    else:
        raise corrupt(path, f"its stage {name!r} is none of its method's ({', '.join(names)})")
    if not 0 <= epoch <= stages[index].epochs:
        raise corrupt(
            path, f"it is {epoch} epochs into stage {name or names[0]!r} of {stages[index].epochs}"
        )
    done = sum(stage.epochs for stage in stages[:index]) + epoch
    if epoch == stages[index].epochs:
        index, epoch = index + 1, 0
    return Position(index, epoch, done)


def saved_training_state(state: dict[str, Any]) -> dict[str, Any]:
    """The method's own resume state; checkpoints from before held DSMHN's memory banks."""
    if "method_state" not in state and "banks" in state:
        return {"banks": state["banks"]}
    return state["method_state"]  # type: ignore[no-any-return]


def saved_train_size(state: dict[str, Any], default: int) -> int:
    """How many items the run trained on (older checkpoints tell it by their banks)."""
    if "n_train" in state:
        return int(state["n_train"])
    banks = state.get("banks")
    return len(next(iter(banks.values()))) if banks else default


def checkpoint_config(state: dict[str, Any], run_dir: Path) -> RunConfig:
    """The run's saved config, or a ConfigError that says it came from the checkpoint.

    A checkpoint from another hashbridge version may hold keys or values this one refuses;
    the error must not send the user looking for them in their own config file.
    """
    try:
        return config_from_dict(state["config"])
    except ConfigError as exc:
        raise ConfigError(
            f"checkpoint {Path(run_dir) / CHECKPOINT} holds a config this hashbridge cannot "
            f"use ({exc}); retrain the run (hashbridge train --config FILE --out {run_dir})"
        ) from None


def run_config(state: dict[str, Any], run_dir: Path, data: Path | None = None) -> RunConfig:
    """The run's saved config, with its data at ``data`` when it has moved there.

    Moved data must be the same data: the callers compare its fingerprint with the one the
    checkpoint holds.
    """
    config = checkpoint_config(state, run_dir)
    generated = config.data.kind == "synthetic_video"
    if data is not None:
        if generated:
            raise ConfigError(
                f"run {run_dir} trains on generated videos (data.kind synthetic_video), "
                "which have no place to move from; leave out --data"
            )
        config.data.path = str(Path(data).resolve())
        if "data_fingerprint" not in state:
            log.warning(
                "run %s predates data fingerprints: whether %s is the data it was trained on "
                "cannot be checked",
                run_dir,
                data,
            )
    elif not generated and config.data.path and not Path(config.data.path).exists():
        raise DataError(
            f"the data run {run_dir} was trained on is not there any more; if it moved, "
            "give its new place with --data NEW_PATH",
            path=config.data.path,
        )
    return config


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> Path:
    """Write the checkpoint to a temp file, fsync, then rename over the old one.

    Ctrl-C meanwhile takes effect once the new checkpoint is in place: torch.save stopped
    midway raised its own error over the KeyboardInterrupt (a traceback, not the CLI's line).
    """
    with _interrupts_held():
        return atomic_write(Path(run_dir) / CHECKPOINT, lambda handle: torch.save(state, handle))


@contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT for the block (main thread only), then raise KeyboardInterrupt if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if held:
        raise KeyboardInterrupt


def load_checkpoint(run_dir: Path, require: Iterable[str] = ()) -> dict[str, Any]:
    """Read a run's checkpoint, with a clear error when there is none or it is unusable.

    A missing file is a FileNotFoundError; a file torch cannot read, one that does not hold a
    dict, or one lacking an entry of `require` is a DataError, and so is reading any other
    entry the checkpoint lacks.
    """
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}: train a run first (hashbridge train ... --out {run_dir})"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, empty file, ...
        empty = path.stat().st_size == 0
        raise corrupt(path, "the file is empty" if empty else _one_line(exc)) from None
    if not isinstance(state, dict):
        raise corrupt(path, f"it holds a {type(state).__name__}, not a dict of training state")
    for key, types in _TYPES.items():
        value = state.get(key)
        if key in state and (not isinstance(value, types) or isinstance(value, bool)):
            raise corrupt(path, f"its {key!r} entry is a {type(value).__name__}")
    missing = [key for key in require if key not in state]
    if missing:
        entries = "entry" if len(missing) == 1 else "entries"
        raise corrupt(path, f"it lacks the {entries} {', '.join(map(repr, missing))}")
    checkpoint = Checkpoint(state)
    checkpoint.path = path
    return checkpoint


def _one_line(exc: BaseException) -> str:
    """An exception as one short line: its first sentence, at most 200 characters."""
    text = " ".join(str(exc).split())
    # torch follows the reason with sentences of advice on corrupted files.
    text = text.split(". ", 1)[0].rstrip(".")
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
