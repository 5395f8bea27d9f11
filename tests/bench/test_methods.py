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


def _results_file(path: Path, cells: list[dict], command: str, split_seed: int = 0) -> Path:
    """A bench.methods results file holding `cells` (copies of committed result cells)."""
    path.write_text(
        json.dumps(
            {
                "benchmark": "methods",
                "command": command,
                "split_seed": split_seed,
                "cells": cells,
                "environment": {"cpu_count": 2},
            }
        )
    )
    return path


def _committed_cell(method: str) -> dict:
    data = json.loads((REPO / "bench" / "results" / "methods-wikipedia.json").read_text())
    return next(c for c in data["cells"] if c["method"] == method and c["status"] == "result")


def _merge(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.methods", "--merge", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _table(results: Path) -> str:
    """bench/tables.py's Markdown of a results file, as `--write` puts it in the docs."""
    return subprocess.run(
        [sys.executable, "bench/tables.py", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_merge_lays_every_file_result_on_the_full_matrix(tmp_path: Path) -> None:
    dsmhn, ddcmh = _committed_cell("dsmhn"), _committed_cell("ddcmh")
    moved = {**ddcmh, "dataset": "mirflickr25k", "bits": 16}  # another cell of the matrix
    a = _results_file(tmp_path / "a.json", [dsmhn], "python -m bench.methods --datasets wikipedia")
    b = _results_file(tmp_path / "b.json", [moved], "python -m bench.methods --bits 16")
    out = tmp_path / "methods.json"
    done = _merge(a, b, "--out", out, "--charts", tmp_path / "charts")
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert [s["file"] for s in result["merged_from"]] == [str(a), str(b)]
    cells = {(c["method"], c["dataset"], c["bits"]): c for c in result["cells"]}
    expected = {(m, d, b) for d, s in methods.DATASETS.items() for m in METHODS for b in s.bits}
    assert set(cells) == expected and len(result["cells"]) == len(expected)
    got = cells[("dsmhn", "wikipedia", 32)]
    assert got["map"] == dsmhn["map"] and got["source"] == str(a)
    assert got["command"] == "python -m bench.methods --datasets wikipedia"
    assert cells[("ddcmh", "mirflickr25k", 16)]["source"] == str(b)
    assert cells[("dvsh", "wikipedia", 32)]["status"] == "not_applicable"
    empty = cells[("djsrh", "flickr8k", 64)]
    assert empty["status"] == "not_run"
    assert empty["command"] == (
        "python -m bench.methods --methods djsrh --datasets flickr8k --bits 64 --split-seed 0"
    )
    assert [Path(p).name for p in result["charts"]] == ["pr-wikipedia.svg"]
    # The table names the file behind each row, and that file's command.
    table = _table(out)
    row = next(line for line in table.splitlines() if "| wikipedia | 32 | dsmhn |" in line)
    assert row.rstrip().endswith("| 1 |") and f"{dsmhn['map']['image->text']:.3f}" in row
    assert f"2. `{b}`: `python -m bench.methods --bits 16`" in table
    assert "is itself a merge" in _merge(out).stderr


def test_a_cell_trained_again_replaces_the_earlier_file_result(tmp_path: Path) -> None:
    first = _committed_cell("dsmhn")
    again = {**first, "map": {**first["map"], "image->text": 0.5}}
    a = _results_file(tmp_path / "a.json", [first], "old config")
    b = _results_file(tmp_path / "b.json", [again], "new config")
    out = tmp_path / "methods.json"
    assert _merge(a, b, "--out", out).returncode == 0
    cell = next(c for c in json.loads(out.read_text())["cells"] if c.get("source"))
    assert cell["map"]["image->text"] == 0.5 and cell["command"] == "new config"
    assert cell["replaces"] == [str(a)]
    table = _table(out)
    assert "- dsmhn, wikipedia, 32 bits: from 2, a later run; it replaces the result in 1." in table


def test_merge_refuses_what_it_cannot_merge(tmp_path: Path) -> None:
    cell = _committed_cell("dsmhn")
    a = _results_file(tmp_path / "a.json", [cell], "first")
    seeds = _merge(a, _results_file(tmp_path / "c.json", [], "other", split_seed=1))
    assert seeds.returncode != 0 and "different split seeds [0, 1]" in seeds.stderr
    outside = _results_file(tmp_path / "d.json", [{**cell, "dataset": "shapes"}], "quick")
    assert "not in this checkout's matrix" in _merge(outside).stderr
    (tmp_path / "e.json").write_text(json.dumps({"benchmark": "search"}))
    assert "is not a bench.methods results file" in _merge(tmp_path / "e.json").stderr
    assert "cannot read" in _merge(tmp_path / "missing.json").stderr
    picked = _merge(a, "--methods", "dsmhn")
    assert picked.returncode == 2 and "--merge trains nothing: leave out --methods" in picked.stderr
    assert "Traceback" not in seeds.stderr + picked.stderr


def test_a_method_with_its_own_config_for_a_dataset_runs_from_it() -> None:
    """configs/<method>-<dataset>.toml is that method's tuned setting there: the cell uses it
    (DJSRH on Flickr8k once ran on DSMHN's config with DJSRH's defaults, at a third of its
    own config's mAP)."""
    for method in METHODS:
        for dataset, spec in methods.DATASETS.items():
            own = Path("configs") / f"{method}-{Path(spec.config).stem}.toml"
            if (REPO / own).exists():
                cell = methods.cell_settings(method, dataset)
                assert not isinstance(cell, str) and cell.config == str(own), (method, dataset)
