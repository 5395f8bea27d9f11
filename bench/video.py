"""Video benchmarks: retrieval mAP of the temporal stream against the frame-averaging baseline,
and clips/s for decoding and for the exported encoder; JSON out.

    python -m bench.video accuracy --config configs/synthetic-video.toml \\
        --temporal conv3d mean --out bench/results/video-synthetic.json
    python -m bench.video accuracy --config configs/kinetics-tiny.toml \\
        --temporal conv3d mean --out bench/results/video-kinetics.json
    python -m bench.video speed --run runs/bench/video/kinetics-tiny-conv3d-32b \\
        --out bench/results/video-speed.json

`accuracy` trains each temporal model (runs go under runs/bench/video/; a finished run is
re-evaluated, not retrained, unless --retrain) and reports every direction's mAP@all of the
binary codes on the run's own held-out split. `speed` decodes every clip of the run's dataset
with `bundle.clips` (one process, then a pool of worker processes, as training does),
exports the run and times its TorchScript video encoder as the service loads it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import (
    code_bits,
    command,
    emit,
    environment,
    log,
    positive_int,
    ratio,
    set_threads,
    train_or_reuse,
)

RUNS = Path("runs/bench/video")
ENCODE_BATCHES = (1, 8)
POOL_PASSES = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    common.add_argument("--out", type=Path, help="also write the JSON here")
    sub = parser.add_subparsers(dest="what", required=True)
    acc = sub.add_parser("accuracy", parents=[common], help="train and evaluate temporal models")
    acc.add_argument("--config", type=Path, required=True)
    acc.add_argument("--temporal", nargs="+", default=["conv3d", "mean"])
    acc.add_argument("--bits", type=code_bits, default=32)
    acc.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    acc.add_argument("--runs", type=Path, default=RUNS)
    acc.add_argument("--retrain", action="store_true")
    speed = sub.add_parser("speed", parents=[common], help="decode and encode clips/s")
    speed.add_argument("--run", type=Path, required=True, help="a trained video run")
    speed.add_argument("--workers", type=positive_int, default=2, help="decoding processes")
    args = parser.parse_args()
    set_threads(args.threads)
    env = environment(args.threads)  # before the work: it records the load at the start
    result: dict[str, Any] = {"command": command("bench.video")}
    result.update(accuracy(args) if args.what == "accuracy" else clip_speed(args))
    result["environment"] = env
    emit(result, args.out)
    return 0


def accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) one run per temporal model; mAP per direction and the gain over mean."""
    from model.evaluate import evaluate_run

    rows: dict[str, dict[str, Any]] = {}
    for temporal in args.temporal:
        run = args.runs / f"{args.config.stem}-{temporal}-{args.bits}b"
        overrides = [
            *args.set,
            f"bits={args.bits}",
            f'video.temporal="{temporal}"',
            f"train.threads={args.threads}",
        ]
        seconds = train_or_reuse(args.config, overrides, run, retrain=args.retrain)
        report = evaluate_run(run, run / "eval.json")
        rows[temporal] = {
            "run": str(run),
            "map": {k: round(v, 4) for k, v in report["map"].items()},
            "continuous_map": {k: round(v, 4) for k, v in report["continuous_map"].items()},
            "num_queries": report["num_queries"],
            "num_database": report["num_database"],
            "train_seconds_this_call": seconds,
        }
        with_val = _with_validation_queries(run)
        if with_val is not None:
            rows[temporal]["map_val_and_test_queries"] = with_val
        log(f"{temporal}: {rows[temporal]['map']}")
    out: dict[str, Any] = {"config": str(args.config), "bits": args.bits, "results": rows}
    if "conv3d" in rows and "mean" in rows:
        out["conv3d_minus_mean"] = {
            k: round(rows["conv3d"]["map"][k] - rows["mean"]["map"][k], 4)
            for k in rows["conv3d"]["map"]
        }
    return out


def _with_validation_queries(run_dir: Path) -> dict[str, Any] | None:
    """mAP with the split's validation rows added to the queries (none were trained on).

    Small datasets such as kinetics-tiny (5 test clips) give a mAP over very few queries;
    their 15 validation clips make a second, larger held-out query set.
    """
    from bundle.text import Vocabulary
    from model.evaluate import evaluate
    from model.export import load_run
    from model.prepare import prepare

    run = load_run(run_dir)
    vocab = run.state.get("vocabulary")
    prepared = prepare(run.config, vocabulary=Vocabulary.from_json(vocab) if vocab else None)
    split = prepared.split
    if not split.val.size:
        return None
    queries = np.union1d(split.query, split.val)
    prepared = replace(prepared, split=replace(split, query=queries))
    report = evaluate(run.method, prepared, run.config, torch.device("cpu"))
    return {
        "num_queries": int(queries.size),
        "map": {k: round(v, 4) for k, v in report["map"].items()},
    }


def clip_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Decode every clip of the run's dataset, then encode them with the exported encoder."""
    from bundle.clips import ClipError, decode_clip
    from model.data.clip_decoding import decode_clips
    from model.export import export_bundle, load_run
    from model.prepare import load_dataset

    run = load_run(args.run)
    video = run.config.video
    data, _ = load_dataset(run.config)
    if data.video_paths is None:
        raise SystemExit(f"{args.run} was not trained on video")
    paths = [p for p in data.video_paths if p is not None]

    log(f"decoding {len(paths)} clips in this process")
    decoded: list[np.ndarray] = []
    readable: list[Path] = []
    failures: list[str] = []
    started = time.perf_counter()
    for path in paths:
        try:
            decoded.append(
                decode_clip(path, frames=video.frames, size=video.size, clips=video.clips)
            )
            readable.append(path)
        except ClipError as exc:
            failures.append(f"{path}: {exc}")
    one_process = time.perf_counter() - started

    # The pool's start-up (a fork server, imports) is paid once per extraction: decode the
    # clips POOL_PASSES times over in one pool so that it weighs as it would on a dataset.
    log(f"decoding {POOL_PASSES}x again with {args.workers} worker processes")
    started = time.perf_counter()
    pooled_ok = sum(
        not isinstance(result, ClipError)
        for _, result in decode_clips(
            readable * POOL_PASSES,
            frames=video.frames,
            size=video.size,
            clips=video.clips,
            workers=args.workers,
        )
    )
    pooled = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_bundle(args.run, Path(tmp) / "bundle")
        encoder = torch.jit.load(str(bundle / "video.pt"), map_location="cpu").eval()
        clips = np.stack(decoded)
        encode = {str(b): _encode_rate(encoder, clips, b) for b in ENCODE_BATCHES}
        with torch.inference_mode():
            codes = encoder(torch.from_numpy(clips))
    return {
        "run": str(args.run),
        "sampling": {"frames": video.frames, "size": video.size, "clips": video.clips},
        "clips": len(paths),
        "decoded": len(decoded),
        "decode_failures": failures,
        "encoded": int(codes.shape[0]),
        "code_bytes": int(codes.shape[1]),
        "decode_clips_per_s": {
            "one_process": round(len(paths) / one_process, 2),
            f"{args.workers}_processes": round(pooled_ok / pooled, 2),
        },
        "encode_clips_per_s": encode,
        # One process decoding then encoding, per encoder batch size (the service's path).
        "decode_plus_encode_clips_per_s": {
            b: round(1 / (one_process / len(paths) + 1 / e["clips_per_s"]), 2)
            for b, e in encode.items()
        },
        "speedup_of_pooled_decoding": ratio(pooled_ok / pooled, len(decoded) / one_process),
    }


def _encode_rate(encoder: torch.jit.ScriptModule, clips: np.ndarray, batch: int) -> dict:
    """Clips/s of the TorchScript encoder over all clips at this batch size (one warm-up)."""
    x = torch.from_numpy(clips)
    with torch.inference_mode():
        encoder(x[:batch])
        started = time.perf_counter()
        for start in range(0, len(x), batch):
            encoder(x[start : start + batch])
        seconds = time.perf_counter() - started
    per_clip = seconds / len(x)
    return {"clips_per_s": round(1 / per_clip, 2), "ms_per_clip": round(1000 * per_clip, 2)}


if __name__ == "__main__":
    sys.exit(main())
