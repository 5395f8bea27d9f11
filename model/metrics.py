"""Retrieval metrics for cross-modal hashing: relevance, ranking, mAP, precision@K, PR curves.

Pure NumPy. The conventions below are contracts; ``tests/model/test_metrics.py`` holds the code
to them.

Ranking
    Binary codes rank by Hamming distance ascending, continuous embeddings by cosine similarity
    descending. The sort is stable: items with equal distance (or similarity) keep database
    order, lower database index first. Short codes produce many ties, so published mAP depends
    on this rule; it is fixed here rather than left to whatever the sort happens to do.

Average precision
    For one query with ranked relevance ``r_1..r_n`` and ``hits_i = r_1 + ... + r_i``,
    ``AP@R = sum(r_i * hits_i / i for i <= R) / hits_R``: the mean of precision@i over the
    relevant positions i inside the top R, divided by the number of relevant items *retrieved*
    in the top R (the hashing literature's mAP@R, not ``min(R, total relevant)``). mAP@all is
    AP@n. A query with no relevant item in the top R scores 0 and stays in the mean.

Curves
    ``pr_curve`` gives precision and recall at rank cut-offs (any code type). Recall of a query
    with no relevant item in the database is 0. ``pr_curve_hamming_radius`` gives them for the
    items within Hamming radius r; a query that retrieves nothing at radius r has precision 0
    there, the literature's convention for "precision within Hamming radius 2".
    Every curve and metric is a mean over all queries.

Memory
    Work runs over blocks of query rows holding about ``chunk_elements`` matrix cells each, so
    intermediates stay near a hundred MB whatever the number of queries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

CHUNK_ELEMENTS = 1 << 22


def _row_blocks(n_rows: int, n_cols: int, chunk_elements: int) -> Iterator[slice]:
    step = max(1, chunk_elements // max(1, n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def _matrix(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, got shape {arr.shape}")
    return arr


def _pair(a: Any, b: Any, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    a, b = _matrix(a, names[0]), _matrix(b, names[1])
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names[0]} has {a.shape[1]} columns but {names[1]} has {b.shape[1]}")
    return a, b


def _signs(x: Any, name: str) -> np.ndarray:
    arr = _matrix(x, name)
    if not np.all(np.abs(arr) == 1):
        # A 0 from np.sign(0) or a {0, 1} code would silently shift every distance.
        raise ValueError(f"{name} must hold only -1 and +1; binarise with np.where(x >= 0, 1, -1)")
    return arr.astype(np.float32, copy=False)


def _ranking(order: Any, rel: Any) -> tuple[np.ndarray, np.ndarray]:
    order, rel = _matrix(order, "order"), _matrix(rel, "rel").astype(bool, copy=False)
    if order.shape != rel.shape or rel.size == 0:
        raise ValueError(f"order {order.shape} and rel {rel.shape} must share a non-empty shape")
    return order, rel


def _rank_limit(k: int, nd: int, name: str) -> int:
    if not isinstance(k, int | np.integer) or not 1 <= k <= nd:
        raise ValueError(f"{name} must be an integer in 1..{nd} (the database size), got {k!r}")
    return int(k)


def _cutoffs(ks: Sequence[int] | np.ndarray, nd: int) -> np.ndarray:
    arr = np.asarray(ks)
    if arr.ndim != 1 or arr.size == 0 or arr.dtype.kind not in "iu":
        raise ValueError(f"cut-offs must be a non-empty list of integers, got {ks!r}")
    if arr.min() < 1 or arr.max() > nd:
        raise ValueError(f"cut-offs must lie in 1..{nd} (the database size), got {arr.tolist()}")
    return arr.astype(np.int64)


def log_cutoffs(nd: int, points: int = 20) -> np.ndarray:
    """Up to ``points`` distinct log-spaced rank cut-offs from 1 to ``nd`` inclusive."""
    return np.unique(np.rint(np.geomspace(1, nd, points)).astype(np.int64))


def relevance(query_labels: Any, db_labels: Any) -> np.ndarray:
    """Boolean (nq, nd) matrix, True where a query and a database item share a label."""
    q, d = _pair(query_labels, db_labels, ("query_labels", "db_labels"))
    # A float32 product counts shared labels exactly (below 2**24 labels) and runs on BLAS.
    qf, dt = (q != 0).astype(np.float32), (d != 0).astype(np.float32).T
    out = np.empty((len(q), len(d)), dtype=bool)
    for rows in _row_blocks(len(q), len(d), CHUNK_ELEMENTS):
        np.greater(qf[rows] @ dt, 0, out=out[rows])
    return out


def hamming_distances(query_signs: Any, db_signs: Any) -> np.ndarray:
    """Exact Hamming distances (nq, nd) between ±1 codes, as ``np.min_scalar_type(bits)``."""
    q, d = _pair(query_signs, db_signs, ("query_signs", "db_signs"))
    q, d = _signs(q, "query_signs"), _signs(d, "db_signs")
    bits, dt = q.shape[1], d.T
    # uint8/uint16 halve memory and let rank()'s stable argsort use radix sort (~7x faster).
    out = np.empty((len(q), len(d)), dtype=np.min_scalar_type(bits))
    for rows in _row_blocks(len(q), len(d), CHUNK_ELEMENTS):
        # Inner products of ±1 vectors are integers, exact in float32 below 2**24 bits.
        out[rows] = (bits - q[rows] @ dt) * 0.5
    return out


def cosine_similarity(query_emb: Any, db_emb: Any) -> np.ndarray:
    """Cosine similarity (nq, nd) in float32; a zero vector has similarity 0 to everything."""
    q, d = _pair(query_emb, db_emb, ("query_emb", "db_emb"))

    def unit(x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return x / np.where(norms > 0, norms, 1)

    return unit(q) @ unit(d).T


def rank(values: Any, *, ascending: bool) -> np.ndarray:
    """Database indices per query row, best first; ties keep database order (stable sort)."""
    v = _matrix(values, "values")
    if not ascending:
        # Negating keeps ties tied, so the stable ascending sort still orders them by index;
        # integers are widened first so unsigned values survive the negation.
        v = -(v if v.dtype.kind == "f" else v.astype(np.int64))
    return np.argsort(v, axis=1, kind="stable")


def _ranked_hits(order: np.ndarray, rel: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ranked = np.take_along_axis(rel, order[:, :k], axis=1)
    return ranked, np.cumsum(ranked, axis=1, dtype=np.int32)


def _average_precision(ranked: np.ndarray, hits: np.ndarray) -> np.ndarray:
    found = hits[:, -1]
    precision_sum = np.where(ranked, hits / np.arange(1, ranked.shape[1] + 1), 0.0).sum(axis=1)
    return np.divide(precision_sum, found, out=np.zeros(len(found)), where=found > 0)


def _precision_sums(hits: np.ndarray, ks: np.ndarray) -> np.ndarray:
    return (hits[:, ks - 1] / ks).sum(axis=0)


def _pr_sums(hits: np.ndarray, n_rel: np.ndarray, cutoffs: np.ndarray) -> tuple[np.ndarray, ...]:
    at = hits[:, cutoffs - 1]
    recall = np.divide(at, n_rel[:, None], out=np.zeros(at.shape), where=n_rel[:, None] > 0)
    return (at / cutoffs).sum(axis=0), recall.sum(axis=0)


def _radius_sums(dist: np.ndarray, rel: np.ndarray, bits: int) -> tuple[np.ndarray, ...]:
    n, width = len(dist), bits + 1
    # One bincount over (query, distance) cells replaces bits + 1 passes of ``dist <= r``.
    cells = dist.astype(np.int64) + (np.arange(n) * width)[:, None]
    within = np.bincount(cells.ravel(), minlength=n * width).reshape(n, width).cumsum(axis=1)
    hits = np.bincount(cells[rel], minlength=n * width).reshape(n, width).cumsum(axis=1)
    n_rel = hits[:, -1:]
    precision = np.divide(hits, within, out=np.zeros(hits.shape), where=within > 0)
    recall = np.divide(hits, n_rel, out=np.zeros(hits.shape), where=n_rel > 0)
    return precision.sum(axis=0), recall.sum(axis=0)


def mean_average_precision(
    order: Any, rel: Any, top_k: int | None = None, *, chunk_elements: int = CHUNK_ELEMENTS
) -> float:
    """mAP@all (``top_k=None``) or the hashing literature's mAP@R (``top_k=R``)."""
    order, rel = _ranking(order, rel)
    nq, nd = rel.shape
    k = nd if top_k is None else _rank_limit(top_k, nd, "top_k")
    total = 0.0
    for rows in _row_blocks(nq, k, chunk_elements):
        total += _average_precision(*_ranked_hits(order[rows], rel[rows], k)).sum()
    return float(total / nq)


def precision_at_k(
    order: Any, rel: Any, ks: Sequence[int], *, chunk_elements: int = CHUNK_ELEMENTS
) -> np.ndarray:
    """Precision in the top k, averaged over queries, for each k in ``ks``."""
    order, rel = _ranking(order, rel)
    nq, nd = rel.shape
    ks_arr = _cutoffs(ks, nd)
    total = np.zeros(len(ks_arr))
    for rows in _row_blocks(nq, int(ks_arr.max()), chunk_elements):
        total += _precision_sums(_ranked_hits(order[rows], rel[rows], ks_arr.max())[1], ks_arr)
    return total / nq


def pr_curve(
    order: Any,
    rel: Any,
    points: int | Sequence[int] = 20,
    *,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[str, np.ndarray]:
    """Mean precision and recall at rank cut-offs: ``points`` log-spaced ones, or those given."""
    order, rel = _ranking(order, rel)
    nq, nd = rel.shape
    single = isinstance(points, int | np.integer)
    cutoffs = log_cutoffs(nd, int(points)) if single else _cutoffs(points, nd)
    precision, recall = np.zeros(len(cutoffs)), np.zeros(len(cutoffs))
    for rows in _row_blocks(nq, nd, chunk_elements):
        _, hits = _ranked_hits(order[rows], rel[rows], int(cutoffs.max()))
        p, r = _pr_sums(hits, rel[rows].sum(axis=1), cutoffs)
        precision += p
        recall += r
    return {"precision": precision / nq, "recall": recall / nq, "cutoffs": cutoffs}


def pr_curve_hamming_radius(
    dist: Any, rel: Any, bits: int, *, chunk_elements: int = CHUNK_ELEMENTS
) -> dict[str, np.ndarray]:
    """Mean precision and recall of the items within Hamming radius r, for r = 0..bits."""
    dist, rel = _ranking(dist, rel)
    if dist.min() < 0 or dist.max() > bits:
        raise ValueError(f"distances must lie in 0..{bits}, got {dist.min()}..{dist.max()}")
    nq, nd = rel.shape
    precision, recall = np.zeros(bits + 1), np.zeros(bits + 1)
    for rows in _row_blocks(nq, nd, chunk_elements):
        p, r = _radius_sums(dist[rows], rel[rows], bits)
        precision += p
        recall += r
    return {"precision": precision / nq, "recall": recall / nq, "radius": np.arange(bits + 1)}


def retrieval_report(
    query_codes: Any,
    db_codes: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    binary: bool,
    top_r: int,
    ks: Sequence[int],
    pr_points: int = 20,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[str, Any]:
    """All metrics for one query set against one database, as a JSON-ready dict."""
    q, d = _pair(query_codes, db_codes, ("query_codes", "db_codes"))
    ql, dl = _pair(query_labels, db_labels, ("query_labels", "db_labels"))
    if len(q) != len(ql) or len(d) != len(dl) or len(q) == 0 or len(d) == 0:
        raise ValueError(
            f"need one label row per code and non-empty sets: {len(q)} query codes, "
            f"{len(ql)} query labels, {len(d)} database codes, {len(dl)} database labels"
        )
    (nq, bits), nd = q.shape, len(d)
    top_r = _rank_limit(top_r, nd, "top_r")
    ks_arr, cutoffs = _cutoffs(ks, nd), log_cutoffs(nd, pr_points)
    sums = {"map": 0.0, "map@R": 0.0, "p@k": 0.0, "p": 0.0, "r": 0.0, "rp": 0.0, "rr": 0.0}
    # One ranking per block of queries feeds every metric, so each block is sorted once.
    for rows in _row_blocks(nq, nd, chunk_elements):
        rel = relevance(ql[rows], dl)
        if binary:
            dist = hamming_distances(q[rows], d)
            order = rank(dist, ascending=True)
            p, r = _radius_sums(dist, rel, bits)
            sums["rp"] += p
            sums["rr"] += r
        else:
            order = rank(cosine_similarity(q[rows], d), ascending=False)
        _add_ranking(sums, order, rel, top_r, ks_arr, cutoffs)
    mean = {key: np.asarray(value) / nq for key, value in sums.items()}
    report: dict[str, Any] = {
        "binary": binary,
        "num_queries": nq,
        "num_database": nd,
        **_ranking_fields(mean, top_r, ks_arr, cutoffs),
    }
    if binary:
        report["bits"] = bits
        report["pr_hamming"] = {
            "precision": mean["rp"].tolist(),
            "recall": mean["rr"].tolist(),
            "radius": list(range(bits + 1)),
        }
    return report


def asymmetric_scores(query_values: Any, db_signs: Any) -> np.ndarray:
    """-<q, b> (nq, nd) in float64: lower is nearer (the service's re-ranking score).

    Computed once per distinct database code, so items with equal codes score exactly equal
    and keep database order, as the service's write order breaks their ties.
    """
    q, d = _pair(query_values, db_signs, ("query_values", "db_signs"))
    distinct, inverse = np.unique(_signs(d, "db_signs"), axis=0, return_inverse=True)
    return -(q.astype(np.float64) @ distinct.T.astype(np.float64))[:, inverse.reshape(-1)]


def asymmetric_report(
    query_values: Any,
    db_signs: Any,
    query_labels: Any,
    db_labels: Any,
    *,
    ties_only: bool,
    top_r: int,
    ks: Sequence[int],
    pr_points: int = 20,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[str, Any]:
    """``retrieval_report``'s metrics for the asymmetric ranking of real queries against bits.

    ``ties_only``: rank by Hamming distance and let the score order only its ties; else rank
    by the score alone. Equal keys keep database order.
    """
    q, d = _pair(query_values, db_signs, ("query_values", "db_signs"))
    ql, dl = _pair(query_labels, db_labels, ("query_labels", "db_labels"))
    if len(q) != len(ql) or len(d) != len(dl) or len(q) == 0 or len(d) == 0:
        raise ValueError(
            f"need one label row per code and non-empty sets: {len(q)} query codes, "
            f"{len(ql)} query labels, {len(d)} database codes, {len(dl)} database labels"
        )
    nq, nd = len(q), len(d)
    top_r = _rank_limit(top_r, nd, "top_r")
    ks_arr, cutoffs = _cutoffs(ks, nd), log_cutoffs(nd, pr_points)
    query_signs = np.where(q >= 0, 1, -1)
    sums = {"map": 0.0, "map@R": 0.0, "p@k": 0.0, "p": 0.0, "r": 0.0}
    for rows in _row_blocks(nq, nd, chunk_elements):
        rel = relevance(ql[rows], dl)
        scores = asymmetric_scores(q[rows], d)
        if ties_only:
            order = np.lexsort((scores, hamming_distances(query_signs[rows], d)), axis=1)
        else:
            order = np.argsort(scores, axis=1, kind="stable")
        _add_ranking(sums, order, rel, top_r, ks_arr, cutoffs)
    mean = {key: np.asarray(value) / nq for key, value in sums.items()}
    return {
        "ranking": "hamming_asymmetric" if ties_only else "asymmetric",
        "num_queries": nq,
        "num_database": nd,
        **_ranking_fields(mean, top_r, ks_arr, cutoffs),
    }


def _add_ranking(
    sums: dict[str, Any],
    order: np.ndarray,
    rel: np.ndarray,
    top_r: int,
    ks_arr: np.ndarray,
    cutoffs: np.ndarray,
) -> None:
    """Add one block's ranking to the running sums of every rank metric."""
    ranked, hits = _ranked_hits(order, rel, rel.shape[1])
    sums["map"] += _average_precision(ranked, hits).sum()
    sums["map@R"] += _average_precision(ranked[:, :top_r], hits[:, :top_r]).sum()
    sums["p@k"] += _precision_sums(hits, ks_arr)
    p, r = _pr_sums(hits, rel.sum(axis=1), cutoffs)
    sums["p"] += p
    sums["r"] += r


def _ranking_fields(
    mean: dict[str, np.ndarray], top_r: int, ks_arr: np.ndarray, cutoffs: np.ndarray
) -> dict[str, Any]:
    return {
        "map": float(mean["map"]),
        "map@R": float(mean["map@R"]),
        "R": top_r,
        # String keys so the dict survives a JSON round trip unchanged.
        "precision_at_k": {
            str(k): float(v) for k, v in zip(ks_arr.tolist(), mean["p@k"], strict=True)
        },
        "pr_curve": {
            "precision": mean["p"].tolist(),
            "recall": mean["r"].tolist(),
            "cutoffs": cutoffs.tolist(),
        },
    }


def group_relevance(query_groups: Any, db_groups: Any) -> np.ndarray:
    """Boolean (nq, nd) matrix, True where a query and a database item share a group."""
    q, d = np.asarray(query_groups).reshape(-1), np.asarray(db_groups).reshape(-1)
    return q[:, None] == d[None, :]


def recall_at_k(order: Any, rel: Any, ks: Sequence[int]) -> np.ndarray:
    """For each k in ``ks``, the share of queries with at least one relevant item in the top k
    (image-caption retrieval's Recall@K)."""
    order, rel = _ranking(order, rel)
    ks_arr = _cutoffs(ks, rel.shape[1])
    found = np.zeros(len(ks_arr))
    for rows in _row_blocks(len(rel), int(ks_arr.max()), CHUNK_ELEMENTS):
        hits = _ranked_hits(order[rows], rel[rows], int(ks_arr.max()))[1]
        found += (hits[:, ks_arr - 1] > 0).sum(axis=0)
    return found / len(rel)


def group_retrieval_report(
    query_signs: Any,
    db_signs: Any,
    query_groups: Any,
    db_groups: Any,
    *,
    ks: Sequence[int] = (1, 5, 10),
    exclude: Any = None,
) -> dict[str, Any]:
    """mAP@all and Recall@K of binary codes with relevance by group (no labels needed).

    ``exclude`` (nq, nd) marks pairs left out of the ranking, e.g. a query's own row when
    queries and database are one set within one modality: they are neither relevant nor
    retrieved (ranked after every other item).
    """
    dist = hamming_distances(query_signs, db_signs).astype(np.int64)
    rel = group_relevance(query_groups, db_groups)
    if rel.shape != dist.shape:
        raise ValueError(f"groups give relevance {rel.shape} for distances {dist.shape}")
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        dist[exclude] = np.asarray(query_signs).shape[1] + 1  # past the farthest code
        rel = rel & ~exclude
    order = rank(dist, ascending=True)
    nd = rel.shape[1]
    cut = [k for k in ks if k <= nd] or [nd]
    return {
        "num_queries": int(rel.shape[0]),
        "num_database": int(nd),
        "map": mean_average_precision(order, rel),
        "recall_at_k": {
            str(k): float(v) for k, v in zip(cut, recall_at_k(order, rel, cut), strict=True)
        },
    }
