"""Re-ranking by the asymmetric score -<q, b>, against brute-force references on tie-heavy data."""

import itertools
from pathlib import Path

import numpy as np
import pytest

from index.base import SearchParams
from index.codes import hamming, unpack_codes
from index.collection import Collection
from index.factory import IndexConfig
from index.rerank import Candidates, asymmetric_scores, rerank, score_floor
from index.store import NewItem

CONFIGS = {
    "flat": IndexConfig(kind="flat"),
    "ivf": IndexConfig(kind="ivf"),
    "numpy": IndexConfig(backend="numpy"),
}
BIG_NPROBE = 1 << 20


def brute_scores(values: np.ndarray, codes: np.ndarray, bits: int) -> np.ndarray:
    return -(unpack_codes(codes, bits).astype(np.float64) @ values)


def tie_heavy(rng: np.random.Generator, n: int, bits: int, distinct: int) -> np.ndarray:
    """n codes drawn from `distinct` codes: most items share their code with others."""
    pool = rng.integers(0, 256, size=(distinct, bits // 8), dtype=np.uint8)
    return pool[rng.integers(0, distinct, size=n)]


@pytest.mark.parametrize("bits", [8, 16, 64])
def test_asymmetric_scores_match_brute_force_and_equal_codes_score_equal(bits: int):
    rng = np.random.default_rng(bits)
    codes = tie_heavy(rng, 300, bits, distinct=7)
    values = np.tanh(rng.normal(size=bits) * 2)
    got = asymmetric_scores(values, codes)
    np.testing.assert_allclose(got, brute_scores(values, codes, bits), rtol=0, atol=1e-12)
    for code in np.unique(codes, axis=0):
        same = (codes == code).all(axis=1)
        assert len(set(got[same].tolist())) == 1  # ties stay exact ties: write order decides


def test_score_floor_is_the_lowest_score_at_each_distance_or_more():
    rng = np.random.default_rng(3)
    values = np.tanh(rng.normal(size=8))
    every = np.arange(256, dtype=np.uint8)[:, None]
    scores = brute_scores(values, every, 8)
    query = np.packbits(values >= 0)
    distances = hamming(every, query)
    for d in range(9):
        assert score_floor(values, d) == pytest.approx(scores[distances >= d].min(), abs=1e-12)


def fetch_from(codes: np.ndarray, query: np.ndarray) -> object:
    """A pool fetch over plain arrays, nearest first by (distance, write order)."""
    distances = hamming(codes, query)
    order = np.lexsort((np.arange(len(codes)), distances))

    def fetch(pool: int) -> Candidates:
        rows = order[:pool]
        return Candidates(
            ids=rows.astype(np.int64),
            distances=distances[rows],
            codes=codes[rows],
            seqs=rows.astype(np.int64),
            exhausted=pool >= len(codes),
        )

    return fetch


@pytest.mark.parametrize("ranking", ["asymmetric", "hamming_asymmetric"])
def test_rerank_is_exact_whenever_it_says_so(ranking: str):
    rng = np.random.default_rng(11)
    bits, n = 16, 2000
    codes = tie_heavy(rng, n, bits, distinct=40)
    proofs = 0
    for trial in range(30):
        values = np.tanh(rng.normal(size=bits) * 1.5)
        query = np.packbits(values >= 0)
        scores = brute_scores(values, codes, bits)
        keys = (
            (np.arange(n), scores)
            if ranking == "asymmetric"
            else (np.arange(n), scores, hamming(codes, query))
        )
        want = np.lexsort(keys)
        k = 1 + trial % 12
        for max_pool in (64, 256, n):
            ranked = rerank(fetch_from(codes, query), values, k, ranking, max_pool=max_pool)
            got = ranked.candidates.ids[ranked.rows]
            if max_pool >= n:
                assert ranked.exact
            if ranked.exact:
                proofs += 1
                np.testing.assert_array_equal(got, want[:k])
                np.testing.assert_allclose(ranked.scores, scores[want[:k]], atol=1e-12)
    assert proofs > 30  # the small pools also prove some answers, not only the full one


def store_items(collection: Collection, rng: np.random.Generator, n: int, bits: int) -> None:
    codes = tie_heavy(rng, n, bits, distinct=25)
    items = [
        NewItem(
            "image" if i % 3 else "text",
            codes[i],
            client_id=f"c{i}",
            metadata={"half": int(i % 2)},
        )
        for i in range(n)
    ]
    collection.upsert(items)
    # Rewrites move items to the end of the write order, away from id order; one moves modality.
    again = [items[i] for i in range(0, n, 7)] + [NewItem("text", codes[1], client_id="c1")]
    collection.upsert(again)


def everything(collection: Collection) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    ids, modalities, codes, seqs = collection.store.code_rows(range(1, 10_000))
    return ids, modalities, codes, seqs


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("ranking", ["asymmetric", "hamming_asymmetric"])
def test_collection_top_k_equals_sorting_all_items_when_the_pool_covers_them(
    tmp_path: Path, config: IndexConfig, ranking: str
):
    rng = np.random.default_rng(5)
    bits = 16
    collection = Collection.open(tmp_path, bits, config)
    store_items(collection, rng, 400, bits)
    ids, modalities, codes, seqs = everything(collection)
    for trial, where in itertools.product(range(6), (None, {"half": 1})):
        values = np.tanh(rng.normal(size=(1, bits)))
        k = 5 + 7 * trial
        got = collection.search_values(
            values,
            k,
            ranking,
            where=where,
            params=SearchParams(nprobe=BIG_NPROBE),
            max_pool=len(ids),
        )[0]
        keep = np.ones(len(ids), bool)
        if where is not None:
            stored = collection.store.get_many(ids.tolist())
            keep = np.array([stored[int(i)].metadata.get("half") == 1 for i in ids])
        scores = brute_scores(values[0], codes, bits)
        distances = hamming(codes, np.packbits(values[0] >= 0))
        # Equal scores fall as Collection.search orders equal distances: by modality
        # (sorted names, the default order), then write order.
        rank = np.unique(modalities, return_inverse=True)[1]
        keys = (seqs, rank, scores) if ranking == "asymmetric" else (seqs, rank, scores, distances)
        order = [r for r in np.lexsort(keys) if keep[r]][:k]
        assert [h.id for h in got] == ids[order].tolist()
        assert [h.modality for h in got] == [modalities[r] for r in order]
        assert [h.distance for h in got] == distances[order].tolist()
        np.testing.assert_allclose([h.score for h in got], scores[order], atol=1e-12)
    collection.close()


def test_collection_hamming_ranking_of_values_is_the_code_search(tmp_path: Path):
    rng = np.random.default_rng(8)
    collection = Collection.open(tmp_path, 16, CONFIGS["flat"])
    store_items(collection, rng, 200, 16)
    values = np.tanh(rng.normal(size=(3, 16)))
    got = collection.search_values(values, 9, "hamming")
    assert got == collection.search(np.packbits(values >= 0, axis=1), 9)
    assert all(h.score is None for row in got for h in row)
    with pytest.raises(ValueError, match="16"):
        collection.search_values(values[:, :8], 9, "asymmetric")
    collection.close()
