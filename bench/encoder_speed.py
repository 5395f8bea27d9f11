"""Image encoder throughput by TorchScript variant, threads and batch size; JSON out.

    python -m bench.encoder_speed --quick
    python -m bench.encoder_speed --out bench/results/encoder-speed.json

The ``lite0`` bundle's image encoder (bench.models: the real EfficientNet-Lite0 trunk at the
serving size, 128 px, untrained weights, exported by model.export, which already feeds the
trunk channels-last and is run by the service under ``torch.inference_mode``) is loaded as
the service loads it, then compared, interleaved round by round, against:

* ``frozen``: ``torch.jit.freeze`` (weights folded in as constants);
* ``frozen_optimized``: ``torch.jit.optimize_for_inference`` on top (conv-bn folding,
  MKLDNN layouts where it pays);
* ``no_grad``: the exported module under ``torch.no_grad`` instead of inference mode.

Each variant encodes the same seeded random pixel batches; images/s is the median over
rounds. ``bits_differing_vs_exported`` counts code bits that differ from the exported
module's codes on the same batch (the exported module equals the eager model bit for bit:
model.export refuses to write a bundle otherwise), so a variant with 0 keeps that guarantee.
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.common import base_parser, command, emit, environment, log, positive_int, timed
from bench.serving import make_bundle
from service.encoders import load_bundle

Encode = Callable[[torch.Tensor], torch.Tensor]


def variants(module: torch.jit.ScriptModule) -> dict[str, Encode]:
    """The encode functions compared, by name."""
    frozen = torch.jit.freeze(module.eval())
    optimized = torch.jit.optimize_for_inference(torch.jit.freeze(module.eval()))

    def under_inference(m: Any) -> Encode:
        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                return m(x)

        return run

    def under_no_grad(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return {
        "exported": under_inference(module),
        "frozen": under_inference(frozen),
        "frozen_optimized": under_inference(optimized),
        "no_grad": under_no_grad,
    }


def measure(
    encoders: dict[str, Encode], size: int, batch: int, rounds: int, seed: int
) -> dict[str, Any]:
    """Images/s per variant at one batch size (median over interleaved rounds), code agreement."""
    rng = np.random.default_rng((seed, batch))
    x = torch.from_numpy(rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8))
    reference = encoders["exported"](x).numpy()
    seconds: dict[str, list[float]] = {name: [] for name in encoders}
    differ: dict[str, int] = {}
    for name, encode in encoders.items():
        codes = encode(x).numpy()  # warm-up (TorchScript profiles its first runs)
        encode(x)
        differ[name] = int(np.unpackbits(codes ^ reference).sum())
    names = list(encoders)
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            seconds[name].append(timed(lambda e=encoders[name]: e(x))[0])
    base = float(np.median(seconds["exported"]))
    return {
        "batch": batch,
        "variants": {
            name: {
                "images_per_s": round(batch / float(np.median(s)), 1),
                "images_per_s_range": [round(batch / max(s), 1), round(batch / min(s), 1)],
                "speedup_vs_exported": round(base / float(np.median(s)), 3),
                "bits_differing_vs_exported": differ[name],
            }
            for name, s in seconds.items()
        },
    }


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=positive_int, nargs="+", help="batch sizes")
    parser.add_argument("--rounds", type=positive_int, help="interleaved rounds per batch size")
    parser.add_argument(
        "--thread-counts", type=positive_int, nargs="+", help="torch threads (default 1 2)"
    )
    args = parser.parse_args()
    batches = args.batches or ([16] if args.quick else [16, 32, 64])
    rounds = args.rounds or (3 if args.quick else 7)
    thread_counts = args.thread_counts or [1, 2]
    env = environment(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-encoder-speed-") as tmp:
        bundle = load_bundle(make_bundle("lite0", Path(tmp), 64, args.seed))
        size = bundle.inputs["image"].size
        manifest = json.loads((bundle.path / "manifest.json").read_text())
        module = torch.jit.load(str(bundle.path / manifest["modalities"]["image"]["file"]))
        encoders = variants(module)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for batch in batches:
                log(f"threads={threads} batch={batch}")
                rows.append(
                    {"threads": threads, **measure(encoders, size, batch, rounds, args.seed)}
                )
    emit(
        {
            "benchmark": "encoder_speed",
            "command": command("bench.encoder_speed"),
            "environment": env,
            "settings": {"image_size": size, "rounds": rounds, "batches": batches},
            "notes": {"method": " ".join(__doc__.split("\n\n")[1:])},
            "results": rows,
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
