"""The method contract: all that the trainer, checkpoints, evaluation and export know of a method.

A method is an `nn.Module` holding one stream per modality (the module that maps that
modality's prepared input to tanh codes, exported as its encoder) and whatever else it trains
with (label heads, a fusion network). It declares its training as stages run in sequence,
each with its own parameters, optimiser, schedule and epochs; a training step turns a `Batch`
into named loss terms; hooks run at the start of training, of each stage and of each epoch,
and at the end of each stage. State it needs to resume that is not in its weights (memory
banks, a stage's target codes) comes and goes through `training_state`/`load_training_state`.
The trainer gives labels only to a method whose `labels_needed(options)` is true (by default
its class's `needs_labels`; a method whose config picks a supervised or unsupervised variant
answers from its options).

In a distributed run (model.distributed) every process gets the whole batch. `per_row`
computes a function that treats rows independently on this process's share of them and
gathers every row's result, with gradients; `encode` goes through it, and a method whose step
computes per-item outputs without `encode` (DVSH) calls it itself. Whatever a step computes
from those rows is then the same in every process.

A method is registered in model/methods/registry.py and built as `cls(streams, setup)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from model.distributed import World, gather_rows

if TYPE_CHECKING:  # model.config validates methods through the registry: no cycle at run time
    from model.config import TrainConfig

Optimizer = torch.optim.Optimizer
Schedule = torch.optim.lr_scheduler.LRScheduler


@dataclass(frozen=True)
class MethodSetup:
    """What a method is built from, besides its streams."""

    bits: int
    num_labels: int
    multi_label: bool
    #: The method's own config section (model/methods/options.py), e.g. DSMHNConfig.
    options: Any
    #: Epochs, learning rate and weight decay, for the method's stages to use as they see fit.
    train: TrainConfig


@dataclass(frozen=True)
class Stage:
    """One training stage: the parameters it trains, with which optimiser, for how many epochs.

    `optimizer` is given `parameters`; `schedule` (stepped once after every epoch) is given
    that optimiser. Both are built when the stage starts, and loaded from the checkpoint when
    a run resumes within the stage.

    A stage of 0 epochs trains nothing and has no optimiser: what it gives (codes computed in
    closed form, say) comes from `start_stage`/`end_stage`, and its checkpoint is written once
    they are done.
    """

    name: str
    epochs: int
    parameters: list[nn.Parameter]
    optimizer: Callable[[Iterable[nn.Parameter]], Optimizer] | None
    schedule: Callable[[Optimizer], Schedule] | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"stage {self.name!r} has {self.epochs} epochs")
        if self.epochs and self.optimizer is None:
            raise ValueError(f"stage {self.name!r} trains {self.epochs} epochs with no optimizer")
        if not self.epochs and (self.optimizer is not None or self.schedule is not None):
            raise ValueError(f"stage {self.name!r} trains no epochs: it takes no optimizer")


def adam_cosine_stage(
    name: str, epochs: int, parameters: list[nn.Parameter], train: TrainConfig
) -> Stage:
    """A stage of Adam at train.lr (train.weight_decay) annealed by a cosine over its epochs."""
    return Stage(
        name=name,
        epochs=epochs,
        parameters=parameters,
        optimizer=lambda params: torch.optim.Adam(
            params, lr=train.lr, weight_decay=train.weight_decay
        ),
        schedule=lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=epochs
        ),
    )


@dataclass(frozen=True)
class TrainingSet:
    """The training items, for hooks that look at all of them (memory banks, initial codes).

    `inputs` holds every item of the dataset (on the training device); `rows` are the rows
    that are training items, in their position order (a position is what `Batch.positions`
    holds). `labels` are the training items' labels, None for a method that needs none.
    """

    inputs: Mapping[str, Tensor]
    rows: Tensor
    labels: Tensor | None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def inputs_at(self, positions: Tensor) -> dict[str, Tensor]:
        """Every modality's inputs of the training items at `positions`."""
        rows = self.rows[positions]
        return {m: x[rows] for m, x in self.inputs.items()}


@dataclass(frozen=True)
class Batch:
    """One training step's items."""

    #: Modality -> this batch's prepared inputs (row i of each is the same item).
    inputs: dict[str, Tensor]
    #: The items' positions in the training set, 0 .. len(TrainingSet) - 1 (memory-bank rows).
    positions: Tensor
    #: The items' labels; None for a method that needs none.
    labels: Tensor | None
    #: Every training item's labels, by position; None for a method that needs none.
    train_labels: Tensor | None
    #: The stage this step belongs to, and the epoch within it (from 0).
    stage: str
    epoch: int


class Method(nn.Module):
    """Base of every hashing method (see the module docstring for the contract)."""

    #: Whether the trainer gives it labels (an unsupervised method never sees any).
    needs_labels: ClassVar[bool] = True

    @classmethod
    def labels_needed(cls, options: Any) -> bool:
        """Whether this method, configured with its section `options`, trains on labels."""
        return cls.needs_labels

    def __init__(self, streams: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.streams = nn.ModuleDict(dict(streams))
        self._step_world = World()

    @property
    def modalities(self) -> list[str]:
        return list(self.streams)

    def stream(self, modality: str) -> nn.Module:
        """The exportable module mapping `modality`'s prepared input to tanh codes."""
        return self.streams[modality]

    def encode(self, modality: str, x: Tensor) -> Tensor:
        """Continuous (tanh) codes of one modality."""
        return self.per_row(self.stream(modality), x)  # type: ignore[no-any-return]

    def per_row(self, fn: Callable[..., Any], *inputs: Tensor) -> Any:
        """`fn(*inputs)` for an `fn` that treats rows independently; within a distributed
        training step, computed on this process's share of the rows and gathered."""
        return gather_rows(self._step_world, fn, *inputs)

    @contextmanager
    def step_shared_by(self, world: World) -> Iterator[None]:
        """Training steps in which `world`'s processes share the batch's rows (see per_row)."""
        self._step_world = world
        try:
            yield
        finally:
            self._step_world = World()

    def stages(self) -> list[Stage]:
        """The stages it trains, in order (names unique)."""
        raise NotImplementedError

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        """Named loss terms of one batch; "total" is the one minimised."""
        raise NotImplementedError

    def start_training(self, data: TrainingSet) -> None:
        """Called once per run before any state is loaded, on a fresh and on a resumed run."""

    def start_stage(self, stage: str, data: TrainingSet) -> None:
        """Called when a stage begins from its first epoch (not when resumed within it)."""

    def start_epoch(self, stage: str, epoch: int) -> None:
        """Called before every epoch (`epoch` counts within the stage, from 0)."""

    def end_stage(self, stage: str, data: TrainingSet) -> None:
        """Called after a stage's last epoch, before that epoch's checkpoint is written."""

    def training_state(self) -> dict[str, Any]:
        """State needed to resume that is not in `state_dict()` (tensors, nested dicts, lists).

        Whatever `start_stage`/`end_stage` compute for later steps must be in here: a run
        resumed within a stage gets it back from this, not by calling them again.
        """
        return {}

    def load_training_state(self, state: dict[str, Any], device: torch.device) -> None:
        """Take back what `training_state` returned (its tensors onto `device`)."""
