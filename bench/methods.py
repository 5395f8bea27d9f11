"""Train and evaluate every registered method on every dataset, same splits, same metric code.

    python -m bench.methods --data-root /work/shared/datasets --out bench/results/methods.json \
        --charts docs

The matrix is (method, dataset, bits): every method of model.methods.registry.METHODS, on
the datasets of DATASETS at their code lengths. A cell is the dataset's config file with the
method's settings on top (CELLS), so every method of a dataset draws the same split; a cell
the method cannot serve holds the reason instead. `--methods/--datasets/--bits` pick the
cells to run; the rest are recorded as not run, with the command that fills them. A cell's
run is reused wherever one of the `--runs` folders holds it finished, and refused (as
`bench.accuracy` refuses) when it was trained with other settings; otherwise it is trained
in the first folder. Runs are named as `bench.accuracy` names them, `<config>-<bits>b-s<seed>`,
so either script reuses the other's. Evaluations are written under the first folder, never
into a reused run. `--quick` runs every method on a tiny generated dataset in seconds (CI).
`--merge FILE...` trains nothing: it lays the results of earlier calls out on the full
matrix, each cell naming the file and command it came from (bench/methods_merge.py).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, code_bits, emit, environment, log, train_or_reuse

#: Cross-modal directions first: the ones the table and the charts show.
CROSS = ("image->text", "text->image", "video->text", "text->video")


@dataclass(frozen=True)
class Dataset:
    """One column group of the matrix: a config file (DSMHN's), its code lengths, its inputs."""

    config: str
    bits: tuple[int, ...]
    inputs: str  # what the streams read, for the docs
    chart_bits: int = 32  # the code length its precision-recall chart shows
    #: Scored by group too (a photo's own captions are its relevant items: mAP, Recall@10).
    by_group: bool = False


@dataclass(frozen=True)
class Cell:
    """How a method runs on a dataset: another config file (same [data] section, checked by
    the tests) or the dataset's own, and `--set` overrides on top."""

    config: str | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)


DATASETS: dict[str, Dataset] = {
    "mirflickr25k": Dataset("configs/mirflickr25k.toml", (16, 32, 64), "images, tag bags"),
    "wikipedia": Dataset("configs/wikipedia.toml", (32,), "SIFT and LDA feature vectors"),
    "flickr8k": Dataset(
        "configs/flickr8k.toml", (32, 64), "images, captions (bag of words)", by_group=True
    ),
    "synthetic-video": Dataset(
        "configs/synthetic-video.toml", (32,), "clips through the (2+1)-D stream, captions"
    ),
}

#: The tiny dataset of --quick (model/data/synthetic.py's shapes), written to a temp folder.
QUICK = Dataset("", (16,), "generated shapes, captions")
QUICK_SETTINGS = (
    "image.size=64",
    "image.hidden=[64]",
    "image.dropout=0.0",
    "text.hidden=[64]",
    "text.dropout=0.0",
    "train.epochs=2",
    "train.batch_size=32",
    "train.eval_every=0",
    "train.threads=1",
    'djsrh.optimizer="adam"',
    "ddcmh.initial_epochs=1",
    "ddcmh.media_epochs=1",
    "ddcmh.text_epochs=1",
    "eval.top_r=50",
)

_CLIPS = "DVSH pairs an image stream with sentences: it has no video side"
_TOPICS = "its text is LDA topic vectors, not sentences: DVSH's text side is a sentence model"

#: (method, dataset) -> how that method runs there, or why it cannot. A registered method
#: with no entry runs as the dataset's config with `method` set and its own section's
#: defaults; an entry for a method that is not registered is not used.
CELLS: dict[tuple[str, str], Cell | str] = {
    ("djsrh", "mirflickr25k"): Cell("configs/djsrh-mirflickr25k.toml"),
    ("ddcmh", "mirflickr25k"): Cell("configs/ddcmh-mirflickr25k.toml"),
    # DVSH reads a photo's tags in order as its sentence (configs/dvsh-mirflickr25k.toml).
    ("dvsh", "mirflickr25k"): Cell("configs/dvsh-mirflickr25k.toml"),
    ("djsrh", "flickr8k"): Cell("configs/djsrh-flickr8k.toml"),
    ("djsrh", "synthetic-video"): Cell("configs/djsrh-synthetic-video.toml"),
    ("dvsh", "flickr8k"): Cell("configs/dvsh-flickr8k.toml"),
    ("dvsh", "wikipedia"): _TOPICS,
    ("dvsh", "synthetic-video"): _CLIPS,
    ("dvsh", "shapes"): Cell(None, ('method="dvsh"', 'text.encoder="recurrent"')),
}


def cell_settings(method: str, dataset: str) -> Cell | str:
    """The cell of `method` on `dataset`: its config and overrides, or a not-applicable reason."""
    entry = CELLS.get((method, dataset))
    if isinstance(entry, str):
        return entry
    if entry is not None and entry.config is not None:
        return entry
    extra = entry.overrides if entry is not None else ()
    return Cell(None, (f'method="{method}"', *extra) if method != "dsmhn" else extra)


def run_name(config: Path, method: str, own_config: bool, bits: int, seed: int) -> str:
    """`<config>-<bits>b-s<seed>` as bench.accuracy names runs; a method run from another
    method's config gets its name in front."""
    stem = config.stem if own_config else f"{method}-{config.stem}"
    return f"{stem}-{bits}b-s{seed}"


def _rounded(values: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 4) for k, v in values.items()}


def _summary(report: dict[str, Any], run: Path) -> dict[str, Any]:
    """What a cell keeps of an evaluation: mAP@all every direction (binary, continuous), the
    report by group (mAP, Recall@K), and the binary precision-recall curves of the cross-modal
    directions."""
    out: dict[str, Any] = {
        "map": _rounded(report["map"]),
        "num_queries": report["num_queries"],
        "num_database": report["num_database"],
    }
    if report.get("continuous_map"):
        out["continuous_map"] = _rounded(report["continuous_map"])
    out["by_group"] = {
        d: {"map": round(r["map"], 4), "recall_at_k": _rounded(r["recall_at_k"])}
        for d, r in report["by_group"].items()
    }
    out["pr_curve"] = {
        d: {
            "precision": [round(float(x), 4) for x in r["binary"]["pr_curve"]["precision"]],
            "recall": [round(float(x), 4) for x in r["binary"]["pr_curve"]["recall"]],
        }
        for d, r in report["directions"].items()
        if d in CROSS
    }
    metrics = json.loads((run / "metrics.json").read_text())
    out["train_seconds_recorded"] = round(metrics["seconds"], 1)
    out["epoch"] = report["epoch"]
    return out


def _find_run(name: str, folders: Sequence[Path]) -> Path:
    """The first folder's run of that name that is finished, else the first folder's."""
    for folder in folders:
        if (folder / name / "metrics.json").exists():
            return folder / name
    return folders[0] / name


def _fill_command(method: str, dataset: str, bits: int, args: argparse.Namespace) -> str:
    """The command that runs this one cell with this call's settings."""
    words = ["python", "-m", "bench.methods", "--methods", method, "--datasets", dataset]
    words += ["--bits", str(bits), "--split-seed", str(args.split_seed)]
    if args.data_root:
        words += ["--data-root", str(args.data_root)]
    for item in args.set:
        words += ["--set", item]
    for item in args.method_set:
        if item.startswith(f"{method}:"):
            words += ["--method-set", item]
    for folder in args.runs:
        words += ["--runs", str(folder)]
    return shlex.join(words)


def _chosen(method: str, dataset: str, bits: int, args: argparse.Namespace) -> bool:
    return (
        (not args.methods or method in args.methods)
        and (not args.datasets or dataset in args.datasets)
        and (not args.bits or bits in args.bits)
    )


def run_cell(
    method: str,
    dataset: str,
    bits: int,
    spec: Dataset,
    args: argparse.Namespace,
    base: Sequence[str],
) -> dict[str, Any]:
    """One cell: train or reuse its run, evaluate it, keep the summary."""
    from model.config import load_config
    from model.evaluate import evaluate_run

    cell: dict[str, Any] = {"method": method, "dataset": dataset, "bits": bits}
    settings = cell_settings(method, dataset)
    if isinstance(settings, str):
        return {**cell, "status": "not_applicable", "reason": settings}
    if not _chosen(method, dataset, bits, args):
        return {
            **cell,
            "status": "not_run",
            "command": _fill_command(method, dataset, bits, args),
        }
    config = Path(settings.config or spec.config)
    own = settings.config is not None or method == load_config(config).method
    mine = [item.partition(":")[2] for item in args.method_set if item.startswith(f"{method}:")]
    overrides = [*base, *settings.overrides, *mine, f"bits={bits}", f"split_seed={args.split_seed}"]
    run = _find_run(run_name(config, method, own, bits, args.split_seed), args.runs)
    seconds = train_or_reuse(config, overrides, run, retrain=args.retrain)
    evals = args.runs[0] / "eval"
    report = evaluate_run(run, evals / f"{run.name}.json", evals / run.name)
    return {
        **cell,
        "status": "result",
        "config": str(config),
        "overrides": overrides,
        "run": str(run),
        "reused": seconds is None,
        "method_set": mine,
        "train_seconds_this_call": seconds,
        **_summary(report, run),
    }


def _base_overrides(spec: Dataset, args: argparse.Namespace) -> list[str]:
    """--set items of every cell of a dataset: its data folder under --data-root, then --set."""
    out = []
    if args.data_root and spec.config:
        rel = tomllib.loads((REPO / spec.config).read_text()).get("data", {}).get("path")
        if rel:
            out.append(f'data.path="{Path(args.data_root).resolve() / Path(rel).name}"')
    return [*out, *args.set]


def write_charts(result: dict[str, Any], folder: Path) -> list[str]:
    """One precision-recall chart per dataset (SVG, every method with a result on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "hashbridge"  # the same figures give the same file
    plt.rcParams["svg.fonttype"] = "none"  # text as text: a small file
    written = []
    for dataset, spec in result["datasets"].items():
        cells = [
            c
            for c in result["cells"]
            if (c["dataset"], c["status"], c["bits"]) == (dataset, "result", spec["chart_bits"])
        ]
        if not cells:
            continue
        directions = [d for d in CROSS if d in cells[0]["pr_curve"]]
        fig, axes = plt.subplots(1, len(directions), figsize=(4 * len(directions), 3.4))
        for ax, direction in zip(list(getattr(axes, "flat", [axes])), directions, strict=True):
            for c in cells:
                curve = c["pr_curve"][direction]
                ax.plot(curve["recall"], curve["precision"], label=c["method"])
            title = f"{direction}, {spec['chart_bits']} bits"
            ax.set(xlabel="recall", ylabel="precision", title=title)
            ax.set_xlim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize="small")
        fig.suptitle(f"{dataset}: binary codes, Hamming ranking", fontsize="medium")
        fig.tight_layout()
        path = folder / f"pr-{dataset}.svg"
        folder.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)
        written.append(str(path))
    return written


def _quick_dataset(folder: Path) -> Path:
    """The tiny image-caption dataset of --quick: 60 generated shapes, 12 of them queries."""
    from model.data.synthetic import write_synthetic_images

    data = write_synthetic_images(folder / "shapes", n=60, seed=0, size=64, query_fraction=0.2)
    config = folder / "quick.toml"
    config.write_text(f'[data]\nkind = "manifest"\npath = "{data}"\n')
    return config


def _header(
    datasets: dict[str, Dataset], argv: Sequence[str] | None, *, generated: bool = False
) -> dict[str, Any]:
    """What every results file starts with: the command, the methods, the datasets."""
    from model.methods.registry import METHODS

    return {
        "benchmark": "methods",
        "command": shlex.join(["python", "-m", "bench.methods", *(argv or sys.argv[1:])]),
        "methods": list(METHODS),
        "datasets": {
            n: {
                "config": "generated" if generated else s.config,
                "bits": list(s.bits),
                "inputs": s.inputs,
                "chart_bits": s.chart_bits,
                "by_group": s.by_group,
            }
            for n, s in datasets.items()
        },
        # Methods the cell table knows that are not registered in this checkout yet.
        "not_registered": sorted({m for m, _ in CELLS} - set(METHODS)),
    }


def merged(paths: Sequence[Path], argv: Sequence[str] | None) -> dict[str, Any]:
    """The full matrix from the results of several calls (bench/methods_merge.py)."""
    from bench.methods_merge import merge
    from model.methods.registry import METHODS

    matrix = [(m, d, b) for d, spec in DATASETS.items() for m in METHODS for b in spec.bits]
    reasons = {k: r for k in matrix if isinstance(r := cell_settings(k[0], k[1]), str)}

    def fill(method: str, dataset: str, bits: int, split_seed: int) -> str:
        plain = argparse.Namespace(
            split_seed=split_seed, data_root=None, set=[], method_set=[], runs=[]
        )
        return _fill_command(method, dataset, bits, plain)

    sources, cells, seed = merge(paths, matrix, reasons, fill)
    return {**_header(DATASETS, argv), "merged_from": sources, "split_seed": seed, "cells": cells}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix (or the cells picked) and write one JSON of every cell."""
    from model.methods.registry import METHODS

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=[])
    parser.add_argument("--datasets", nargs="+", choices=sorted(DATASETS), default=[])
    parser.add_argument("--bits", type=code_bits, nargs="+", default=[])
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--data-root", type=Path, help="the folder holding the datasets")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--method-set",
        action="append",
        default=[],
        metavar="METHOD:KEY=VALUE",
        help="an override for one method's cells only",
    )
    parser.add_argument(
        "--runs",
        type=Path,
        action="append",
        help="where runs are reused from, in order, and trained into (the first); "
        "default runs/bench",
    )
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--charts", type=Path, metavar="DIR", help="write pr-DATASET.svg here")
    parser.add_argument("--quick", action="store_true", help="every method on tiny data, < 1 min")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="train nothing: lay the results of these files out on the full matrix",
    )
    args = parser.parse_args(argv)
    if args.merge:
        picked = [f"--{k}" for k in ("methods", "datasets", "bits") if getattr(args, k)]
        picked += [f"--{k}" for k in ("quick", "retrain") if getattr(args, k)]
        if picked:
            parser.error(f"--merge trains nothing: leave out {', '.join(picked)}")
        result = merged(args.merge, argv)
        if args.charts:
            result["charts"] = write_charts(result, args.charts)
        emit(result, args.out)
        return 0
    env = environment(threads=0)
    with tempfile.TemporaryDirectory() as tmp:
        datasets = DATASETS
        if args.quick:
            quick = _quick_dataset(Path(tmp))
            datasets = {"shapes": Dataset(str(quick), QUICK.bits, QUICK.inputs, QUICK.bits[0])}
            args.set = [*QUICK_SETTINGS, f'image.cache_dir="{Path(tmp) / "cache"}"', *args.set]
            args.runs = [Path(tmp) / "runs"]
        args.runs = args.runs or [Path("runs/bench")]
        cells = []
        for name, spec in datasets.items():
            base = _base_overrides(spec, args)
            for method in METHODS:
                for bits in spec.bits:
                    cells.append(run_cell(method, name, bits, spec, args, base))
                    if cells[-1]["status"] == "result":
                        log(f"{method} {name} {bits} bits: mAP {cells[-1]['map']}")
        result = {
            **_header(datasets, argv, generated=args.quick),
            "split_seed": args.split_seed,
            "cells": cells,
            "environment": env,
        }
        bad = [
            f"{c['method']} {c['dataset']} {c['bits']}"
            for c in cells
            if c["status"] == "result" and not all(math.isfinite(v) for v in c["map"].values())
        ]
        if bad:
            log(f"non-finite mAP in: {', '.join(bad)}")
        if args.charts:
            result["charts"] = write_charts(result, args.charts)
    emit(result, args.out)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
