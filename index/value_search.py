"""Searching by real-valued query codes: the per-query re-ranking loop every backend shares.

A backend gives two things: its Hamming search for a batch of packed codes, and ``fetch``,
one query's ``pool`` nearest items with their codes and tie order (``index.rerank.Candidates``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from index.backend import Hit
from index.base import check_k
from index.rerank import Candidates, Ranking, check_values, rerank, value_queries

#: fetch(query, pool) -> that query's `pool` nearest items by Hamming distance, with codes.
FetchFor = Callable[[npt.NDArray[np.uint8], int], Candidates]


def search_by_values(
    values: npt.ArrayLike,
    codes: npt.ArrayLike | None,
    bits: int,
    k: int,
    ranking: Ranking,
    *,
    hamming_search: Callable[[npt.NDArray[np.uint8]], list[list[Hit]]],
    fetch: FetchFor,
    max_pool: int,
) -> list[list[Hit]]:
    """Up to k hits per query under ``ranking``: "hamming" is the backend's own search of the
    queries' bits; the others re-rank each query's fetched pool by the asymmetric score."""
    rows, queries = value_queries(values, codes, bits)
    if ranking == "hamming":
        return hamming_search(queries)
    k = check_k(k)
    out = []
    for query, row in zip(queries, rows, strict=True):

        def fetch_pool(pool: int, query: npt.NDArray[np.uint8] = query) -> Candidates:
            return fetch(query, pool)

        ranked = rerank(
            fetch_pool,
            check_values(row, bits),
            k,
            ranking,
            max_pool=max_pool,
        )
        found = ranked.candidates
        out.append(
            [
                Hit(int(found.ids[r]), int(found.distances[r]), found.modalities[r], score)
                for r, score in zip(ranked.rows, ranked.scores.tolist(), strict=True)
            ]
        )
    return out
