"""Flickr8k caption<->photo retrieval: bag-of-words captions vs the pretrained MiniLM encoder.

    OMP_NUM_THREADS=1 python -m bench.text_encoders --out bench/results/text_encoders.json

Trains configs/flickr8k.toml once per text encoder and split seed (0, the split the config
was tuned on, and 1), changing nothing else between the two encoders (same split, seeds,
cached image features, MLP sizes and losses), and evaluates each run on its 200 held-out
photos (1,000 pairs, both the queries and the retrieval set; each photo is its own label,
see model/data/flickr8k.py). Reported per encoder and direction: mAP@all of the binary codes
and of the continuous embeddings, and Recall@1/5/10 of the binary codes (a query counts when
an item of its photo is among the first K by Hamming distance, ties broken by database
order; text->image ranks each held-out photo once). mAP is `hashbridge eval`'s, over the
stored pairs: for text->image a photo is in the retrieval set once per caption, so its five
identical copies are ranked together and count as five relevant items.

Runs go under runs/bench/flickr8k-<encoder>-<bits>b-s<seed> (with --quick, 5 epochs, a
"-quick" suffix); a finished run is re-evaluated, not retrained (pass --retrain to start over).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    base_parser,
    code_bits,
    command,
    emit,
    environment,
    set_threads,
    train_or_reuse,
)
from model import metrics
from model.build import build_method
from model.checkpoint import load_checkpoint
from model.config import config_from_dict
from model.evaluate import embed, evaluate_run
from model.hashing import signs
from model.prepare import prepare

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "flickr8k.toml"
ENCODERS = ("bag_of_words", "minilm")
DIRECTIONS = ("image->text", "text->image")
RECALL_AT = (1, 5, 10)


def recall_at(run: Path, ks: tuple[int, ...] = RECALL_AT) -> dict[str, dict[str, float]]:
    """Recall@K of the binary codes for the cross-modal directions of a finished run."""
    state = load_checkpoint(run)
    config = config_from_dict(state["config"])
    prepared = prepare(config)
    method = build_method(
        config, state["input_dims"], state["kinds"], len(state["label_names"]), state["multi_label"]
    )
    method.load_state_dict(state["model"])
    split, labels = prepared.split, prepared.data.labels
    rel = metrics.relevance(labels[split.query], labels[split.database])
    out: dict[str, dict[str, float]] = {}
    for direction in DIRECTIONS:
        source, target = direction.split("->")
        # Each photo appears once per caption in the database: keep one copy, so that K counts
        # distinct photos (captions are all distinct already).
        targets = prepared.inputs[target][split.database]
        distinct = np.sort(np.unique(targets, axis=0, return_index=True)[1])
        queries = embed(method, source, torch.from_numpy(prepared.inputs[source][split.query]))
        database = embed(method, target, torch.from_numpy(targets[distinct]))
        dist = metrics.hamming_distances(signs(queries), signs(database))
        order = metrics.rank(dist, ascending=True)
        hits = np.take_along_axis(rel[:, distinct], order, axis=1)
        out[direction] = {f"R@{k}": round(float(hits[:, :k].any(1).mean()), 4) for k in ks}
    return out


def run_one(encoder: str, split_seed: int, args: Any) -> dict[str, Any]:
    """Train (unless finished) and evaluate one text encoder on one split."""
    # Quick runs (5 epochs) get their own folders, so a full run never reuses one.
    quick = "-quick" if args.quick else ""
    run = args.runs / f"flickr8k-{encoder}-{args.bits}b-s{split_seed}{quick}"
    overrides = [
        f"bits={args.bits}",
        f"split_seed={split_seed}",
        f"seed={args.seed}",
        f'text.encoder="{encoder}"',
        f"train.threads={args.threads}",
        *args.set,
    ]
    if args.quick:
        overrides.append("train.epochs=5")
    seconds = train_or_reuse(args.config, overrides, run, retrain=args.retrain)
    report = evaluate_run(run, run / "eval.json")
    return {
        "text_encoder": encoder,
        "split_seed": split_seed,
        "run": str(run),
        "map": {d: round(report["map"][d], 4) for d in DIRECTIONS},
        "continuous_map": {d: round(report["continuous_map"][d], 4) for d in DIRECTIONS},
        "recall": recall_at(run),
        "num_queries": report["num_queries"],
        "num_database": report["num_database"],
        "train_seconds_this_call": seconds,
        "train_seconds_recorded": round(
            json.loads((run / "metrics.json").read_text())["seconds"], 1
        ),
    }


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--bits", type=code_bits, default=32)
    parser.add_argument(
        "--split-seeds",
        type=int,
        nargs="+",
        default=[0, 1],
        help="the config was tuned on split 0; split 1 checks the comparison holds elsewhere",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", type=Path, default=Path("runs/bench"))
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    set_threads(args.threads)
    env = environment(args.threads)
    rows = [run_one(encoder, seed, args) for seed in args.split_seeds for encoder in ENCODERS]
    maps = {(row["split_seed"], row["text_encoder"]): row["map"] for row in rows}
    gain = {
        f"split_seed {seed}": {
            d: round(maps[seed, "minilm"][d] - maps[seed, "bag_of_words"][d], 4) for d in DIRECTIONS
        }
        for seed in args.split_seeds
    }
    emit(
        {
            "command": command("bench.text_encoders"),
            "mode": "quick (5 epochs)" if args.quick else "full",
            "config": str(args.config),
            "bits": args.bits,
            "split_seeds": args.split_seeds,
            "results": rows,
            "minilm_minus_bag_of_words_map": gain,
            "environment": env,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
