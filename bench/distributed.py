"""One process against N: the same config trained by `hashbridge train` and by
`hashbridge train --nproc N`, each evaluated by `hashbridge eval`, side by side.

Both runs use the same feature cache, filled before either is timed (a run that extracts
features would be timed on the backbone, not on training). Wall time is the whole command;
the thread budget is the same for both: one process with T threads, N processes with T / N
each (as torchrun sets OMP_NUM_THREADS).

    python -m bench.distributed --config configs/mirflickr25k.toml --nproc 2 \
        --set 'image.cache_dir="/work/cache/features-bench"' --runs runs/distributed \
        --out bench/results/distributed-mirflickr25k.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import REPO, base_parser, command, emit, environment, log, positive_int


def _hashbridge(args: list[str], threads: int) -> tuple[float, str]:
    """Run `hashbridge ARGS` with `threads` threads a process; its wall seconds and stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(var, None)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "hashbridge.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"hashbridge {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return seconds, done.stdout


def _train_and_eval(
    config: Path, sets: list[str], run: Path, nproc: int, threads: int
) -> dict[str, Any]:
    args = ["train", "--config", str(config), "--out", str(run), "--force"]
    args += [f"--set={s}" for s in sets]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    log(f"training {run} ({nproc} process(es), {threads} thread(s) each)")
    seconds, _ = _hashbridge(args, threads)
    _, out = _hashbridge(["eval", "--run", str(run), "--out", str(run / "eval.json")], threads)
    report = json.loads(out)
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "processes": nproc,
        "threads_each": threads,
        "wall_seconds": round(seconds, 1),
        "train_seconds": round(metrics["seconds"], 1),
        "map": report["map"],
        "run": str(run),
    }


def _quick_config(folder: Path) -> Path:
    """60 generated shapes, a small DSMHN: the whole comparison in seconds (CI)."""
    from model.data.synthetic import write_synthetic_images

    data = write_synthetic_images(folder / "shapes", n=60, seed=0, size=64, query_fraction=0.2)
    config = folder / "quick.toml"
    config.write_text(
        f'bits = 16\n[data]\nkind = "manifest"\npath = "{data}"\n'
        f'[image]\nsize = 64\nhidden = [64]\ncache_dir = "{folder / "cache"}"\n'
        "[text]\nhidden = [64]\n[train]\nepochs = 3\nbatch_size = 16\neval_every = 0\n"
    )
    return config


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, help="the run's TOML config (not with --quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--nproc", type=positive_int, default=2)
    parser.add_argument("--runs", type=Path, help="folder for the two runs (default: a temp)")
    parser.add_argument(
        "--total-threads", type=positive_int, default=os.cpu_count() or 1, metavar="T"
    )
    args = parser.parse_args(argv)
    if (args.config is None) == (not args.quick):
        parser.error("give --config FILE, or --quick")
    with tempfile.TemporaryDirectory() as tmp:
        config = _quick_config(Path(tmp)) if args.quick else args.config
        runs = args.runs or Path(tmp) / "runs"
        # Fill the feature cache (untimed): a one-epoch run extracts whatever it lacks.
        _hashbridge(
            ["train", "--config", str(config), "--out", str(runs / "warm-cache"), "--force"]
            + [f"--set={s}" for s in [*args.set, "train.epochs=1", "train.eval_every=0"]],
            args.total_threads,
        )
        one = _train_and_eval(config, args.set, runs / "one", 1, args.total_threads)
        many_threads = max(1, args.total_threads // args.nproc)
        many = _train_and_eval(config, args.set, runs / "many", args.nproc, many_threads)
    result = {
        "benchmark": "distributed",
        "command": command("bench.distributed"),
        "config": "generated" if args.quick else str(args.config),
        "sets": args.set,
        "one_process": one,
        "processes": many,
        "map_difference": {d: round(many["map"][d] - one["map"][d], 4) for d in one["map"]},
        "wall_ratio": round(many["wall_seconds"] / one["wall_seconds"], 3),
        "environment": environment(args.total_threads),
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
