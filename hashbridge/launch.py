"""`hashbridge train --nproc N`: one training run as N processes on this machine.

The same as `torchrun --standalone --nproc_per_node N -m hashbridge.cli train ...`, without
torchrun's report of a failed worker as a traceback: each process runs the same command with
torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...), and when one fails the others are
stopped and its exit status is the command's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence


def without_option(argv: Sequence[str], option: str) -> list[str]:
    """`argv` less `option` and its value (`--nproc 2` or `--nproc=2`)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for the processes' rendezvous)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def worker_environment(rank: int, size: int, port: int) -> dict[str, str]:
    """The environment torchrun gives worker `rank` of `size` on one machine."""
    env = dict(os.environ)
    env.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        WORLD_SIZE=str(size),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(size),
    )
    # As torchrun does: N processes of all-cores thread pools would fight over the cores.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // size)))
    return env


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run `hashbridge <argv>` as `nproc` processes of one run; the first failure's status."""
    port = free_port()
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "hashbridge.cli", *argv],
            env=worker_environment(rank, nproc, port),
        )
        for rank in range(nproc)
    ]
    try:
        return _wait(workers)
    except KeyboardInterrupt:
        # Ctrl-C reached every worker too: let them finish keeping their last checkpoint.
        for worker in workers:
            worker.wait()
        return 130
    finally:
        _stop(workers)


def _wait(workers: list[subprocess.Popen[bytes]]) -> int:
    """0 once every worker succeeded; the status of the first that failed, at once."""
    while True:
        codes = [worker.poll() for worker in workers]
        failed = [code for code in codes if code not in (None, 0)]
        if failed:
            # The others would wait for it in their next collective until the timeout.
            return failed[0] if failed[0] > 0 else 128 - failed[0]
        if all(code == 0 for code in codes):
            return 0
        time.sleep(0.1)


def _stop(workers: list[subprocess.Popen[bytes]]) -> None:
    """Stop the workers still running: SIGTERM, then SIGKILL after 10 s."""
    running = [worker for worker in workers if worker.poll() is None]
    for worker in running:
        worker.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for worker in running:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
