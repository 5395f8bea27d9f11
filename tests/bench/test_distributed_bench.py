"""bench.distributed: one process against two on generated data, both through the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.tables import render

REPO = Path(__file__).resolve().parents[2]


def test_quick_run_trains_one_and_two_processes_and_renders(tmp_path: Path) -> None:
    out = tmp_path / "distributed.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.distributed", "--quick", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    one, two = result["one_process"], result["processes"]
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["threads_each"] == 2 * two["threads_each"] or two["threads_each"] == 1
    assert one["map"].keys() == two["map"].keys() >= {"image->text", "text->image"}
    for row in (one, two):
        assert all(0 < v <= 1 and math.isfinite(v) for v in row["map"].values())
        assert row["wall_seconds"] >= row["train_seconds"] > 0
    for d, diff in result["map_difference"].items():
        assert diff == round(two["map"][d] - one["map"][d], 4)
    table = render(out)
    assert "| 2 |" in table and "wall time" in table
