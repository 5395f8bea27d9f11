"""Retrieval evaluation of a trained run on its own query/database split.

Queries are the split's query items (never trained on); the database is the retrieval set.
Every direction among the trained modalities is reported for the binary codes, the
continuous embeddings, and the asymmetric rankings (the query's real-valued code against the
database's bits, as the service re-ranks) side by side.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bundle.fileio import write_json
from model import metrics
from model.hashing import signs
from model.methods.base import Method
from model.plots import plot_pr_curves, plot_precision_at_k

log = logging.getLogger(__name__)
#: Rankings of the query's real-valued code against stored bits (index.rerank's two).
ASYMMETRIC = ("asymmetric", "hamming_asymmetric")


@torch.no_grad()
def embed(method: Method, modality: str, x: torch.Tensor, batch: int = 4096) -> np.ndarray:
    """Continuous codes of `x` in eval mode."""
    method.eval()
    # Wide inputs (a clip's per-frame maps) get smaller batches: bounded memory.
    batch = max(1, min(batch, (1 << 24) // max(1, x[0].numel()))) if len(x) else batch
    parts = [
        method.encode(modality, x[i : i + batch]).float().cpu() for i in range(0, len(x), batch)
    ]
    return torch.cat(parts).numpy()


def _embeddings(
    method: Method, prepared: Any, device: torch.device
) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for part, rows in (("query", prepared.split.query), ("database", prepared.split.database)):
        out[part] = {
            m: embed(method, m, torch.from_numpy(x[rows]).to(device))
            for m, x in prepared.inputs.items()
        }
    return out


def quick_map(method: Method, prepared: Any, device: torch.device) -> dict[str, float]:
    """mAP@all of binary codes for every direction (used during training)."""
    emb = _embeddings(method, prepared, device)
    labels = prepared.data.labels
    ql, dl = labels[prepared.split.query], labels[prepared.split.database]
    rel = metrics.relevance(ql, dl)
    result = {}
    for qm, q in emb["query"].items():
        for dm, d in emb["database"].items():
            order = metrics.rank(metrics.hamming_distances(signs(q), signs(d)), ascending=True)
            result[f"{qm}->{dm}"] = metrics.mean_average_precision(order, rel)
    return result


def evaluate(method: Method, prepared: Any, config: Any, device: torch.device) -> dict[str, Any]:
    """mAP@all, mAP@R, P@K and PR curves, binary, continuous and asymmetric, every direction."""
    emb = _embeddings(method, prepared, device)
    labels = prepared.data.labels
    ql, dl = labels[prepared.split.query], labels[prepared.split.database]
    nd = len(prepared.split.database)
    top_r = min(config.eval.top_r, nd)
    # Cut-offs past the database are dropped; if none is left, P@K is taken at its size.
    ks = [k for k in config.eval.ks if k <= nd] or [nd]
    report: dict[str, Any] = {
        "bits": config.bits,
        "split_seed": config.split_seed,
        "map": {},
        "directions": {},
    }
    for qm, q in emb["query"].items():
        for dm, d in emb["database"].items():
            direction = f"{qm}->{dm}"
            binary = metrics.retrieval_report(
                signs(q), signs(d), ql, dl, binary=True, top_r=top_r, ks=ks
            )
            continuous = metrics.retrieval_report(q, d, ql, dl, binary=False, top_r=top_r, ks=ks)
            report["directions"][direction] = {
                "binary": binary,
                "continuous": continuous,
                **asymmetric_reports(q, signs(d), ql, dl, top_r=top_r, ks=ks),
            }
            report["map"][direction] = binary["map"]
    for kind in ("continuous", *ASYMMETRIC):
        report[f"{kind}_map"] = {k: v[kind]["map"] for k, v in report["directions"].items()}
    report["binary_to_continuous_ratio"] = {
        k: report["map"][k] / max(report["continuous_map"][k], 1e-12) for k in report["map"]
    }
    report["num_queries"], report["num_database"] = len(prepared.split.query), nd
    # How many Hamming cells the codes occupy: few distinct codes mean rankings made mostly
    # of ties (short codes collapse items of the same label set onto one code).
    report["distinct_codes"] = {
        part: {m: distinct_codes(e) for m, e in emb[part].items()} for part in emb
    }
    return report


def asymmetric_reports(
    query_values: np.ndarray, db_signs: np.ndarray, ql: np.ndarray, dl: np.ndarray, **cut: Any
) -> dict[str, dict[str, Any]]:
    """The two asymmetric rankings the service offers: score alone, and inside Hamming ties."""
    return {
        kind: metrics.asymmetric_report(
            query_values, db_signs, ql, dl, ties_only=kind == "hamming_asymmetric", **cut
        )
        for kind in ASYMMETRIC
    }


def distinct_codes(embeddings: np.ndarray) -> int:
    """Number of different binary codes among the rows of continuous embeddings."""
    return len(np.unique(signs(embeddings), axis=0))


def evaluate_run(
    run_dir: Path, out: Path, plots_dir: Path | None = None, data: Path | None = None
) -> dict[str, Any]:
    """Rebuild a run from its checkpoint, evaluate it, write JSON and PNG plots.

    ``data``: where the run's data is now, when it has moved since training.
    """
    from bundle.text import Vocabulary
    from model.checkpoint import load_checkpoint, run_config, trained_method
    from model.data.records import DataError
    from model.prepare import data_fingerprint, prepare

    state = load_checkpoint(run_dir)
    config = run_config(state, run_dir, data)
    vocab = Vocabulary.from_json(state["vocabulary"]) if state["vocabulary"] else None
    prepared = prepare(config, vocabulary=vocab)
    if state.get("data_fingerprint") not in (None, data_fingerprint(prepared)):
        # Another split could hold items the run trained on among the queries.
        raise DataError(
            f"cannot evaluate {run_dir}: its data {config.data.path or config.data.kind} changed "
            "since the run was trained (its items, labels, texts or split are not the same), "
            "so its query/database split is no longer the one it held out; restore that data, "
            "or train a new run on it"
        )
    method = trained_method(state, config, run_dir)
    report = evaluate(method, prepared, config, torch.device("cpu"))
    report["run"], report["epoch"] = str(run_dir), state["epoch"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    plots_dir = Path(plots_dir) if plots_dir else out.with_suffix("")
    if plots_dir == out:  # a report named without a suffix: its plots cannot take its name
        plots_dir = out.with_name(f"{out.name}-plots")
    plots_dir.mkdir(parents=True, exist_ok=True)
    curves = {
        f"{d} {kind}": r[kind]["pr_curve"]
        for d, r in report["directions"].items()
        for kind in ("binary", "continuous", "asymmetric")
    }
    pk = {
        f"{d} {kind}": r[kind]["precision_at_k"]
        for d, r in report["directions"].items()
        for kind in ("binary", "continuous", "asymmetric")
    }
    report["plots"] = [
        str(plot_pr_curves(curves, plots_dir / "pr_curve.png")),
        str(plot_precision_at_k(pk, plots_dir / "precision_at_k.png")),
    ]
    write_json(out, report)
    return report
