"""Eager PyTorch against TorchScript encoders: items/s per modality and batch size; JSON out.

    python -m bench.encoders --quick
    python -m bench.encoders --out bench/results/encoders.json

Both sides are the exported model's encoders (see bench/models.py): the eager modules that
model.export traces and the TorchScript files of the bundle it writes, loaded back with
torch.jit.load as the service loads them. Calls of the two alternate so that load changes
on the shared CPU hit both alike.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
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
    log,
    ms,
    positive_int,
    ratio,
    set_threads,
    timed,
)
from bench.models import (
    IMAGE_SIZE,
    MODEL_NOTE,
    NUM_LABELS,
    VOCAB_SIZE,
    eager_encoders,
    export_untrained,
    random_texts,
    vocabulary,
    write_untrained_run,
)
from model.config import ConfigError

BATCH_SIZES = (1, 8, 32)


@dataclass(frozen=True)
class Timing:
    """Warm-up calls, then timed call pairs: at least min_runs, more while under budget_s."""

    warmup: int
    min_runs: int
    max_runs: int
    budget_s: float


QUICK = Timing(warmup=2, min_runs=2, max_runs=5, budget_s=1.0)
NORMAL = Timing(warmup=3, min_runs=5, max_runs=40, budget_s=8.0)


def inputs(modality: str, batch: int, image_size: int, vocab_size: int, seed: int) -> torch.Tensor:
    """A batch of prepared encoder inputs: uint8 pixels, or a float32 bag of words."""
    rng = np.random.default_rng((seed, batch))
    if modality == "image":
        pixels = rng.integers(0, 256, size=(batch, 3, image_size, image_size), dtype=np.uint8)
        return torch.from_numpy(pixels)
    bags = vocabulary(vocab_size).encode(random_texts(batch, vocab_size, rng))
    return torch.from_numpy(bags)


def finished(fn: Any, x: torch.Tensor) -> Any:
    """Call fn(x) and wait for the GPU, so a timing covers the work and not only its launch."""
    out = fn(x)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return out


def compare(
    eager: torch.nn.Module,
    scripted: torch.jit.ScriptModule,
    x: torch.Tensor,
    timing: Timing,
) -> dict[str, Any]:
    """Alternate eager and TorchScript calls on one batch; report items/s of each."""
    with torch.inference_mode():
        for _ in range(timing.warmup):
            finished(eager, x)
            finished(scripted, x)
        codes_equal = bool(torch.equal(eager(x), scripted(x)))
        times: dict[str, list[float]] = {"eager": [], "torchscript": []}
        spent = 0.0
        while len(times["eager"]) < timing.max_runs:
            for name, fn in (("eager", eager), ("torchscript", scripted)):
                seconds, _ = timed(lambda f=fn: finished(f, x))
                times[name].append(seconds)
                spent += seconds
            if len(times["eager"]) >= timing.min_runs and spent > timing.budget_s:
                break
    batch = x.shape[0]
    report: dict[str, Any] = {"batch": batch, "codes_equal": codes_equal}
    for name, values in times.items():
        med = statistics.median(values)
        report[name] = {
            "runs": len(values),
            "median_ms_per_batch": ms(med),
            "ms_per_item": ms(med / batch),
            "items_per_s": round(batch / med, 2),
        }
    report["torchscript_speedup_vs_eager"] = ratio(
        report["torchscript"]["items_per_s"], report["eager"]["items_per_s"]
    )
    return report


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=code_bits, default=64)
    parser.add_argument("--image-size", type=int, default=IMAGE_SIZE)
    parser.add_argument("--vocab-size", type=positive_int, default=VOCAB_SIZE)
    parser.add_argument("--batch-sizes", type=positive_int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device must be cpu or cuda (cuda:N), got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA GPU; torch sees none")
    set_threads(args.threads)
    env = environment(args.threads)
    timing = QUICK if args.quick else NORMAL
    with tempfile.TemporaryDirectory(prefix="bench-encoders-") as tmp:
        try:
            run_dir = write_untrained_run(
                Path(tmp) / "run",
                bits=args.bits,
                image_size=args.image_size,
                vocab_size=args.vocab_size,
                seed=args.seed,
            )
        except ConfigError as exc:  # e.g. an --image-size the image stream does not take
            parser.error(str(exc))
        log("building eager encoders and exporting the bundle")
        eager = eager_encoders(run_dir)
        export_s, bundle = timed(lambda: export_untrained(run_dir, Path(tmp) / "bundle"))
        scripted = {
            m: torch.jit.load(str(bundle / f"{m}.pt"), map_location=device).eval() for m in eager
        }
        rows: dict[str, list[dict[str, Any]]] = {}
        for modality in sorted(eager):
            rows[modality] = []
            for batch in args.batch_sizes:
                log(f"{modality} batch {batch}")
                x = inputs(modality, batch, args.image_size, args.vocab_size, args.seed)
                encoder = eager[modality].encoder.to(device)
                rows[modality].append(compare(encoder, scripted[modality], x.to(device), timing))
    result = {
        "benchmark": "encoders",
        "command": command("bench.encoders"),
        "mode": "quick" if args.quick else "normal",
        "environment": env,
        "settings": {
            "bits": args.bits,
            "image_size": args.image_size,
            "vocab_size": args.vocab_size,
            "num_labels": NUM_LABELS,
            "batch_sizes": args.batch_sizes,
            "device": str(device),
            "seed": args.seed,
            **asdict(timing),
        },
        "notes": {
            "model": MODEL_NOTE.format(
                bits=args.bits, size=args.image_size, vocab=args.vocab_size, labels=NUM_LABELS
            ),
            "inputs": "image: random uint8 pixels (n, 3, size, size); text: binary bag of "
            "words of 8 random known tags per text (float32, n x vocab)",
            "timing": "median seconds per call under torch.inference_mode after warm-up "
            "calls (TorchScript's profiling executor optimises during its first calls); "
            "items_per_s = batch / median; torchscript_speedup_vs_eager = TorchScript "
            "items/s / eager items/s; on cuda every timed call waits for the GPU "
            "(torch.cuda.synchronize), inputs already on the device",
            "baseline": "eager",
            "export_seconds": round(export_s, 2),
        },
        "summary": {
            modality: {
                str(r["batch"]): {
                    "eager_items_per_s": r["eager"]["items_per_s"],
                    "torchscript_items_per_s": r["torchscript"]["items_per_s"],
                    "torchscript_speedup_vs_eager": r["torchscript_speedup_vs_eager"],
                }
                for r in modality_rows
            }
            for modality, modality_rows in rows.items()
        },
        "results": rows,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
