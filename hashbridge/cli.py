"""The `hashbridge` command: thin shells over library functions.

Imports happen inside each subcommand so that `hashbridge serve` never loads `model/`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger("hashbridge")


def _train(args: argparse.Namespace) -> int:
    from model.config import load_config
    from model.train import train

    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"train.device={json.dumps(args.device)}")
    if args.resume:
        result = train(load_config(None), args.out, resume=True)
    else:
        if args.config is None:
            raise UsageError("--config FILE is required unless --resume is given")
        result = train(load_config(args.config, overrides), args.out)
    final = result.history[-1].get("map", {}) if result.history else {}
    print(
        json.dumps(
            {"run": str(result.run_dir), "seconds": round(result.seconds, 1), "map": final},
            indent=2,
        )
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from model.evaluate import evaluate_run

    report = evaluate_run(args.run, args.out)
    summary = {
        "bits": report["bits"],
        "map": report["map"],
        "continuous_map": report["continuous_map"],
        "plots": report["plots"],
    }
    print(json.dumps(summary, indent=2))
    return 0


class UsageError(Exception):
    """A command-line mistake: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="hashbridge", description="Cross-modal deep hashing: train, evaluate, export, serve."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model into a run directory")
    p.add_argument("--config", type=Path, help="TOML config (see configs/)")
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. bits=64"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="run directory for checkpoints and metrics"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint"
    )
    p.add_argument("--device", help="cpu or cuda (mixed precision on cuda)")
    p.set_defaults(func=_train)

    p = sub.add_parser("eval", help="evaluate a run on its query/database split")
    p.add_argument("--run", type=Path, required=True, help="run directory written by train")
    p.add_argument("--out", type=Path, required=True, help="JSON report path (plots go beside it)")
    p.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from model.config import ConfigError  # noqa: PLC0415 - light module, user errors live there
    from model.data.records import DataError

    try:
        return int(args.func(args))
    except (UsageError, ConfigError, DataError, FileNotFoundError) as exc:
        print(f"hashbridge {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
