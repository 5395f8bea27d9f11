"""Deterministic top-k from an approximate-order candidate search.

FAISS breaks distance ties in its own (heap) order. To return exactly what the
reference returns, candidates are re-ranked by (distance, insertion sequence),
and the candidate count is doubled until the tie group at the k-th distance is
complete, so no tied item with an earlier sequence can be missing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from index.base import PAD, SearchResult, empty_result

#: search(rows, kk) -> (distances int32 (len(rows), kk), ids int64 (len(rows), kk)), -1 = none.
CandidateSearch = Callable[
    [npt.NDArray[np.intp], int], tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]
]
#: Map an int64 id array to its insertion sequence (any value for id -1).
SeqLookup = Callable[[npt.NDArray[np.int64]], npt.NDArray[np.int64]]

_FAR = np.iinfo(np.int32).max


def top_k_by_sequence(
    search: CandidateSearch, nq: int, n: int, k: int, seq_of: SeqLookup
) -> SearchResult:
    """Return the top k per query ordered by (distance, insertion sequence)."""
    out = empty_result(nq, k)
    todo = np.arange(nq, dtype=np.intp)
    kk = min(n, 2 * k)
    while todo.size and kk > 0:
        dist, ids = search(todo, kk)
        kth = min(k, kk) - 1
        complete = (kk >= n) | (ids[:, -1] < 0) | (dist[:, -1] > dist[:, kth])
        rows = todo[complete]
        if rows.size:
            top_ids, top_dist = _order(dist[complete], ids[complete], seq_of, k)
            out.ids[rows, : top_ids.shape[1]] = top_ids
            out.distances[rows, : top_ids.shape[1]] = top_dist
        todo = todo[~complete]
        kk = min(n, 2 * kk)
    return out


def _order(
    dist: npt.NDArray[np.int32], ids: npt.NDArray[np.int64], seq_of: SeqLookup, k: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    missing = ids < 0
    dist = np.where(missing, _FAR, dist)
    seq = seq_of(ids)
    top = np.lexsort((seq, dist), axis=1)[:, :k]
    top_ids = np.take_along_axis(ids, top, 1)
    top_dist = np.take_along_axis(dist, top, 1)
    top_dist[top_ids < 0] = PAD
    return top_ids, top_dist.astype(np.int32)
