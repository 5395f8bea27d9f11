"""Query / database / train index splits for retrieval evaluation, deterministic from a seed.

Semantics of a manifest's ``split`` column (`split_from_column`):

- ``query`` and ``test``: queries (held out; never trained on, never in the database).
- ``train``: trained on; also the database (retrieval set) unless some row says ``database``.
- ``database``: the retrieval set only (not trained on). If any row says ``database``, the
  database is exactly those rows and ``train`` rows are not searched.
- ``val``: validation only (`Split.val`): neither trained on, queried nor searched.

Without a split column, `standard_split` with ``n_query`` defaulting to `default_n_query`
(10%, at least 1) and ``n_train`` to the whole database; the sizes only apply then.

All index arrays are int64 and sorted ascending.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from model.data.manifest import SPLIT_NAMES
from model.data.records import DataError


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class Split:
    """Row indices of the queries, the database (retrieval set), the training set and validation."""

    query: np.ndarray
    database: np.ndarray
    train: np.ndarray
    val: np.ndarray = field(default_factory=_empty)


def standard_split(n: int, *, n_query: int, n_train: int, seed: int) -> Split:
    """Random queries, the rest the database, and `n_train` training items from the database."""
    if not 1 <= n_query < n:
        raise ValueError(f"n_query must be in [1, {n - 1}] for {n} items, got {n_query}")
    if not 1 <= n_train <= n - n_query:
        raise ValueError(
            f"n_train must be in [1, {n - n_query}] (the database size), got {n_train}"
        )
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    database = perm[n_query:]
    train = rng.choice(database, size=n_train, replace=False)
    return Split(query=_sorted(perm[:n_query]), database=_sorted(database), train=_sorted(train))


def fixed_split(
    train_idx: Sequence[int] | np.ndarray, test_idx: Sequence[int] | np.ndarray
) -> Split:
    """A published split (e.g. Wikipedia): test items query the train items, also trained on."""
    train, test = _sorted(train_idx), _sorted(test_idx)
    if np.intersect1d(train, test).size:
        raise ValueError("fixed_split: train and test indices overlap")
    return Split(query=test, database=train, train=train)


def default_n_query(n: int) -> int:
    """Queries for a dataset without a split: 10% (at least 1, leaving at least 1 to search)."""
    if n < 2:
        raise ValueError(f"need at least 2 items to split into queries and a database, got {n}")
    return min(max(1, round(0.1 * n)), n - 1)


def split_from_column(
    splits: Sequence[str] | None,
    n: int,
    *,
    n_query: int | None = None,
    n_train: int | None = None,
    seed: int = 0,
) -> Split:
    """Split by a manifest's split column; without one, `standard_split` with the given sizes."""
    if splits is None:
        n_query = default_n_query(n) if n_query is None else n_query
        n_train = n - n_query if n_train is None else n_train
        return standard_split(n, n_query=n_query, n_train=n_train, seed=seed)
    if len(splits) != n:
        raise ValueError(f"split column has {len(splits)} entries for {n} items")
    values = np.asarray([s.strip().lower() for s in splits], dtype=object)
    for i, s in enumerate(values):
        if s not in SPLIT_NAMES:
            raise DataError(f"unknown split {s!r}; use one of: {', '.join(SPLIT_NAMES)}", row=i + 1)

    def rows(*names: str) -> np.ndarray:
        return np.flatnonzero(np.isin(values, names)).astype(np.int64)

    query, train, database = rows("query", "test"), rows("train"), rows("database")
    if not query.size:
        raise DataError("split column has no 'query' or 'test' rows; mark some items as queries")
    if not train.size:
        raise DataError("split column has no 'train' rows; mark the items to train on")
    return Split(
        query=query,
        database=database if database.size else train,
        train=train,
        val=rows("val"),
    )


def _sorted(idx: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.sort(np.asarray(idx, dtype=np.int64).reshape(-1))


def by_group(split_of_groups: Split, groups: np.ndarray) -> Split:
    """Row indices for a split drawn over group numbers: a group's rows stay together, so a
    held-out photo's captions are never trained on."""

    def rows(chosen: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(groups, chosen)).astype(np.int64)

    return Split(
        query=rows(split_of_groups.query),
        database=rows(split_of_groups.database),
        train=rows(split_of_groups.train),
        val=rows(split_of_groups.val),
    )


def check_groups_unsplit(splits: Sequence[str], groups: np.ndarray, ids: Sequence[str]) -> None:
    """Refuse a split column that puts rows of one group on both sides of the split."""
    seen: dict[int, str] = {}
    for i, (s, g) in enumerate(zip(splits, groups.tolist(), strict=True)):
        s = s.strip().lower()
        if seen.setdefault(g, s) != s:
            raise DataError(
                f"rows of one group have different splits ({seen[g]!r} and {s!r}, "
                f"e.g. {ids[i]!r}); give every row of a group the same split",
                row=i + 1,
            )
