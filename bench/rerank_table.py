"""Collect eval reports into bench/results/rerank-accuracy.json and print the Markdown table.

python -m bench.rerank_table runs/rerank-*/eval.json   (reports of `hashbridge eval`)

Per run and direction: mAP@all of the binary (Hamming), asymmetric (score alone), Hamming with
the score inside ties, and continuous rankings, and whether the asymmetric ranking reaches
binary + half of the continuous-binary gap (issue 20's target).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path("bench/results/rerank-accuracy.json")
KINDS = ("map", "asymmetric_map", "hamming_asymmetric_map", "continuous_map")


def collect(paths: list[Path]) -> list[dict]:
    """One row per (run, direction)."""
    rows = []
    for path in paths:
        report = json.loads(path.read_text())
        for direction in report["map"]:
            row = {"run": report["run"], "bits": report["bits"], "split_seed": report["split_seed"]}
            row["direction"] = direction
            row.update({kind: report[kind][direction] for kind in KINDS})
            row["half_gap_met"] = row["asymmetric_map"] >= (row["map"] + row["continuous_map"]) / 2
            rows.append(row)
    return rows


def render(rows: list[dict]) -> str:
    """The results table in Markdown."""
    lines = [
        "| run | bits | seed | direction | binary | asymmetric | Hamming + score in ties "
        "| continuous | ≥ binary + ½ gap |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {Path(r['run']).name} | {r['bits']} | {r['split_seed']} | {r['direction']} "
            f"| {r['map']:.3f} | {r['asymmetric_map']:.3f} | {r['hamming_asymmetric_map']:.3f} "
            f"| {r['continuous_map']:.3f} | {'yes' if r['half_gap_met'] else 'no'} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    found = collect([Path(p) for p in sys.argv[1:]])
    OUT.write_text(json.dumps({"results": found}, indent=2) + "\n")
    print(render(found))
