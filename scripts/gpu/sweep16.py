"""Random search of 16-bit MIRFlickr-25K settings, run on a lent GPU (split 0, float32).

Here, where the features are cached (writes ~44 MB, small enough to travel):
    python scripts/gpu/sweep16.py export .gpu/sweep/prepared.pkl
There, from the repository root, e.g. 8 workers for about 6 minutes:
    for w in 0 1 2 3 4 5 6 7; do
        python3 scripts/gpu/sweep16.py run .gpu/sweep/prepared.pkl broad $w 8 370 $OUT/s-$w.jsonl &
    done; wait
Each line of the output is one run: the settings drawn and the final mAP of every direction.
Training is model.train.train itself; only the data preparation is replaced by the exported
arrays, and autocast is off so the GPU computes in float32 as the CPU runs do.
"""

from __future__ import annotations

import copy
import json
import pickle
import random
import sys
import tempfile
import time
import types
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
CONFIG = REPO / "configs" / "mirflickr25k.toml"

BROAD: dict[str, list[Any]] = {
    "train.lr": [3e-4, 5e-4, 7e-4, 1e-3, 1.5e-3],
    "train.epochs": [30, 45, 60, 90],
    "train.batch_size": [64, 128, 256],
    "train.weight_decay": [1e-5, 1e-4, 1e-3],
    "text.hidden": [[1024], [2048], [4096], [2048, 1024]],
    "text.dropout": [0.0, 0.1, 0.3, 0.5],
    "image.hidden": [[1024], [2048], [1024, 1024]],
    "image.dropout": [0.1, 0.2, 0.4],
    "alpha": [0.25, 0.5, 0.75, 1.0],
    "balance": [True, False],
    "dsmhn.w_semantic": [0.5, 1.0, 2.0],
    "dsmhn.w_quantization": [0.0, 0.05, 0.1, 0.3],
    "dsmhn.w_balance": [0.0, 0.01, 0.1],
    "dsmhn.w_intra": [0.0, 0.5, 1.0],
    "dsmhn.binary_bank": [False, True],
    "dsmhn.tanh_scale_growth": [0.0, 0.5, 2.0],
    "dsmhn.shared_label_head": [True, False],
}
#: Around the broad stage's best run that kept image->text >= 0.80 (its first draw).
FOCUSED_START = {
    "train.lr": 1e-3, "train.epochs": 90, "train.batch_size": 256, "train.weight_decay": 1e-4,
    "text.hidden": [2048], "text.dropout": 0.3, "image.hidden": [1024], "image.dropout": 0.4,
    "alpha": 0.5, "balance": False, "dsmhn.w_semantic": 0.5, "dsmhn.w_quantization": 0.1,
    "dsmhn.w_balance": 0.01, "dsmhn.w_intra": 1.0, "dsmhn.binary_bank": False,
    "dsmhn.tanh_scale_growth": 0.0, "dsmhn.shared_label_head": False,
}  # fmt: skip
FOCUSED: dict[str, list[Any]] = {
    "train.lr": [7e-4, 1e-3, 1.5e-3],
    "train.epochs": [60, 90],
    "train.batch_size": [128, 256],
    "train.weight_decay": [1e-4],
    "text.hidden": [[2048], [4096]],
    "text.dropout": [0.1, 0.3],
    "image.hidden": [[1024], [1024, 1024]],
    "image.dropout": [0.2, 0.4],
    "alpha": [0.5, 0.75],
    "balance": [False],
    "dsmhn.w_semantic": [0.5, 1.0],
    "dsmhn.w_quantization": [0.05, 0.1],
    "dsmhn.w_balance": [0.01],
    "dsmhn.w_intra": [0.5, 1.0],
    "dsmhn.binary_bank": [False, True],
    "dsmhn.tanh_scale_growth": [0.0, 0.5],
    "dsmhn.shared_label_head": [False, True],
}
#: Draw names that are not config paths.
PATHS = {"alpha": "dsmhn.similarity_params.alpha", "balance": "dsmhn.similarity_params.balance"}
STAGES = {"broad": ({}, BROAD, 1234), "focused": (FOCUSED_START, FOCUSED, 99)}


def export(out: Path) -> None:
    """Pickle the prepared split-0 inputs, trimmed to what training reads."""
    from model.config import load_config
    from model.prepare import prepare

    overrides = ["bits=16", 'image.cache_dir=".cache/features-bench"']
    prepared = prepare(load_config(CONFIG, overrides))
    prepared.data.texts = prepared.data.text_features = prepared.data.image_paths = None
    prepared.inputs = {
        "image": prepared.inputs["image"].astype(np.float16),
        "text": np.packbits(prepared.inputs["text"].astype(bool), axis=1),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pickle.dumps(prepared, protocol=5))


def draws(stage: str) -> Any:
    """The stage's starting settings, then random draws from its space."""
    start, space, seed = STAGES[stage]
    yield dict(start)
    rng = random.Random(seed)
    while True:
        yield {key: rng.choice(values) for key, values in space.items()}


def config_for(choice: dict[str, Any], device: str) -> Any:
    """The repo's config with the draw applied through the trainer's own --set overrides."""
    from model.config import load_config

    sets = {"bits": 16, "train.device": device, **{PATHS.get(k, k): v for k, v in choice.items()}}
    config = load_config(CONFIG, [f"{key}={json.dumps(value)}" for key, value in sets.items()])
    config.train.eval_every = config.train.epochs  # one evaluation, at the end
    return config


def run(prepared_path: Path, stage: str, worker: int, workers: int, budget_s: float, out: Path):
    try:
        import av  # noqa: F401
    except ImportError:  # no video is decoded here: stand-ins for the names model/ imports
        for name in ("av", "av.sidedata", "av.sidedata.sidedata"):
            sys.modules[name] = types.ModuleType(name)
        sidedata: Any = sys.modules["av.sidedata.sidedata"]
        sidedata.SideDataContainer = sidedata.Type = object
    import torch

    import model.train as training

    started = time.time()
    prepared = pickle.loads(prepared_path.read_bytes())
    vocab = len(prepared.vocabulary.tokens)
    inputs = {
        "image": prepared.inputs["image"].astype(np.float32),
        "text": np.unpackbits(prepared.inputs["text"], axis=1)[:, :vocab].astype(np.float32),
    }

    def fresh(config: Any, **_: Any) -> Any:
        copied = copy.copy(prepared)
        copied.inputs = {m: x.copy() for m, x in inputs.items()}
        return copied

    training.prepare = fresh  # type: ignore[assignment]
    training.torch.autocast = lambda *a, **k: nullcontext()  # type: ignore[assignment]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with out.open("a") as log:
        for i, choice in enumerate(draws(stage)):
            if time.time() - started > budget_s:
                break
            if i % workers != worker:
                continue
            t0 = time.time()
            with tempfile.TemporaryDirectory() as tmp:
                result = training.train(config_for(choice, device), Path(tmp))
            row = {"stage": stage, "i": i, "choice": choice, "map": result.history[-1]["map"]}
            log.write(json.dumps({**row, "seconds": round(time.time() - t0, 1)}) + "\n")
            log.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["export"]:
        export(Path(sys.argv[2]))
    elif sys.argv[1:2] == ["run"]:
        path, stage, worker, workers, budget, out = sys.argv[2:8]
        run(Path(path), stage, int(worker), int(workers), float(budget), Path(out))
    else:
        sys.exit(__doc__)
