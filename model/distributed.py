"""Data-parallel training over several processes (torchrun's environment, or `--nproc N`).

Every process holds the whole training set and draws the same batches; within each batch a
process runs the streams on its own share of the rows (`gather_rows`), and every process
computes the method's loss on all the rows, gathered with their gradients. The loss, and so
every memory bank, target code and logged term, is then the same in every process as in a
single-process run; DistributedDataParallel averages the gradients. Cross-batch state such as
DSMHN's memory banks is written from every process's codes without being a DDP buffer (which
DDP would overwrite from rank 0 at each step).

What differs from one process: dropout masks (drawn per process) and batch-norm statistics
(each process normalises its own share); the float sums of gradients run in another order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

#: How long a process waits for the others (at the start, at a barrier, in a collective)
#: before it gives up: long enough for what the others wait on rank 0 for (generating
#: synthetic data, an evaluation of a large split, a checkpoint on a slow disk). A process
#: that dies is noticed sooner: `--nproc` (and torchrun) then stop the others.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class World:
    """The processes of one training run; one process alone is a world of size 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (checkpoints, metrics, logs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls) -> World:
        """The world torchrun (or `hashbridge train --nproc`) describes in the environment."""
        try:
            size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError:
            raise ValueError(
                "WORLD_SIZE, RANK and LOCAL_RANK must be integers (set by torchrun)"
            ) from None
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"RANK {rank} is not in a world of WORLD_SIZE {size}")
        return cls(rank=rank, size=size, local_rank=local)

    def device(self, configured: torch.device) -> torch.device:
        """This process's device: its own GPU (cuda:LOCAL_RANK) when training on CUDA."""
        if configured.type == "cuda" and self.distributed:
            return torch.device("cuda", self.local_rank)
        return configured

    def barrier(self) -> None:
        """Wait until every process gets here."""
        if self.distributed:
            dist.barrier()

    def share(self) -> Share:
        """This process's share of work that the processes split (feature extraction)."""
        return Share(self.rank, self.size, self.barrier)


@dataclass(frozen=True)
class Share:
    """The part of a list of jobs one process does; `wait` returns once all have done theirs."""

    rank: int = 0
    size: int = 1
    wait: Callable[[], None] = lambda: None

    def of(self, jobs: Sequence[Any]) -> list[Any]:
        """Every `size`-th job from this process's rank: shares of nearly equal size."""
        return list(jobs[self.rank :: self.size])


ALONE = Share()


@contextmanager
def joined(world: World, device: torch.device) -> Iterator[None]:
    """Be one process of `world` (gloo on CPU, NCCL on GPUs) for the duration."""
    if not world.distributed:
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if name not in os.environ:
            raise ValueError(f"{name} is not set: start the processes with torchrun or --nproc")
    dist.init_process_group(
        backend="nccl" if device.type == "cuda" else "gloo",
        rank=world.rank,
        world_size=world.size,
        timeout=TIMEOUT,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


class _GatherRows(torch.autograd.Function):
    """All processes' rows of a tensor, in rank order; gradients flow back to this one's."""

    @staticmethod
    def forward(ctx: Any, local: Tensor, sizes: list[int], rank: int) -> Tensor:
        width = max(sizes)
        padded = local.new_zeros((width, *local.shape[1:]))
        padded[: len(local)] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        ctx.rows = (sum(sizes[:rank]), sum(sizes[: rank + 1]))
        ctx.world = len(sizes)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        start, stop = ctx.rows
        # Every process computes the same loss from the gathered rows, so the gradient for
        # this process's rows is the same in each. DDP then averages the streams' gradients
        # over the processes: scaling by their number keeps the sum over every process's
        # rows, which is the single-process gradient.
        return grad[start:stop] * ctx.world, None, None


def gather_rows(
    world: World, fn: Callable[..., Tensor | tuple[Tensor, ...]], *inputs: Tensor
) -> Any:
    """`fn(*inputs)` computed on this process's share of the rows, every row's result gathered.

    `fn` must treat rows independently (a stream, an embedding); it returns a tensor or a
    tuple of tensors with one row per input row. With fewer rows than processes every
    process computes all of them (the same result, and the same gradients to average).
    """
    rows = len(inputs[0])
    if not world.distributed or rows < world.size:
        return fn(*inputs)
    sizes = [len(part) for part in torch.arange(rows).tensor_split(world.size)]
    start = sum(sizes[: world.rank])
    local = fn(*(x[start : start + sizes[world.rank]] for x in inputs))
    if isinstance(local, tuple):
        return tuple(_GatherRows.apply(part, sizes, world.rank) for part in local)
    return _GatherRows.apply(local, sizes, world.rank)


def data_parallel(module: nn.Module, world: World) -> nn.Module:
    """`module` wrapped to average its gradients over the processes (itself when alone).

    Parameters that do not train in the current stage should have requires_grad off, so DDP
    neither waits for nor averages them. The graph is static (each stage runs the same loss
    terms every step), so parameters a stage never uses are found once, at its first step.
    """
    if not world.distributed:
        return module
    return nn.parallel.DistributedDataParallel(module, static_graph=True)


@contextmanager
def trains_only(module: nn.Module, parameters: Sequence[nn.Parameter]) -> Iterator[None]:
    """Turn requires_grad off, for the duration, on `module`'s parameters not in `parameters`."""
    keep = {id(p) for p in parameters}
    frozen = [p for p in module.parameters() if p.requires_grad and id(p) not in keep]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
