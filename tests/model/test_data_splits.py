"""Query/database/train splits: sizes, disjointness, containment and determinism per seed."""

from __future__ import annotations

import numpy as np
import pytest

from model.data.records import DataError, PairedData, concat
from model.data.splits import (
    default_n_query,
    fixed_split,
    split_from_column,
    standard_split,
)


def test_standard_split_sizes_and_containment() -> None:
    s = standard_split(1000, n_query=100, n_train=500, seed=3)
    assert (len(s.query), len(s.database), len(s.train), len(s.val)) == (100, 900, 500, 0)
    assert np.intersect1d(s.query, s.database).size == 0
    np.testing.assert_array_equal(np.union1d(s.query, s.database), np.arange(1000))
    assert np.isin(s.train, s.database).all()
    assert len(np.unique(s.train)) == 500
    for idx in (s.query, s.database, s.train):
        assert idx.dtype == np.int64 and (np.diff(idx) > 0).all()


def test_standard_split_is_deterministic_per_seed() -> None:
    a, b = (standard_split(500, n_query=50, n_train=200, seed=7) for _ in range(2))
    c = standard_split(500, n_query=50, n_train=200, seed=8)
    for field in ("query", "database", "train"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.query, c.query)
    assert not np.array_equal(a.train, c.train)


def test_standard_split_matches_its_documented_recipe() -> None:
    rng = np.random.default_rng(11)
    perm = rng.permutation(50)
    train = rng.choice(perm[5:], size=20, replace=False)
    s = standard_split(50, n_query=5, n_train=20, seed=11)
    np.testing.assert_array_equal(s.query, np.sort(perm[:5]))
    np.testing.assert_array_equal(s.train, np.sort(train))


@pytest.mark.parametrize(
    ("n_query", "n_train"), [(0, 5), (10, 1), (3, 8), (3, 0)], ids=["no-q", "no-db", "big", "0"]
)
def test_standard_split_rejects_impossible_sizes(n_query: int, n_train: int) -> None:
    with pytest.raises(ValueError, match="must be in"):
        standard_split(10, n_query=n_query, n_train=n_train, seed=0)


def test_fixed_split() -> None:
    s = fixed_split(np.arange(5), [7, 5, 6])
    np.testing.assert_array_equal(s.query, [5, 6, 7])
    np.testing.assert_array_equal(s.database, np.arange(5))
    np.testing.assert_array_equal(s.train, np.arange(5))
    with pytest.raises(ValueError, match="overlap"):
        fixed_split([0, 1], [1, 2])


def test_column_train_is_database_unless_database_rows_exist() -> None:
    s = split_from_column(["train", "query", "train", "val", "test", "TRAIN "], 6)
    np.testing.assert_array_equal(s.query, [1, 4])
    np.testing.assert_array_equal(s.train, [0, 2, 5])
    np.testing.assert_array_equal(s.database, [0, 2, 5])
    np.testing.assert_array_equal(s.val, [3])

    s = split_from_column(["train", "query", "database", "database", "train"], 5)
    np.testing.assert_array_equal(s.database, [2, 3])
    np.testing.assert_array_equal(s.train, [0, 4])


def test_column_errors() -> None:
    with pytest.raises(DataError, match="row 2: unknown split 'tset'"):
        split_from_column(["train", "tset"], 2)
    with pytest.raises(DataError, match="no 'query' or 'test' rows"):
        split_from_column(["train", "database"], 2)
    with pytest.raises(DataError, match="no 'train' rows"):
        split_from_column(["query", "database"], 2)


def test_fallback_without_column() -> None:
    s = split_from_column(None, 95, seed=1)
    assert (len(s.query), len(s.database), len(s.train)) == (10, 85, 85)
    again = split_from_column(None, 95, seed=1)
    np.testing.assert_array_equal(s.query, again.query)
    assert not np.array_equal(s.query, split_from_column(None, 95, seed=2).query)

    s = split_from_column(None, 100, n_query=20, n_train=30, seed=0)
    assert (len(s.query), len(s.database), len(s.train)) == (20, 80, 30)
    assert [default_n_query(n) for n in (2, 3, 14, 15, 1000)] == [1, 1, 1, 2, 100]
    with pytest.raises(ValueError, match="at least 2 items"):
        split_from_column(None, 1)


def test_concat_with_column_equals_fixed_split() -> None:
    def part(prefix: str, n: int, split: str) -> PairedData:
        labels = np.eye(3, dtype=np.uint8)[np.arange(n) % 3]
        return PairedData(
            ids=[f"{prefix}{i}" for i in range(n)],
            label_names=["a", "b", "c"],
            labels=labels,
            multi_label=False,
            image_features=np.zeros((n, 4), np.float32),
            splits=[split] * n,
        )

    data = concat([part("tr", 6, "train"), part("te", 3, "test")])
    by_column = split_from_column(data.splits, len(data))
    by_fixed = fixed_split(np.arange(6), np.arange(6, 9))
    for field in ("query", "database", "train"):
        np.testing.assert_array_equal(getattr(by_column, field), getattr(by_fixed, field))
