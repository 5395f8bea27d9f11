"""bench.methods, the comparison harness: its quick run, and the matrix it would run in full."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

from bench import methods
from model.methods.registry import METHODS

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_has_every_registered_method_and_finite_maps(tmp_path: Path) -> None:
    out = tmp_path / "methods.json"
    charts = tmp_path / "charts"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.methods",
            "--quick",
            "--out",
            str(out),
            "--charts",
            str(charts),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["benchmark"] == "methods"
    assert result["methods"] == list(METHODS)
    assert {c["method"] for c in result["cells"]} == set(METHODS)
    for cell in result["cells"]:
        assert cell["status"] in ("result", "not_applicable"), cell
        if cell["status"] == "not_applicable":
            assert cell["reason"]
            continue
        assert set(cell["map"]) == {"image->text", "text->image", "image->image", "text->text"}
        assert all(math.isfinite(v) and 0 <= v <= 1 for v in cell["map"].values()), cell
        curve = cell["pr_curve"]["image->text"]
        assert len(curve["precision"]) == len(curve["recall"]) > 1
        assert cell["reused"] is False
    assert [Path(p).name for p in result["charts"]] == ["pr-shapes.svg"]
    assert (charts / "pr-shapes.svg").read_text().lstrip().startswith("<?xml")


def test_cells_not_picked_are_not_run_with_the_command_that_fills_them(tmp_path: Path) -> None:
    args = methods.argparse.Namespace(
        methods=["dsmhn"],
        datasets=[],
        bits=[],
        split_seed=0,
        data_root=None,
        set=["x=1"],
        method_set=["djsrh:train.epochs=8"],
        runs=[tmp_path],
        retrain=False,
    )
    spec = methods.DATASETS["wikipedia"]
    cell = methods.run_cell("djsrh", "wikipedia", 32, spec, args, [])
    assert cell["status"] == "not_run"
    assert cell["command"] == (
        "python -m bench.methods --methods djsrh --datasets wikipedia --bits 32 --split-seed 0 "
        f"--set x=1 --method-set djsrh:train.epochs=8 --runs {tmp_path}"
    )
    assert methods.run_cell("dvsh", "wikipedia", 32, spec, args, [])["status"] == "not_applicable"


def test_every_method_of_a_dataset_draws_the_same_split() -> None:
    """A cell's own config file (a peer method's) has its dataset's [data] section and seeds."""
    for (method, dataset), cell in methods.CELLS.items():
        if isinstance(cell, str) or cell.config is None:
            continue
        own = tomllib.loads((REPO / cell.config).read_text())
        base = tomllib.loads((REPO / methods.DATASETS[dataset].config).read_text())
        assert own["method"] == method
        for key in ("data", "split_seed", "seed"):
            assert own.get(key) == base.get(key), f"{cell.config}: {key}"


def test_runs_are_named_as_bench_accuracy_names_them() -> None:
    config = Path("configs/mirflickr25k.toml")
    assert methods.run_name(config, "dsmhn", True, 32, 0) == "mirflickr25k-32b-s0"
    assert methods.run_name(config, "djsrh", False, 16, 7) == "djsrh-mirflickr25k-16b-s7"
