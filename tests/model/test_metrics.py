"""Retrieval metrics against plain-Python references and hand-worked cases; plots as real PNGs."""

import json
import math

import numpy as np
import pytest

from model.metrics import (
    asymmetric_report,
    asymmetric_scores,
    cosine_similarity,
    hamming_distances,
    log_cutoffs,
    mean_average_precision,
    pr_curve,
    pr_curve_hamming_radius,
    precision_at_k,
    rank,
    relevance,
    retrieval_report,
)
from model.plots import plot_pr_curves, plot_precision_at_k

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Plain-Python references: loops over queries and ranks, nothing vectorised.


def ref_relevance(query_labels, db_labels):
    return [
        [any(a and b for a, b in zip(q, d, strict=True)) for d in db_labels] for q in query_labels
    ]


def ref_hamming(query_signs, db_signs):
    return [[sum(a != b for a, b in zip(q, d, strict=True)) for d in db_signs] for q in query_signs]


def ref_cosine(query_emb, db_emb):
    def norm(v):
        return math.sqrt(math.fsum(x * x for x in v))

    out = []
    for q in query_emb:
        row = []
        for d in db_emb:
            denom = norm(q) * norm(d)
            dot = math.fsum(a * b for a, b in zip(q, d, strict=True))
            row.append(dot / denom if denom else 0.0)
        out.append(row)
    return out


def ref_order(row, ascending):
    def key(j):
        return (row[j] if ascending else -row[j], j)

    return sorted(range(len(row)), key=key)


def ref_ap(ranked_rel, top_k=None):
    k = len(ranked_rel) if top_k is None else top_k
    hits, total = 0, 0.0
    for i, r in enumerate(ranked_rel[:k], start=1):
        if r:
            hits += 1
            total += hits / i
    return total / hits if hits else 0.0


def ref_precision_recall_at(ranked_rel, cut):
    hits = sum(ranked_rel[:cut])
    n_rel = sum(ranked_rel)
    return hits / cut, (hits / n_rel if n_rel else 0.0)


def ref_radius(dist_row, rel_row, radius):
    retrieved = [j for j, d in enumerate(dist_row) if d <= radius]
    hits = sum(1 for j in retrieved if rel_row[j])
    n_rel = sum(1 for r in rel_row if r)
    return (hits / len(retrieved) if retrieved else 0.0), (hits / n_rel if n_rel else 0.0)


def ranked_lists(dist_or_sim, rel, ascending):
    out = []
    for values, rel_row in zip(dist_or_sim, rel, strict=True):
        out.append([bool(rel_row[j]) for j in ref_order(list(values), ascending)])
    return out


def assert_nested_close(got, want):
    """Equality of nested dicts/lists/scalars, floats to 1e-12 (pytest.approx is flat only)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for key in want:
            assert_nested_close(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_nested_close(g, w)
    else:
        assert got == pytest.approx(want, abs=1e-12)


def make_case(seed, multi_label, nq=9, nd=37, bits=6, n_labels=5, dim=4):
    """Few bits and a 4-d embedding space of ±1 directions, so ties are everywhere."""
    rng = np.random.default_rng(seed)
    if multi_label:
        # Sparse rows: some queries and items carry no label, so some queries have no match.
        query_labels = (rng.random((nq, n_labels)) < 0.3).astype(np.int8)
        db_labels = (rng.random((nd, n_labels)) < 0.3).astype(np.int8)
    else:
        query_labels = np.eye(n_labels, dtype=np.int8)[rng.integers(0, n_labels, nq)]
        db_labels = np.eye(n_labels, dtype=np.int8)[rng.integers(0, n_labels, nd)]
    query_signs = rng.choice([-1, 1], size=(nq, bits)).astype(np.int8)
    db_signs = rng.choice([-1, 1], size=(nd, bits)).astype(np.int8)
    # Normalised ±1 vectors in 4-d have entries ±0.5, so every cosine is exact and ties are exact.
    query_emb = rng.choice([-1.0, 1.0], size=(nq, dim)) * rng.uniform(0.5, 3.0, (nq, 1))
    db_emb = rng.choice([-1.0, 1.0], size=(nd, dim)) * rng.uniform(0.5, 3.0, (nd, 1))
    db_emb[3] = 0.0
    return {
        "query_labels": query_labels,
        "db_labels": db_labels,
        "query_signs": query_signs,
        "db_signs": db_signs,
        "query_emb": query_emb,
        "db_emb": db_emb,
        "bits": bits,
    }


CASES = [(seed, multi) for seed in (0, 1, 2) for multi in (True, False)]
CASE_IDS = [f"seed{seed}-{'multi' if multi else 'single'}" for seed, multi in CASES]


@pytest.fixture(params=CASES, ids=CASE_IDS)
def case(request):
    return make_case(*request.param)


@pytest.fixture(params=["binary", "continuous"])
def ranked_case(request, case):
    """A case ranked both ways, with the reference's ranked relevance lists alongside."""
    rel = relevance(case["query_labels"], case["db_labels"])
    if request.param == "binary":
        values = hamming_distances(case["query_signs"], case["db_signs"])
        order = rank(values, ascending=True)
        ref_values, ascending = ref_hamming(case["query_signs"], case["db_signs"]), True
    else:
        values = cosine_similarity(case["query_emb"], case["db_emb"])
        order = rank(values, ascending=False)
        ref_values, ascending = ref_cosine(case["query_emb"], case["db_emb"]), False
    ref_ranked = ranked_lists(
        ref_values, ref_relevance(case["query_labels"], case["db_labels"]), ascending
    )
    return {**case, "rel": rel, "order": order, "ref_ranked": ref_ranked, "kind": request.param}


def test_relevance_matches_reference(case):
    got = relevance(case["query_labels"], case["db_labels"])
    assert got.dtype == bool
    assert got.tolist() == ref_relevance(case["query_labels"], case["db_labels"])


def test_hamming_matches_bit_counting(case):
    got = hamming_distances(case["query_signs"], case["db_signs"])
    assert got.dtype == np.uint8
    assert got.tolist() == ref_hamming(case["query_signs"], case["db_signs"])


def test_hamming_long_codes_are_exact_and_widen():
    rng = np.random.default_rng(5)
    q, d = rng.choice([-1, 1], size=(3, 300)), rng.choice([-1.0, 1.0], size=(4, 300))
    got = hamming_distances(q, d)
    assert got.dtype == np.uint16
    assert got.tolist() == ref_hamming(q, d)


def test_hamming_rejects_codes_that_are_not_signs():
    with pytest.raises(ValueError, match="-1 and \\+1"):
        hamming_distances(np.array([[1, 0, -1]]), np.array([[1, 1, -1]]))
    with pytest.raises(ValueError, match="columns"):
        hamming_distances(np.ones((1, 4)), np.ones((2, 8)))


def test_cosine_matches_reference(case):
    got = cosine_similarity(case["query_emb"], case["db_emb"])
    np.testing.assert_allclose(got, ref_cosine(case["query_emb"], case["db_emb"]), atol=1e-6)
    assert np.all(got[:, 3] == 0), "a zero vector has similarity 0"


def test_rank_matches_reference_with_ties(ranked_case):
    c = ranked_case
    if c["kind"] == "binary":
        ref_values, ascending = ref_hamming(c["query_signs"], c["db_signs"]), True
    else:
        ref_values, ascending = ref_cosine(c["query_emb"], c["db_emb"]), False
    assert any(len(set(row)) < len(row) for row in ref_values), "case must contain ties"
    assert c["order"].tolist() == [ref_order(row, ascending) for row in ref_values]


@pytest.mark.parametrize("top_k", [None, 1, 5, 20, 37])
def test_map_matches_reference(ranked_case, top_k):
    c = ranked_case
    want = sum(ref_ap(r, top_k) for r in c["ref_ranked"]) / len(c["ref_ranked"])
    got = mean_average_precision(c["order"], c["rel"], top_k)
    assert got == pytest.approx(want, abs=1e-12)
    # Row-at-a-time blocks must give the same answer as one block.
    assert mean_average_precision(c["order"], c["rel"], top_k, chunk_elements=1) == pytest.approx(
        want, abs=1e-12
    )


def test_precision_at_k_matches_reference(ranked_case):
    c = ranked_case
    ks = [1, 3, 10, 37]
    want = [sum(ref_precision_recall_at(r, k)[0] for r in c["ref_ranked"]) / 9 for k in ks]
    np.testing.assert_allclose(precision_at_k(c["order"], c["rel"], ks), want, atol=1e-12)
    np.testing.assert_allclose(
        precision_at_k(c["order"], c["rel"], ks, chunk_elements=1), want, atol=1e-12
    )


def test_pr_curve_matches_reference(ranked_case):
    c = ranked_case
    curve = pr_curve(c["order"], c["rel"], 8, chunk_elements=50)
    assert curve["cutoffs"].tolist() == log_cutoffs(37, 8).tolist()
    for i, cut in enumerate(curve["cutoffs"].tolist()):
        pairs = [ref_precision_recall_at(r, cut) for r in c["ref_ranked"]]
        assert curve["precision"][i] == pytest.approx(sum(p for p, _ in pairs) / 9, abs=1e-12)
        assert curve["recall"][i] == pytest.approx(sum(r for _, r in pairs) / 9, abs=1e-12)


def test_pr_curve_hamming_radius_matches_reference(case):
    dist = hamming_distances(case["query_signs"], case["db_signs"])
    rel = relevance(case["query_labels"], case["db_labels"])
    bits = case["bits"]
    curve = pr_curve_hamming_radius(dist, rel, bits, chunk_elements=40)
    ref_dist = ref_hamming(case["query_signs"], case["db_signs"])
    ref_rel = ref_relevance(case["query_labels"], case["db_labels"])
    assert curve["radius"].tolist() == list(range(bits + 1))
    for radius in range(bits + 1):
        pairs = [ref_radius(d, r, radius) for d, r in zip(ref_dist, ref_rel, strict=True)]
        assert curve["precision"][radius] == pytest.approx(sum(p for p, _ in pairs) / 9)
        assert curve["recall"][radius] == pytest.approx(sum(r for _, r in pairs) / 9)


# Hand-worked cases.


def test_average_precision_by_hand():
    # Ranked relevance 1 0 1 0 1 (identity order):
    # AP@all = (1/1 + 2/3 + 3/5) / 3 = 34/45; AP@3 = (1/1 + 2/3) / 2 = 5/6; AP@2 = (1/1) / 1.
    rel = np.array([[1, 0, 1, 0, 1]], dtype=bool)
    order = np.arange(5)[None, :]
    assert mean_average_precision(order, rel) == pytest.approx(34 / 45)
    assert mean_average_precision(order, rel, 3) == pytest.approx(5 / 6)
    assert mean_average_precision(order, rel, 2) == pytest.approx(1.0)
    # Precision at 1, 2, 5 = 1/1, 1/2, 3/5.
    np.testing.assert_allclose(precision_at_k(order, rel, [1, 2, 5]), [1.0, 0.5, 0.6])


def test_map_at_r_divides_by_relevant_retrieved_and_zero_when_none():
    # Ranked 0 0 1: nothing relevant in the top 2 scores 0; in the top 3, (1/3) / 1.
    rel = np.array([[0, 0, 1]], dtype=bool)
    order = np.arange(3)[None, :]
    assert mean_average_precision(order, rel, 2) == 0.0
    assert mean_average_precision(order, rel, 3) == pytest.approx(1 / 3)
    # Ranked 1 0 0 1 with R=2: one relevant retrieved, so AP@2 = 1, not 1/2 (total relevant).
    assert mean_average_precision(np.arange(4)[None, :], np.array([[1, 0, 0, 1]]), 2) == 1.0


def test_query_without_relevant_items_counts_as_zero():
    # Query 0 ranks 0 1 -> AP 1/2; query 1 has no relevant item -> AP 0 and recall 0.
    rel = np.array([[0, 1], [0, 0]], dtype=bool)
    order = np.array([[0, 1], [0, 1]])
    assert mean_average_precision(order, rel) == pytest.approx(0.25)
    assert pr_curve(order, rel, [2])["recall"].tolist() == [0.5]


def test_ties_are_broken_by_database_order():
    # Query 1111. Item 2 is at distance 0 and relevant; items 0 and 1 tie at distance 1.
    query = np.array([[1, 1, 1, 1]])
    db = np.array([[1, 1, 1, -1], [1, 1, -1, 1], [1, 1, 1, 1]])
    dist = hamming_distances(query, db)
    assert dist.tolist() == [[1, 1, 0]]
    assert rank(dist, ascending=True).tolist() == [[2, 0, 1]]
    query_labels = np.array([[1, 0]])
    # The relevant tied item first in database order: ranked 1 1 0 -> AP = (1/1 + 2/2) / 2 = 1.
    first = np.array([[1, 0], [0, 1], [1, 0]])
    # Second in database order: ranked 1 0 1 -> AP = (1/1 + 2/3) / 2 = 5/6.
    second = np.array([[0, 1], [1, 0], [1, 0]])
    for db_labels, want in [(first, 1.0), (second, 5 / 6)]:
        report = retrieval_report(query, db, query_labels, db_labels, binary=True, top_r=3, ks=[1])
        assert report["map"] == pytest.approx(want)
    # Same rule for similarities sorted descending: equal scores keep database order.
    sims = np.array([[0.5, 0.9, 0.5, 0.9]], dtype=np.float32)
    assert rank(sims, ascending=False).tolist() == [[1, 3, 0, 2]]
    assert rank(np.array([[3, 7, 3, 7]], dtype=np.uint8), ascending=False).tolist() == [
        [1, 3, 0, 2]
    ]


def test_hamming_radius_by_hand():
    # Query 0: distances 0 1 1 3, relevant 1 0 1 1 (3 relevant).
    #   r=0 -> {0}: P 1, R 1/3; r=1,2 -> {0,1,2}: P 2/3, R 2/3; r=3 -> all: P 3/4, R 1.
    # Query 1: distances 1 2 2 2, relevant 1 0 0 0: r=0 retrieves nothing -> P 0, R 0;
    #   r=1 -> P 1, R 1; r=2,3 -> P 1/4, R 1.
    dist = np.array([[0, 1, 1, 3], [1, 2, 2, 2]])
    rel = np.array([[1, 0, 1, 1], [1, 0, 0, 0]], dtype=bool)
    curve = pr_curve_hamming_radius(dist, rel, 3)
    np.testing.assert_allclose(
        curve["precision"], [(1 + 0) / 2, (2 / 3 + 1) / 2, (2 / 3 + 1 / 4) / 2, (3 / 4 + 1 / 4) / 2]
    )
    np.testing.assert_allclose(curve["recall"], [(1 / 3) / 2, (2 / 3 + 1) / 2, (2 / 3 + 1) / 2, 1])
    with pytest.raises(ValueError, match="0..3"):
        pr_curve_hamming_radius(dist + 1, rel, 3)


def test_log_cutoffs():
    cuts = log_cutoffs(14000, 20).tolist()
    assert cuts[0] == 1 and cuts[-1] == 14000 and len(cuts) == 20
    assert cuts == sorted(set(cuts))
    assert log_cutoffs(5, 20).tolist() == [1, 2, 3, 4, 5]


# The report.


@pytest.mark.parametrize("binary", [True, False])
def test_report_agrees_with_the_metric_functions(case, binary):
    codes = ("query_signs", "db_signs") if binary else ("query_emb", "db_emb")
    args = (case[codes[0]], case[codes[1]], case["query_labels"], case["db_labels"])
    report = retrieval_report(*args, binary=binary, top_r=10, ks=[1, 5, 10], pr_points=6)
    # Blocks of a single query row must not change anything.
    small = retrieval_report(
        *args, binary=binary, top_r=10, ks=[1, 5, 10], pr_points=6, chunk_elements=1
    )
    assert_nested_close(small, report)
    assert json.loads(json.dumps(report)) == report

    rel = relevance(case["query_labels"], case["db_labels"])
    if binary:
        dist = hamming_distances(case["query_signs"], case["db_signs"])
        order = rank(dist, ascending=True)
    else:
        order = rank(cosine_similarity(case["query_emb"], case["db_emb"]), ascending=False)
    assert report["map"] == pytest.approx(mean_average_precision(order, rel))
    assert report["map@R"] == pytest.approx(mean_average_precision(order, rel, 10))
    assert report["R"] == 10
    p_at_k = precision_at_k(order, rel, [1, 5, 10])
    assert report["precision_at_k"] == pytest.approx(
        dict(zip(["1", "5", "10"], p_at_k, strict=True))
    )
    curve = pr_curve(order, rel, 6)
    assert report["pr_curve"]["cutoffs"] == curve["cutoffs"].tolist()
    assert report["pr_curve"]["precision"] == pytest.approx(curve["precision"].tolist())
    assert report["pr_curve"]["recall"] == pytest.approx(curve["recall"].tolist())
    if binary:
        radius = pr_curve_hamming_radius(dist, rel, case["bits"])
        assert report["bits"] == case["bits"]
        assert report["pr_hamming"]["precision"] == pytest.approx(radius["precision"].tolist())
        assert report["pr_hamming"]["recall"] == pytest.approx(radius["recall"].tolist())
    else:
        assert "pr_hamming" not in report


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"top_r": 38, "ks": [1]}, "top_r must be an integer in 1..37"),
        ({"top_r": 0, "ks": [1]}, "top_r"),
        ({"top_r": 5, "ks": [0, 5]}, "cut-offs must lie in 1..37"),
        ({"top_r": 5, "ks": [1.5]}, "integers"),
    ],
)
def test_report_rejects_bad_cutoffs(kwargs, match):
    c = make_case(0, True)
    with pytest.raises(ValueError, match=match):
        retrieval_report(
            c["query_signs"],
            c["db_signs"],
            c["query_labels"],
            c["db_labels"],
            binary=True,
            **kwargs,
        )


def test_report_rejects_mismatched_labels():
    c = make_case(0, True)
    with pytest.raises(ValueError, match="one label row per code"):
        retrieval_report(
            c["query_signs"],
            c["db_signs"],
            c["query_labels"][:-1],
            c["db_labels"],
            binary=True,
            top_r=5,
            ks=[1],
        )


# Plots.


def test_plots_write_valid_png(tmp_path):
    curves = {
        "image→text": {"precision": [1.0, 0.8, 0.5], "recall": [0.1, 0.4, 1.0]},
        "text→image": {"precision": [0.9, 0.7, 0.5], "recall": [0.1, 0.5, 1.0]},
    }
    pr_path = plot_pr_curves(curves, tmp_path / "pr.png")
    # JSON reports carry K as strings; plain ints must work as well.
    p_at_k = {"image→text": {"1": 0.9, "100": 0.7, "10": 0.8}, "text→image": {1: 0.8, 10: 0.7}}
    pk_path = plot_precision_at_k(p_at_k, tmp_path / "pk.png")
    for path in (pr_path, pk_path):
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pk.png", "pr.png"], "no temp files left"


def test_plots_reject_nothing_to_plot(tmp_path):
    with pytest.raises(ValueError, match="no curves"):
        plot_pr_curves({}, tmp_path / "pr.png")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("ties_only", [False, True], ids=["score", "hamming-then-score"])
def test_asymmetric_report_matches_reference_on_tie_heavy_codes(case, ties_only):
    rng = np.random.default_rng(case["bits"])
    # 37 items on 6 bits: many share a code, so the score's own ties fall by database order.
    values = np.tanh(rng.normal(size=(len(case["query_signs"]), case["bits"])) * 1.5)
    db = case["db_signs"]
    ref_scores = [
        [-math.fsum(float(a) * float(b) for a, b in zip(q, d, strict=True)) for d in db]
        for q in values
    ]
    got_scores = asymmetric_scores(values, db)
    np.testing.assert_allclose(got_scores, ref_scores, atol=1e-12)
    for row in got_scores:  # equal codes, exactly equal scores
        for code in np.unique(db, axis=0):
            assert len(set(row[(db == code).all(axis=1)].tolist())) == 1
    signs_q = np.where(values >= 0, 1, -1)
    dist = ref_hamming(signs_q, db)
    rel = ref_relevance(case["query_labels"], case["db_labels"])
    ranked = []
    for i, row in enumerate(ref_scores):
        key = (
            (lambda j, i=i, row=row: (dist[i][j], row[j], j))
            if ties_only
            else (lambda j, row=row: (row[j], j))
        )
        ranked.append([bool(rel[i][j]) for j in sorted(range(len(db)), key=key)])
    report = asymmetric_report(
        values,
        db,
        case["query_labels"],
        case["db_labels"],
        ties_only=ties_only,
        top_r=10,
        ks=[1, 5, 20],
    )
    assert report["map"] == pytest.approx(np.mean([ref_ap(r) for r in ranked]), abs=1e-12)
    assert report["map@R"] == pytest.approx(np.mean([ref_ap(r, 10) for r in ranked]), abs=1e-12)
    for k in (1, 5, 20):
        want = np.mean([ref_precision_recall_at(r, k)[0] for r in ranked])
        assert report["precision_at_k"][str(k)] == pytest.approx(want, abs=1e-12)
    for cut, p, r in zip(
        *(report["pr_curve"][key] for key in ("cutoffs", "precision", "recall")), strict=True
    ):
        want = np.mean([ref_precision_recall_at(x, cut) for x in ranked], axis=0)
        assert (p, r) == pytest.approx(tuple(want), abs=1e-12)
