"""Train and evaluate a config at several code lengths and split seeds; print one JSON table.

    python -m bench.accuracy --config configs/mirflickr25k.toml --bits 16 32 64 --split-seeds 0 7

Every figure in docs/results.md's accuracy tables comes from this script. Runs go under
runs/bench/<config>-<bits>b-s<seed>; an existing finished run is re-evaluated, not retrained
(pass --retrain to start over).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.common import code_bits, command, emit, environment, train_or_reuse
from model.evaluate import evaluate_run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--bits", type=code_bits, nargs="+", default=[16, 32, 64])
    parser.add_argument("--split-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"))
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the table here")
    args = parser.parse_args()
    env = environment(threads=0)  # training sets its own: train.threads (0: torch's default)
    rows = []
    for seed in args.split_seeds:
        for bits in args.bits:
            run = args.runs / f"{args.config.stem}-{bits}b-s{seed}"
            overrides = [*args.set, f"bits={bits}", f"split_seed={seed}"]
            seconds = train_or_reuse(args.config, overrides, run, retrain=args.retrain)
            report = evaluate_run(run, run / "eval.json")
            rows.append(
                {
                    "config": args.config.stem,
                    "bits": bits,
                    "split_seed": seed,
                    "map": {k: round(v, 4) for k, v in report["map"].items()},
                    "continuous_map": {k: round(v, 4) for k, v in report["continuous_map"].items()},
                    "binary_to_continuous": {
                        k: round(v, 4) for k, v in report["binary_to_continuous_ratio"].items()
                    },
                    "train_seconds_this_call": seconds,
                    "train_seconds_recorded": round(
                        json.loads((run / "metrics.json").read_text())["seconds"], 1
                    ),
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    emit({"command": command("bench.accuracy"), "results": rows, "environment": env}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
