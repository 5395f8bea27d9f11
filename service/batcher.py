"""Micro-batching: concurrent encode requests for one encoder are gathered into one call.

Each request's items go on a queue; a worker takes what is queued, waits up to the
window for more (until ``max_items``), runs the encoder once in the thread pool and
hands each request its rows back.

The worker waits only while some request has announced items it is still preparing
(``expect``): a lone request is encoded at once instead of sitting out the window, and
the window still gathers requests that arrive together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from service.encoders import Encoder

log = logging.getLogger(__name__)


#: Codes (n, bits // 8) and, when the encoder gives them, real values (n, bits).
Coded = tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32] | None]


@dataclass
class _Job:
    batch: npt.NDArray[Any]
    future: asyncio.Future[Coded]


class MicroBatcher:
    """Gathers encode jobs for one encoder; start() in the serving loop, stop() at shutdown."""

    def __init__(
        self,
        encoder: Encoder,
        pool: Executor,
        *,
        max_items: int,
        window_s: float,
        observe: Callable[[str, float, int], None] | None = None,
        collate: Callable[[list[npt.NDArray[Any]]], npt.NDArray[Any]] = np.concatenate,
    ) -> None:
        self.encoder = encoder
        #: Joins the gathered jobs' batches (the input kind's: word ids pad to the widest).
        self.collate = collate
        self.max_items = max_items
        self.window_s = window_s
        self._pool = pool
        self._observe = observe
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._expected = 0
        self._arrived = asyncio.Event()

    @contextmanager
    def expect(self) -> Iterator[Callable[[], None]]:
        """Announce a job being prepared (decoded, vectorised) for this encoder.

        Yields ``submitted``, to call right before that job's ``encode``; leaving the
        block without it (the request failed) withdraws the announcement too.
        """
        pending = True

        def submitted() -> None:
            nonlocal pending
            if pending:
                pending = False
                self._expected -= 1

        self._expected += 1
        try:
            yield submitted
        finally:
            submitted()
            self._arrived.set()

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish queued jobs, then stop the worker."""
        if self._task is not None:
            self._queue.put_nowait(None)
            self._arrived.set()
            await self._task
            self._task = None

    async def encode(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """Encode a batch (possibly together with others); returns its codes in order."""
        return (await self.encode_with_values(batch))[0]

    async def encode_with_values(self, batch: npt.NDArray[Any]) -> Coded:
        """Codes of a batch in order, with their real values where the encoder gives them."""
        if self._task is None:
            raise RuntimeError("MicroBatcher.encode called before start()")
        loop = asyncio.get_running_loop()
        futures = []
        for s in range(0, batch.shape[0], self.max_items):
            future: asyncio.Future[Coded] = loop.create_future()
            self._queue.put_nowait(_Job(batch[s : s + self.max_items], future))
            self._arrived.set()
            futures.append(future)
        parts = await asyncio.gather(*futures)
        if not parts:
            return np.empty((0, self.encoder.bits // 8), np.uint8), None
        values = [v for _, v in parts if v is not None]
        return (
            np.concatenate([c for c, _ in parts]),
            np.concatenate(values) if len(values) == len(parts) else None,
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping:
            first = await self._queue.get()
            if first is None:
                return
            jobs, n = [first], len(first.batch)
            deadline = loop.time() + self.window_s
            while n < self.max_items:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0 or not self._expected:
                        break  # nothing announced is on its way: encode now
                    self._arrived.clear()
                    try:
                        # Wake on a new job, or when an announced job is withdrawn.
                        await asyncio.wait_for(self._arrived.wait(), remaining)
                    except TimeoutError:
                        break
                    continue
                if job is None:
                    stopping = True
                    break
                if n + len(job.batch) > self.max_items:
                    # Keep batches bounded: this job opens the next batch instead.
                    await self._run_batch(jobs)
                    jobs, n = [job], 0
                else:
                    jobs.append(job)
                n += len(job.batch)
            await self._run_batch(jobs)

    async def _run_batch(self, jobs: list[_Job]) -> None:
        live = [j for j in jobs if not j.future.done()]
        if not live:
            return
        batch = self.collate([j.batch for j in live])
        start = time.perf_counter()
        try:
            codes, values = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._encode, batch
            )
        except Exception as exc:  # handed to every waiting request, which maps it
            for j in live:
                if not j.future.done():
                    j.future.set_exception(exc)
            return
        if self._observe is not None:
            self._observe(self.encoder.modality, time.perf_counter() - start, len(batch))
        offset = 0
        for j in live:
            if not j.future.done():
                rows = slice(offset, offset + len(j.batch))
                j.future.set_result((codes[rows], None if values is None else values[rows]))
            offset += len(j.batch)

    def _encode(self, batch: npt.NDArray[Any]) -> Coded:
        with_values = getattr(self.encoder, "encode_with_values", None)
        if with_values is None:  # an Encoder that gives bits only
            return self.encoder.encode(batch), None
        coded: Coded = with_values(batch)
        return coded
