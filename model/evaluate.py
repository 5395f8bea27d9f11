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
    """Codes of the queries, the database and (for the report by group) both together,
    each item encoded once."""
    split = prepared.split
    searched = np.union1d(split.query, split.database)
    codes = {
        m: embed(method, m, torch.from_numpy(x[searched]).to(device))
        for m, x in prepared.inputs.items()
    }
    out: dict[str, dict[str, np.ndarray]] = {"searched": codes}
    for part, rows in (("query", split.query), ("database", split.database)):
        at = np.searchsorted(searched, rows)
        out[part] = {m: c[at] for m, c in codes.items()}
    return out


def quick_map(method: Method, prepared: Any, device: torch.device) -> dict[str, float]:
    """mAP@all of binary codes for every direction (used during training); by group when the
    data has no labels."""
    emb = _embeddings(method, prepared, device)
    if not prepared.data.labelled:
        return {d: r["map"] for d, r in group_report(emb, prepared).items()}
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
    report["by_group"] = group_report(emb, prepared)
    report["num_queries"], report["num_database"] = len(prepared.split.query), nd
    if not prepared.data.labelled:
        # Nothing to score by label: the group report is the whole report.
        report["map"] = {d: r["map"] for d, r in report["by_group"].items()}
        report["distinct_codes"] = _distinct_codes_report(emb)
        return report
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
    report["distinct_codes"] = _distinct_codes_report(emb)
    return report


def _distinct_codes_report(emb: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, int]]:
    # How many Hamming cells the codes occupy: few distinct codes mean rankings made mostly
    # of ties (short codes collapse items of the same label set onto one code).
    return {p: {m: distinct_codes(e) for m, e in emb[p].items()} for p in ("query", "database")}


def _distinct_items(data: Any, modality: str, rows: np.ndarray) -> np.ndarray:
    """Positions in `rows` of each distinct item of `modality`: a photo or clip that several
    rows share (a group's captions) is one item, searched and queried once."""
    paths = {"image": data.image_paths, "video": data.video_paths}.get(modality)
    if paths is None:
        return np.arange(len(rows))
    first: dict[Any, int] = {}
    for i, row in enumerate(rows):
        first.setdefault(paths[row], i)
    return np.asarray(sorted(first.values()), dtype=np.int64)


def _item_keys(data: Any, modality: str, rows: np.ndarray) -> np.ndarray:
    """What makes two rows the same item of `modality`: its file, or for text the row."""
    paths = {"image": data.image_paths, "video": data.video_paths}.get(modality)
    if paths is None:
        return rows.astype(str).astype(object)
    return np.asarray([str(paths[r]) for r in rows], dtype=object)


def group_report(
    emb: dict[str, dict[str, np.ndarray]], prepared: Any, ks: tuple[int, ...] = (1, 5, 10)
) -> dict[str, dict[str, Any]]:
    """mAP@all and Recall@1/5/10 of binary codes by group, for every direction.

    An item is relevant to the items of its own group (without a group column, only to its
    own pair). The held-out queries search the retrieval set together with the queries
    themselves, so that a query's own group is there to be found among the rest. Media that
    rows share count once; within one modality a query never retrieves itself.
    """
    data, split = prepared.data, prepared.split
    groups = data.group_ids()
    searched = np.union1d(split.query, split.database)
    out: dict[str, dict[str, Any]] = {}
    for qm, q in emb["query"].items():
        qpos = _distinct_items(data, qm, split.query)
        qrows = split.query[qpos]
        for dm in emb["database"]:
            d = emb["searched"][dm]
            dpos = _distinct_items(data, dm, searched)
            drows = searched[dpos]
            exclude = None
            if qm == dm:
                keys_q, keys_d = _item_keys(data, qm, qrows), _item_keys(data, dm, drows)
                exclude = keys_q[:, None] == keys_d[None, :]
            out[f"{qm}->{dm}"] = metrics.group_retrieval_report(
                signs(q[qpos]), signs(d[dpos]), groups[qrows], groups[drows], ks=ks, exclude=exclude
            )
    return out


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
    report["plots"] = []
    if curves:  # unlabelled data has only the report by group
        report["plots"] += [
            str(plot_pr_curves(curves, plots_dir / "pr_curve.png")),
            str(plot_precision_at_k(pk, plots_dir / "precision_at_k.png")),
        ]
    recall = {f"{d} binary": r["recall_at_k"] for d, r in report["by_group"].items()}
    report["plots"].append(
        str(
            plot_precision_at_k(
                recall, plots_dir / "recall_by_group.png", title="Recall@K by group"
            )
        )
    )
    write_json(out, report)
    return report
