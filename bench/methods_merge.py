"""One comparison table from several `bench.methods` results files.

    python -m bench.methods --merge bench/results/methods-*.json \
        --out bench/results/methods.json --charts docs

The cells of a large matrix are trained in several calls (a dataset, a code length at a
time, on whichever machine was free). Merging takes every cell with a result from the files
given and lays them out on the full matrix; each kept cell names the file it came from and
that file's command, which reproduces it. A cell in several files is taken from the last
one given (list them oldest first) and names the files it replaced. A cell no file has a
result for is recorded as not run with the one command that fills it. Nothing is trained
or evaluated here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Key = tuple[str, str, int]


class MergeError(SystemExit):
    """Files that cannot be merged: the message says which and why."""


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise MergeError(f"--merge: cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("benchmark") != "methods":
        raise MergeError(f"--merge: {path} is not a bench.methods results file")
    if "merged_from" in data:
        raise MergeError(f"--merge: {path} is itself a merge; give the files it was made from")
    return data


def collect(
    paths: Sequence[Path],
) -> tuple[list[dict[str, Any]], dict[Key, dict[str, Any]], int]:
    """The sources (file, command, environment), every cell with a result by key, and the
    split seed they share. Where files hold a result for the same cell, the last one given
    is kept."""
    if not paths:
        raise MergeError("--merge: give at least one results file")
    sources: list[dict[str, Any]] = []
    cells: dict[Key, dict[str, Any]] = {}
    seeds = set()
    for path in paths:
        data = _load(path)
        seeds.add(data["split_seed"])
        sources.append(
            {"file": str(path), "command": data["command"], "environment": data.get("environment")}
        )
        for cell in data["cells"]:
            if cell["status"] != "result":
                continue
            key = (cell["method"], cell["dataset"], cell["bits"])
            # A later file's result replaces an earlier one's (a cell trained again after a
            # config changed), and the cell says which files it replaced.
            earlier = cells.get(key)
            cells[key] = {
                **cell,
                "source": str(path),
                "command": data["command"],
                "replaces": [*earlier["replaces"], earlier["source"]] if earlier else [],
            }
    if len(seeds) > 1:
        raise MergeError(f"--merge: the files were run on different split seeds {sorted(seeds)}")
    return sources, cells, seeds.pop()


def merge(
    paths: Sequence[Path],
    matrix: Sequence[tuple[str, str, int]],
    not_applicable: dict[Key, str],
    fill_command: Callable[[str, str, int, int], str],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Every cell of `matrix` (method, dataset, bits), from the files where they have one;
    a cell none has gets `fill_command(method, dataset, bits, split_seed)`.

    Returns the sources, the cells in matrix order, and the split seed. A result for a cell
    outside the matrix (a dataset or method this checkout does not have) is refused."""
    sources, found, seed = collect(paths)
    outside = sorted(set(found) - set(matrix))
    if outside:
        method, dataset, bits = outside[0]
        raise MergeError(
            f"--merge: {found[outside[0]]['source']} has {method} on {dataset} at {bits} bits, "
            "which is not in this checkout's matrix (bench/methods.py DATASETS, METHODS)"
        )
    cells = []
    for key in matrix:
        method, dataset, bits = key
        head = {"method": method, "dataset": dataset, "bits": bits}
        if key in not_applicable:
            cells.append({**head, "status": "not_applicable", "reason": not_applicable[key]})
        elif key in found:
            cells.append(found[key])
        else:
            command = fill_command(method, dataset, bits, seed)
            cells.append({**head, "status": "not_run", "command": command})
    return sources, cells, seed
