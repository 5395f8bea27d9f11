"""Text ingestion from several clients at once, against the bare encoder; JSON out.

    python -m bench.ingest_clients --quick
    python -m bench.ingest_clients --out bench/results/ingest-clients.json

bench.serving ingests with one client, one request at a time, so the server waits while
the client builds the next request and reads the answer. A bulk loader sends several
requests at once: this starts the real server (``python -m service``, default settings:
2 workers of one thread each) and posts batches of texts from 1, 2 and 4 client processes
started together. ms_per_item is the wall time from the common start to the last answer
over the items sent; overhead_ratio = (ms_per_item - bare) / bare, where bare is
bench.serving's in-process path (vectorise + TorchScript encode, one thread) on the same
texts. server_cpu_ms_per_item is the server process's CPU time (user + system) per item.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    base_parser,
    code_bits,
    command,
    emit,
    environment,
    log,
    ms,
    positive_int,
    set_threads,
)
from bench.serving import DEFAULTS, bare_texts, make_bundle, post_texts, texts
from service.encoders import Bundle, load_bundle
from tests.support.service_bundle import ServerProcess

CLIENTS = (1, 2, 4)


def client(url: str, batches: list[list[str]], ready: Any, start: Any, done: Any) -> None:
    """One client process: connect, wait for the common start, post its batches in turn."""
    with httpx.Client(base_url=url, timeout=300) as http:
        http.get("/healthz")
        ready.put(True)
        start.wait()
        for batch in batches:
            post_texts(http, batch)
    done.put(len(batches))


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bare_seconds(bundle: Bundle, batches: list[list[str]]) -> float:
    """In-process vectorise + encode time of the batches."""
    return sum(sum(bare_texts(bundle, b)) for b in batches)


def ingest_with(
    url: str, pid: int, batches: list[list[str]], clients: int
) -> tuple[float, float | None]:
    """Post the batches from ``clients`` processes at once; (wall s, server CPU s)."""
    ctx = mp.get_context("spawn")  # no fork of a process that holds torch's threads
    ready, start, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=client, args=(url, batches[i::clients], ready, start, done))
        for i in range(clients)
    ]
    for p in procs:
        p.start()
    cpu0 = process_cpu_seconds(pid)
    try:
        # A client that dies (a failed request, a failed import) never says it is ready or
        # done: stop at once with its exit code instead of waiting out the timeouts.
        for _ in procs:
            _wait_for_clients(lambda: ready.get(timeout=1), procs)
        start.set()
        t0 = time.perf_counter()
        posted = sum(_wait_for_clients(lambda: done.get(timeout=1), procs) for _ in procs)
        wall = time.perf_counter() - t0
    except BaseException:
        for p in procs:
            p.kill()  # the others would wait for the start for ever
        raise
    finally:
        for p in procs:
            p.join(30)
    cpu1 = process_cpu_seconds(pid)
    if posted != len(batches) or any(p.exitcode != 0 for p in procs):
        raise RuntimeError(f"clients posted {posted} of {len(batches)} batches")
    return wall, (cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None)


def _wait_for_clients(step: Any, procs: list[Any], limit_s: float = 600) -> Any:
    """Retry ``step`` (which times out after 1 s) until it returns; fail if a client died."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return step()
        except queue.Empty:
            failed = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            if failed:
                raise RuntimeError(f"a client process failed (exit code {failed[0]})") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"clients did not finish within {limit_s:.0f} s") from None


def run_bundle(kind: str, root: Path, args: Any, n_batches: int, per: int) -> dict[str, Any]:
    """Start a server over one bundle; bare and HTTP ingestion at each client count."""
    rng = np.random.default_rng(args.seed)
    bundle_dir = make_bundle(kind, root, args.bits, args.seed)
    bundle = load_bundle(bundle_dir)
    rows = []
    with ServerProcess(
        bundle_dir,
        root / f"{kind}-data",
        root / f"{kind}-server.log",
        HASHBRIDGE_BATCH_WINDOW_MS=str(DEFAULTS["batch_window_ms"]),
        HASHBRIDGE_THUMBNAILS="false",
    ) as server:
        server.wait_ready(180)
        with httpx.Client(base_url=server.url, timeout=300) as http:
            warm = texts(bundle, per, rng)
            bare_texts(bundle, warm)
            post_texts(http, warm)
        for clients in args.clients:
            batches = [texts(bundle, per, rng) for _ in range(n_batches)]
            items = n_batches * per
            # Bare before and after, so drifting load on the shared CPU weighs on both sides.
            before = bare_seconds(bundle, batches)
            wall, cpu = ingest_with(server.url, server.proc.pid, batches, clients)
            bare = (before + bare_seconds(bundle, batches)) / 2
            row = {
                "clients": clients,
                "items": items,
                "texts_per_request": per,
                "items_per_s": round(items / wall, 1),
                "ms_per_item": ms(wall / items),
                "bare_ms_per_item": ms(bare / items),
                "overhead_ratio": round((wall - bare) / bare, 3),
                "server_cpu_ms_per_item": ms(cpu / items) if cpu is not None else None,
            }
            log(f"{kind}: {row}")
            rows.append(row)
    return {"bundle": kind, "runs": rows}


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundles", nargs="+", choices=("lite0", "tiny"), default=["lite0", "tiny"]
    )
    parser.add_argument("--bits", type=code_bits, default=64)
    parser.add_argument("--clients", type=positive_int, nargs="+", default=list(CLIENTS))
    parser.add_argument(
        "--text-batch", type=positive_int, default=256, help="texts per request (default 256)"
    )
    args = parser.parse_args()
    if not 1 <= args.text_batch <= DEFAULTS["max_batch_items"]:
        parser.error(f"--text-batch must be 1 to {DEFAULTS['max_batch_items']}")
    set_threads(args.threads)
    env = environment(args.threads)
    n_batches = 8 if args.quick else 64
    with tempfile.TemporaryDirectory(prefix="bench-clients-") as tmp:
        rows = [run_bundle(k, Path(tmp), args, n_batches, args.text_batch) for k in args.bundles]
    result = {
        "benchmark": "ingest_clients",
        "command": command("bench.ingest_clients"),
        "mode": "quick" if args.quick else "normal",
        "environment": env,
        "settings": {
            "bits": args.bits,
            "seed": args.seed,
            "batches_per_run": n_batches,
            "texts_per_request": args.text_batch,
            "server": {k: DEFAULTS[k] for k in ("workers", "worker_threads", "batch_window_ms")},
        },
        "notes": {
            "baseline": "bare: the bundle's vocabulary + TorchScript text encoder in this "
            "process, one thread, on the same texts, timed before and after each HTTP run",
            "http": "python -m service on loopback with default settings (thumbnails off: "
            "texts have none); each client is its own process with one httpx client posting "
            "its share of the batches one after another; all start together",
            "bundles": "as bench.serving (lite0: the 1,386-token bag-of-words text encoder of "
            "the untrained EfficientNet-Lite0 bundle; tiny: a 40-word linear encoder)",
            "machine": "clients, server and other users' jobs share the same CPUs",
        },
        "summary": {
            row["bundle"]: {
                str(r["clients"]): {
                    "overhead_ratio": r["overhead_ratio"],
                    "items_per_s": r["items_per_s"],
                }
                for r in row["runs"]
            }
            for row in rows
        },
        "results": rows,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
