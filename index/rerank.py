"""Re-ranking of Hamming candidates by the query's real-valued code (an asymmetric score).

A query encoded at search time has real values ``q`` (the hash layer's tanh outputs) besides
its bits; a stored item has only its ±1 bits ``b``. The asymmetric score ``-<q, b>`` (lower is
nearer) orders the items inside a Hamming distance by how confident the query was in the bits
that differ, with the stored side and the index unchanged.

With ``s`` the query's signs and ``S = sum |q_i|``, ``-<q, b> = -S + 2 * sum |q_i|`` over the
bits where ``b`` differs from ``s``: an item at Hamming distance at least ``d`` scores at least
``-S`` plus twice the ``d`` smallest ``|q_i|``. So candidates fetched by Hamming distance up to
``D`` hold the exact top k by score once the k-th best is below that bound at ``D``.

Two rankings:
- ``asymmetric``: by score alone, over a candidate pool that holds the top k once the bound
  proves it, else ``max_pool`` candidates;
- ``hamming_asymmetric``: by Hamming distance, the score breaking its ties; the pool grows
  until it holds the whole tie group at the k-th distance, or until ``max_pool``.
Ties in the score fall by write order (the store's seq), as Hamming ties do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from index.codes import validate_codes

Ranking = Literal["hamming", "asymmetric", "hamming_asymmetric"]
RANKINGS: tuple[Ranking, ...] = ("hamming", "asymmetric", "hamming_asymmetric")
#: The first pool holds this many candidates per wanted result (at least MIN_POOL).
POOL_FACTOR = 4
MIN_POOL = 64
#: The pool never grows past this many candidates: beyond it, the best of the pool is answered.
MAX_POOL = 4096
# Scores are sums of float64 terms in different orders; a bound closer than this is not proof.
_SLACK = 1e-9

#: Row v: the ±1 signs of byte value v's bits, most significant first (packbits order).
_BIT_SIGNS = (
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(np.float64) * 2 - 1
)


@dataclass(frozen=True)
class Candidates:
    """Pool of one query's candidates: ids, Hamming distances, codes and write order (seq)."""

    ids: npt.NDArray[np.int64]
    distances: npt.NDArray[np.int64]
    codes: npt.NDArray[np.uint8]
    seqs: npt.NDArray[np.int64]
    #: True when the pool holds every item the search can reach.
    exhausted: bool
    #: Each candidate's modality (a collection searches several indexes at once).
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ranked:
    """The re-ranked top k of one query: rows into the last pool, and their scores."""

    candidates: Candidates
    rows: npt.NDArray[np.intp]
    scores: npt.NDArray[np.float64]
    #: Whether the pool provably held the exact top k of the ranking (else it hit max_pool).
    exact: bool


#: fetch(pool) -> the query's `pool` nearest items by Hamming distance.
Fetch = Callable[[int], Candidates]


def check_values(values: npt.ArrayLike, bits: int) -> npt.NDArray[np.float64]:
    """One query's real-valued code as float64 (bits,), or ValueError."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (bits,):
        raise ValueError(f"a query's real-valued code must have {bits} values, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("a query's real-valued code must be finite")
    return arr


def value_queries(
    values: npt.ArrayLike, codes: npt.ArrayLike | None, bits: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.uint8]]:
    """Queries given as real-valued codes (nq, bits), and their packed bits: ``codes``, or
    by default the values' signs (0 counts as +1, as encoders pack them)."""
    rows = np.asarray(values, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] != bits:
        raise ValueError(f"values must be 2-D (queries, {bits}), got shape {rows.shape}")
    queries = np.packbits(rows >= 0, axis=1) if codes is None else validate_codes(codes, bits)
    if len(queries) != len(rows):
        raise ValueError(f"got {len(queries)} query codes for {len(rows)} rows of values")
    return rows, queries


def score_table(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """(bytes, 256) table: row j, column v is -<q, b> over byte j's bits when that byte is v."""
    return -(values.reshape(-1, 1, 8) * _BIT_SIGNS[None, :, :]).sum(axis=2)


def asymmetric_scores(
    values: npt.NDArray[np.float64], codes: npt.NDArray[np.uint8]
) -> npt.NDArray[np.float64]:
    """-<q, b> of packed codes (n, bytes) against one query's values (bits,).

    Byte tables summed in one fixed order: equal codes get bit-for-bit equal scores, so
    their order is the write order.
    """
    table = score_table(values)
    if not len(codes):
        return np.zeros(0, dtype=np.float64)
    return table[np.arange(codes.shape[1]), codes].sum(axis=1)


def score_floor(values: npt.NDArray[np.float64], distance: int) -> float:
    """The lowest score any item at Hamming distance >= ``distance`` can have."""
    magnitudes = np.sort(np.abs(values))
    return float(-magnitudes.sum() + 2 * magnitudes[: max(distance, 0)].sum())


def rerank(
    fetch: Fetch,
    values: npt.NDArray[np.float64],
    k: int,
    ranking: Ranking,
    *,
    max_pool: int = MAX_POOL,
) -> Ranked:
    """The top k of one query under ``ranking``, fetching a larger pool while it is not proof."""
    if ranking == "hamming":
        raise ValueError("the Hamming ranking needs no re-ranking")
    pool = max(min(POOL_FACTOR * k, max_pool), min(MIN_POOL, max_pool), k)
    while True:
        found = fetch(pool)
        scores = asymmetric_scores(values, found.codes)
        if ranking == "asymmetric":
            order = np.lexsort((found.seqs, scores))
        else:
            order = np.lexsort((found.seqs, scores, found.distances))
        top = order[:k]
        exact = found.exhausted or _proven(found, scores, top, values, k, ranking)
        if exact or pool >= max_pool:
            return Ranked(found, top.astype(np.intp), scores[top], exact)
        # A larger pool gives the same answer once one proves it, so growth only trades
        # fetches against their size. The score's bound is loose (it grows by the smallest
        # |q_i|), so a pool that does not prove it at first rarely does before max_pool: go
        # there at once instead of scanning the index again at every doubling. Hamming ties
        # at the k-th distance are usually covered by the next doubling.
        pool = max_pool if ranking == "asymmetric" else min(2 * pool, max_pool)


def _proven(
    found: Candidates,
    scores: npt.NDArray[np.float64],
    top: npt.NDArray[np.intp],
    values: npt.NDArray[np.float64],
    k: int,
    ranking: Ranking,
) -> bool:
    """Whether no item outside a full pool (farthest at distance D) could enter the top k.

    Items outside have distance >= D (those at D came after the pool's in write order).
    """
    if len(top) < k:
        return False
    farthest = int(found.distances.max())
    if ranking == "hamming_asymmetric":
        # Outside items at D would tie the k-th by distance and could beat it on score.
        return int(found.distances[top[-1]]) < farthest
    return float(scores[top[-1]]) < score_floor(values, farthest) - _SLACK
