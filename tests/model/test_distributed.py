"""Distributed training (gloo, CPU): two processes train as one, resume, export, fail cleanly.

Each process runs the streams on its half of every batch and the loss on all of it, gathered
with gradients (model.distributed): with no dropout, two processes must give the weights one
process gives, up to the order of float sums.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from model.config import config_from_dict
from model.train import train
from tests.support.distributed import ROOT, hashbridge, train_ranks_until
from tests.support.shapes import Shapes, one_thread

#: Each method's tiny config beside the shared part (no dropout: masks are drawn per process).
METHODS: dict[str, dict[str, Any]] = {
    "dsmhn": {},
    "djsrh": {"method": "djsrh"},
    "ddcmh": {
        "method": "ddcmh",
        "ddcmh": {"initial_epochs": 2, "media_epochs": 2, "text_epochs": 2},
    },
    "dvsh": {"method": "dvsh", "text": {"encoder": "recurrent"}, "dvsh": {"dropout": 0.0}},
}


def tiny_config(shapes: Shapes, cache: Path, method: str, epochs: int = 4) -> dict[str, Any]:
    extra = METHODS[method]
    return {
        "bits": 16,
        "method": extra.get("method", "dsmhn"),
        "data": {"kind": "manifest", "path": str(shapes.manifest)},
        "image": {"size": 64, "cache_dir": str(cache), "hidden": [64], "dropout": 0.0},
        "text": {"hidden": [64], "dropout": 0.0, **extra.get("text", {})},
        # 54 training items in batches of 16: the last batch (6) splits 3 + 3.
        "train": {"epochs": epochs, "batch_size": 16, "lr": 3e-3, "eval_every": 0},
        **{k: v for k, v in extra.items() if k not in ("method", "text")},
    }


def toml_value(value: Any) -> str:
    """A scalar, a list or a table as a TOML value (JSON writes the first two alike)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def write_toml(config: dict[str, Any], path: Path) -> Path:
    """A config dict as TOML: its tables as sections, tables within them inline."""
    top = [f"{k} = {toml_value(v)}" for k, v in config.items() if not isinstance(v, dict)]
    sections = [
        f"[{name}]\n" + "\n".join(f"{k} = {toml_value(v)}" for k, v in values.items())
        for name, values in config.items()
        if isinstance(values, dict)
    ]
    path.write_text("\n".join(top) + "\n\n" + "\n\n".join(sections) + "\n")
    return path


def checkpoint(run: Path) -> dict[str, Any]:
    return torch.load(run / "checkpoint.pt", weights_only=False)  # type: ignore[no-any-return]


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(
        float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point()
    )


def train_two(config: dict[str, Any], run: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    toml = write_toml(config, run.parent / f"{run.name}.toml")
    done = hashbridge("train", "--config", str(toml), "--out", str(run), "--nproc", "2", *extra)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def two_process_dsmhn(shapes: Shapes, work: Path) -> tuple[Path, str]:
    """The DSMHN tiny run trained by two processes from an empty feature cache."""
    run = work / "two-dsmhn"
    done = train_two(tiny_config(shapes, work / "fresh-cache", "dsmhn"), run)
    return run, done.stderr


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_processes_train_the_weights_one_process_trains(
    method: str, shapes: Shapes, work: Path, two_process_dsmhn: tuple[Path, str]
) -> None:
    config = tiny_config(shapes, work / "cache", method)
    one = work / f"one-{method}"
    with one_thread():
        train(config_from_dict(config), one)
    two = two_process_dsmhn[0] if method == "dsmhn" else work / f"two-{method}"
    if method != "dsmhn":
        train_two(config, two)
    a, b = checkpoint(one), checkpoint(two)
    assert a["epoch"] == b["epoch"] > 0
    # Without the gathered gradients' scaling (the streams at half the gradient) ~1e-3 apart.
    assert largest_difference(a["model"], b["model"]) < 1e-4
    for name, bank in a["method_state"].get("banks", {}).items():
        # DSMHN's memory banks hold every process's codes, not rank 0's half.
        assert float((bank - b["method_state"]["banks"][name]).abs().max()) < 1e-4
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["processes"] == 2


def test_the_processes_split_the_feature_extraction(two_process_dsmhn: tuple[Path, str]) -> None:
    run, stderr = two_process_dsmhn
    # 60 photos, none cached: the first process extracts 30; the other (which logs warnings
    # only) the rest, into the one cache, which every process then reads whole.
    assert "features for 30 images (0 cached)" in stderr
    assert "for 60 images" not in stderr
    assert stderr.count('"run"') == 0  # the report goes to stdout, once
    assert (run / "checkpoint.pt").exists()


def test_an_interrupted_two_process_run_resumes_as_if_never_stopped(
    shapes: Shapes, work: Path, two_process_dsmhn: tuple[Path, str]
) -> None:
    config = tiny_config(shapes, work / "fresh-cache", "dsmhn")
    stopped = work / "stopped"
    train_ranks_until(config, stopped, epoch=2)
    assert checkpoint(stopped)["epoch"] == 2
    done = hashbridge("train", "--resume", "--out", str(stopped), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    whole, resumed = checkpoint(two_process_dsmhn[0]), checkpoint(stopped)
    assert resumed["epoch"] == 4
    for key, value in whole["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for name, bank in whole["method_state"]["banks"].items():
        assert torch.equal(bank, resumed["method_state"]["banks"][name]), name

    bundle = work / "bundle"
    exported = hashbridge("export", "--run", str(stopped), "--out", str(bundle))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads(exported.stdout)["modalities"] == ["image", "text"]


def test_a_two_process_run_resumes_in_one_process(shapes: Shapes, work: Path) -> None:
    config = tiny_config(shapes, work / "cache", "djsrh")
    stopped = work / "stopped-djsrh"
    train_ranks_until(config, stopped, epoch=2)
    whole = work / "one-djsrh-whole"
    with one_thread():
        train(config_from_dict({}), stopped, resume=True)
        train(config_from_dict(config), whole)
    assert largest_difference(checkpoint(whole)["model"], checkpoint(stopped)["model"]) < 1e-4


def test_a_user_mistake_is_said_once_and_exits_2(shapes: Shapes, work: Path) -> None:
    config = tiny_config(shapes, work / "cache", "dsmhn")
    config["data"]["path"] = str(work / "no-such.csv")
    toml = write_toml(config, work / "mistake.toml")
    done = hashbridge(
        "train", "--config", str(toml), "--out", str(work / "mistake"), "--nproc", "2"
    )
    assert done.returncode == 2
    assert done.stderr.count("hashbridge train: error:") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert not (work / "mistake" / "checkpoint.pt").exists()


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_nproc_must_be_a_number_of_processes(count: str, work: Path) -> None:
    done = hashbridge("train", "--config", "x.toml", "--out", str(work / "n"), "--nproc", count)
    assert done.returncode == 2
    assert "is not a number of processes" in done.stderr


def test_nproc_is_refused_under_torchrun(work: Path) -> None:
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "hashbridge.cli", "train", "--resume", "--out", str(work)]
        + ["--nproc", "2"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "under torchrun, drop it" in done.stderr


def _workers(launcher: int) -> list[int]:
    children = Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split()
    return [int(pid) for pid in children]


def test_a_killed_worker_stops_the_run_and_it_resumes(shapes: Shapes, work: Path) -> None:
    config = tiny_config(shapes, work / "cache", "dsmhn", epochs=150)
    run = work / "killed"
    toml = write_toml(config, work / "killed.toml")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "hashbridge.cli", "train", "--config", str(toml)]
        + ["--out", str(run), "--nproc", "2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():
            assert launcher.poll() is None, launcher.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint in 120 s"
            time.sleep(0.05)
        workers = _workers(launcher.pid)
        assert len(workers) == 2
        os.kill(workers[1], signal.SIGKILL)
        # The launcher stops the other worker rather than leave it waiting for the dead one.
        assert launcher.wait(timeout=60) == 128 + signal.SIGKILL
    finally:
        if launcher.poll() is None:
            launcher.kill()
        launcher.communicate()
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid)
    kept = checkpoint(run)["epoch"]
    assert 0 < kept < 150
    # What was kept resumes: one more run of the rest is not needed to know it loads.
    done = hashbridge("train", "--resume", "--out", str(run), "--nproc", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert checkpoint(run)["epoch"] == 150


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_two_processes_train_on_clips_they_generate_and_split(work: Path) -> None:
    """Synthetic clips generated once (by rank 0), their maps extracted in two halves, the
    (2+1)-D stream (batch norm: each process normalises its share) trained and exported."""
    config = {
        "bits": 16,
        "data": {
            "kind": "synthetic_video",
            "path": str(work / "clips"),
            "modalities": ["video", "text"],
            "generate": {"n": 40, "seed": 0, "size": 64, "frames_per_clip": 4},
        },
        "video": {"size": 64, "frames": 4, "width": 8, "blocks": 1, "hidden": [32]}
        | {"cache_dir": str(work / "maps")},
        "text": {"hidden": [32]},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.01, "eval_every": 2},
    }
    run = work / "video"
    done = train_two(config, run)
    assert "maps for 20 clips (0 cached)" in done.stderr
    final = json.loads(done.stdout)["map"]
    assert {"video->text", "text->video"} <= final.keys()
    exported = hashbridge("export", "--run", str(run), "--out", str(work / "video-bundle"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert json.loads(exported.stdout)["modalities"] == ["text", "video"]
