"""Shared pieces of the benchmark scripts: threads, environment report, timing, JSON output.

Run every benchmark from the repository root as a module (``python -m bench.search``):
``bench/serving.py`` would shadow the standard library's ``http`` package if run as a file.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bundle.fileio import write_bytes
from index.codes import check_bits
from index.errors import CodeError

REPO = Path(__file__).resolve().parents[1]
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
FAISS_DISTS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu")


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a size, a count, a thread number)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def code_bits(text: str) -> int:
    """An argparse type: a code width the index takes (a multiple of 8, 8 to 128)."""
    try:
        return check_bits(int(text))
    except CodeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def base_parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes: --quick, --out, --threads, --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, < 1 min")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="intra-op threads for FAISS and torch (default 1: the CPU is shared)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser


def set_threads(n: int) -> None:
    """Pin FAISS/torch/BLAS thread counts here and in any child process."""
    for var in THREAD_VARS:
        os.environ[var] = str(n)
    if "faiss" in sys.modules:
        sys.modules["faiss"].omp_set_num_threads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def _git_commit() -> str | None:
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+uncommitted changes" if dirty else "")


def environment(threads: int) -> dict[str, Any]:
    """What the figures depend on: CPU, library versions, thread settings, machine load."""
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "faiss": next(filter(None, map(_version, FAISS_DISTS)), None),
        "torch": _version("torch"),
        "threads": threads,
        "thread_env": {var: os.environ.get(var) for var in THREAD_VARS},
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_commit": _git_commit(),
    }
    if "faiss" in sys.modules:
        faiss = sys.modules["faiss"]
        info["faiss_omp_max_threads"] = int(faiss.omp_get_max_threads())
        if hasattr(faiss, "get_num_gpus"):
            info["faiss_gpus"] = int(faiss.get_num_gpus())
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_num_threads"] = int(torch.get_num_threads())
        if torch.cuda.is_available():
            info["torch_cuda"] = torch.version.cuda
    gpus = _gpus()
    if gpus:
        info["gpus"] = gpus
    return info


def _gpus() -> list[str]:
    """NVIDIA GPUs as nvidia-smi names them (name, memory, driver); empty without one."""
    if shutil.which("nvidia-smi") is None:
        return []
    query = "--query-gpu=name,memory.total,driver_version"
    try:
        out = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def command(module: str) -> str:
    """The command line that reproduces this run."""
    return shlex.join(["python", "-m", module, *sys.argv[1:]])


def emit(result: dict[str, Any], out: Path | None) -> None:
    """Print the result as JSON and, if asked, write it atomically to ``out``."""
    result.setdefault("environment", {})["load_average_at_end"] = [
        round(x, 2) for x in os.getloadavg()
    ]
    text = json.dumps(result, indent=2) + "\n"
    sys.stdout.write(text)
    sys.stdout.flush()
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_bytes(out, text.encode())


def log(message: str) -> None:
    """Progress on stderr, so stdout stays pure JSON."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Run fn once; return (seconds, result)."""
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def repeat(fn: Callable[[], Any], *, min_runs: int, max_runs: int, budget_s: float) -> list[float]:
    """Time fn at least ``min_runs`` times, and more up to ``max_runs`` while within budget."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_runs:
        times.append(timed(fn)[0])
        if len(times) >= min_runs and time.perf_counter() - started > budget_s:
            break
    return times


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def latency_summary(seconds: Sequence[float]) -> dict[str, float | int]:
    """Median, p90, p99, mean and max in milliseconds, and the sample count."""
    return {
        "n": len(seconds),
        "median_ms": ms(statistics.median(seconds)),
        "p90_ms": ms(quantile(seconds, 0.90)),
        "p99_ms": ms(quantile(seconds, 0.99)),
        "mean_ms": ms(statistics.fmean(seconds)),
        "max_ms": ms(max(seconds)),
    }


def ms(seconds: float) -> float:
    """Seconds to milliseconds, rounded for the report."""
    return round(seconds * 1000, 4)


def ratio(a: float, b: float) -> float | None:
    """a / b rounded, or None when b is zero."""
    return round(a / b, 3) if b else None


def train_or_reuse(
    config_path: Path, overrides: Sequence[str], run: Path, *, retrain: bool
) -> float | None:
    """Train `run` from a config unless it already holds a finished run (metrics.json).

    Returns the training wall time in seconds, or None when the run was reused. `retrain`
    deletes the run first. A finished run trained with other settings is not reused: that
    would report its figures as this command's, so it exits with what differs.
    """
    from model.checkpoint import load_checkpoint  # torch only for the benchmarks that train
    from model.config import ConfigError, config_from_dict, load_config
    from model.train import train

    try:
        config = load_config(config_path, list(overrides))
    except ConfigError as exc:  # a mistake in --config or --set: one line, as hashbridge says it
        raise SystemExit(f"error: {exc}") from None
    if retrain and run.exists():
        shutil.rmtree(run)
    if (run / "metrics.json").exists():
        trained = config_from_dict(load_checkpoint(run)["config"]).to_dict()
        differ = _settings_that_differ(trained, config.to_dict())
        if differ:
            raise SystemExit(
                f"{run} was trained with other settings ({', '.join(differ)}): pass --retrain "
                "to train it again, or --runs DIR to keep both"
            )
        return None
    log(f"training {run}")
    started = time.perf_counter()
    train(config, run)
    return round(time.perf_counter() - started, 1)


# Where to cache features and how many threads or processes to use: a run trained with other
# values of these still answers the same question, so it is reused.
REUSABLE_SETTINGS = frozenset(
    {"train.threads", "image.cache_dir", "text.cache_dir", "video.cache_dir", "video.workers"}
)


def _settings_that_differ(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted config keys whose values differ between two config dicts (bar REUSABLE_SETTINGS)."""
    out = []
    for key in sorted(set(a) | set(b)):
        name = prefix + key
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _settings_that_differ(x, y, name + ".")
        elif x != y and name not in REUSABLE_SETTINGS:
            out.append(f"{name}: {x!r} there, {y!r} now")
    return out
