"""Decode many clips in worker processes, in order, for feature extraction and benchmarks.

Workers come from a fork server, never from forking the caller: a process that has used
PyAV holds FFmpeg worker threads whose locks a forked child would inherit half-taken (its
first garbage collection of a frame then waits forever). This module imports no torch, so
workers start quickly.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from bundle.clips import ClipError, decode_clip

#: (path, frames, size, clips)
Job = tuple[str, int, int, int]


def decode_job(job: Job) -> np.ndarray | ClipError:
    """Decoded uint8 (clips, frames, 3, size, size), or why the clip cannot be used."""
    path, frames, size, clips = job
    try:
        return decode_clip(path, frames=frames, size=size, clips=clips)
    except ClipError as exc:  # returned, not raised: one bad clip must not end the pool's map
        return exc


def decode_clips(
    paths: Sequence[Path], *, frames: int, size: int, clips: int, workers: int
) -> Iterator[tuple[Path, np.ndarray | ClipError]]:
    """(path, pixels or the error) for every path, in order; `workers` <= 1 decodes here."""
    jobs = [(str(p), frames, size, clips) for p in paths]
    if workers <= 1:
        for path, job in zip(paths, jobs, strict=True):
            yield path, decode_job(job)
        return
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            yield from zip(paths, pool.map(decode_job, jobs, chunksize=2), strict=True)
    except BrokenProcessPool as exc:
        raise RuntimeError(
            "a clip decoding process died. Worker processes re-import the main module: a "
            "script that starts training must do so under `if __name__ == '__main__':`. "
            "Otherwise set video.workers = 1 to decode in this process"
        ) from exc
