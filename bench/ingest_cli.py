"""`hashbridge ingest` against bench.serving's bare HTTP loop, on the same images; JSON out.

    python -m bench.ingest_cli --quick
    python -m bench.ingest_cli --out bench/results/ingest-cli.json

One real server (``python -m service``) per bundle. The same JPEGs (bench.serving's: 320x240,
random blocks) are sent in rounds, in alternating order, by

* ``bare_http``: bench.serving's ingest path, one client posting batches of 16 back to back;
* ``cli_cN``: the ``hashbridge ingest FOLDER`` command in a fresh process (interpreter start,
  folder scan, the stored-id lookup, reading the files, its progress and summary included),
  with N requests in flight (``--concurrency``; 1, 2 (the command's default) and 4 here);
* ``library``: the same ingest as a library call with one request in flight, so that
  the command's own per-item cost is seen without the interpreter's start.

Each round stores every image again under a new ``--prefix`` (the bare path sends no client
ids), so every path does the same work. Ratios are bare time / path time (> 1: faster).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    base_parser,
    code_bits,
    command,
    emit,
    environment,
    log,
    positive_int,
    set_threads,
    timed,
)
from bench.serving import jpegs, make_bundle, post_images
from hashbridge.ingest import IngestOptions, ingest
from hashbridge.ingest_sources import collect
from tests.support.service_bundle import API_KEY, REPO, ServerProcess

BATCH = 16  # bench.serving's image batch


def bare_http(client: httpx.Client, files: list[bytes]) -> None:
    """bench.serving's loop: one client, batches of BATCH, back to back."""
    for start in range(0, len(files), BATCH):
        post_images(client, files[start : start + BATCH])


def cli(url: str, folder: Path, prefix: str, concurrency: int) -> str:
    """The real command in a fresh interpreter; its summary line."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HASHBRIDGE_API_KEY": API_KEY}
    argv = [sys.executable, "-m", "hashbridge.cli", "ingest", str(folder), "--url", url]
    argv += ["--batch", str(BATCH), "--concurrency", str(concurrency), "--prefix", prefix]
    run = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"hashbridge ingest failed ({run.returncode}): {run.stderr}")
    return run.stdout.splitlines()[0]


def library(url: str, folder: Path, prefix: str) -> None:
    options = IngestOptions(url=url, api_key=API_KEY, batch_items=BATCH, concurrency=1)
    report = ingest(collect([folder], prefix), options)
    if not report.ok:
        raise RuntimeError("\n".join(report.summary_lines()))


def run_bundle(kind: str, root: Path, n_images: int, rounds: int, args: Any) -> dict[str, Any]:
    """Time each path on one bundle's server."""
    log(f"{kind}: building the bundle")
    bundle_dir = make_bundle(kind, root, args.bits, args.seed)
    files = jpegs(n_images, args.seed)
    folder = root / f"{kind}-images"
    folder.mkdir()
    for i, data in enumerate(files):
        (folder / f"{i:04d}.jpg").write_bytes(data)
    with ServerProcess(bundle_dir, root / f"{kind}-data", root / f"{kind}-server.log") as server:
        server.wait_ready(180)
        url = server.url
        with httpx.Client(base_url=url, timeout=300) as client:
            bare_http(client, files[:BATCH])  # warm-up of both ends
            library(url, folder, "warm/")
            paths: dict[str, Any] = {"bare_http": lambda r: bare_http(client, files)}
            for n in args.concurrency:
                paths[f"cli_c{n}"] = lambda r, n=n: cli(url, folder, f"c{n}-{r}/", n)
            paths["library"] = lambda r: library(url, folder, f"lib{r}/")
            seconds: dict[str, list[float]] = {name: [] for name in paths}
            for r in range(rounds):
                order = list(paths) if r % 2 == 0 else list(reversed(paths))
                for name in order:
                    elapsed, _ = timed(lambda name=name, r=r: paths[name](r))
                    seconds[name].append(elapsed)
                    log(f"{kind} round {r}: {name} {n_images / elapsed:.1f} images/s")
        server.stop()
    rates = {name: n_images * len(s) / sum(s) for name, s in seconds.items()}
    return {
        "bundle": kind,
        "images": n_images,
        "rounds": rounds,
        "batch": BATCH,
        "items_per_s": {name: round(rate, 1) for name, rate in rates.items()},
        "seconds_per_round": {name: [round(x, 2) for x in s] for name, s in seconds.items()},
        # > 1: faster than the bare loop; the target is within 15% (>= 0.85).
        "throughput_vs_bare_http": {
            name: round(rate / rates["bare_http"], 3) for name, rate in rates.items()
        },
    }


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", nargs="+", choices=("lite0", "tiny"), default=None)
    parser.add_argument("--bits", type=code_bits, default=64)
    parser.add_argument(
        "--images", type=positive_int, help="images per round (default 320; quick 48)"
    )
    parser.add_argument("--rounds", type=positive_int, help="rounds (default 3; quick 1)")
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        nargs="+",
        default=[1, 2, 4],
        help="requests in flight of each command run (default 1 2 4; the command's own is 2)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    env = environment(args.threads)
    n_images = args.images or (48 if args.quick else 320)
    rounds = args.rounds or (1 if args.quick else 3)
    kinds = args.bundles or (["tiny"] if args.quick else ["lite0", "tiny"])
    with tempfile.TemporaryDirectory(prefix="bench-ingest-cli-") as tmp:
        rows = [run_bundle(kind, Path(tmp), n_images, rounds, args) for kind in kinds]
    emit(
        {
            "benchmark": "ingest-cli",
            "command": command("bench.ingest_cli"),
            "mode": "quick" if args.quick else "normal",
            "environment": env,
            "settings": {"bits": args.bits, "seed": args.seed, "batch": BATCH},
            "notes": {
                "paths": "bare_http: bench.serving's one-client loop; cli_cN: `hashbridge "
                "ingest FOLDER --concurrency N` in a fresh process; library: "
                "hashbridge.ingest.ingest in this process, one request in flight",
                "ratio": "throughput_vs_bare_http = items/s of the path / items/s of bare_http",
            },
            "results": rows,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
