"""Loaders against the real MIRFlickr-25K and Wikipedia copies in ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from model.config import ConfigError, load_config
from model.data.mirflickr import MIRFLICKR_CONCEPTS, load_mirflickr
from model.data.splits import fixed_split, split_from_column, standard_split
from model.data.wikipedia import load_wikipedia
from model.prepare import load_dataset

# HASHBRIDGE_SHARED points at the shared folder (the one holding datasets/).
SHARED = Path(
    os.environ.get("HASHBRIDGE_SHARED", Path(__file__).resolve().parents[2].parent / "shared")
)
DATASETS = SHARED / "datasets"


def dataset(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"../shared/datasets/{name} not found: {path} (set HASHBRIDGE_SHARED)")
    return path


@pytest.fixture(scope="module")
def mirflickr_all():
    return load_mirflickr(dataset("mirflickr25k"), require_images=False)


@pytest.fixture(scope="module")
def mirflickr_images():
    return load_mirflickr(dataset("mirflickr25k"))


def test_mirflickr_counts(mirflickr_all, mirflickr_images) -> None:
    assert len(mirflickr_all) == 20015
    assert len(mirflickr_images) == 15677
    assert mirflickr_images.label_names == list(MIRFLICKR_CONCEPTS)
    assert mirflickr_images.labels.shape == (15677, 24)
    assert mirflickr_images.text_features.shape == (15677, 1386)
    assert mirflickr_images.multi_label
    assert mirflickr_images.modalities == ("image", "text")
    assert all(p is not None and p.is_file() for p in mirflickr_images.image_paths[:50])
    assert sum(p is None for p in mirflickr_all.image_paths) == 20015 - 15677
    assert (mirflickr_all.labels.sum(axis=1) >= 1).all()
    vocab = (dataset("mirflickr25k") / "tag_vocab.txt").read_text().split()
    assert len(vocab) == len(set(vocab)) == 1386


def test_mirflickr_tag_features_are_the_one_hots_of_the_texts(mirflickr_all) -> None:
    # Tags one-hot built here from the texts themselves, not from the loader's features.
    vocab = {
        t: j for j, t in enumerate((dataset("mirflickr25k") / "tag_vocab.txt").read_text().split())
    }
    rows = np.random.default_rng(0).choice(20015, size=50, replace=False)
    for i in rows:
        one_hot = np.zeros(1386, np.uint8)
        one_hot[[vocab[t] for t in mirflickr_all.texts[i].split()]] = 1
        np.testing.assert_array_equal(one_hot, mirflickr_all.text_features[i])


def test_mirflickr_standard_protocol_split(mirflickr_images) -> None:
    s = standard_split(len(mirflickr_images), n_query=2000, n_train=10000, seed=0)
    assert (len(s.query), len(s.database), len(s.train)) == (2000, 13677, 10000)


def test_wikipedia() -> None:
    train, test = load_wikipedia(dataset("wikipedia"))
    assert (len(train), len(test)) == (2173, 693)
    assert train.image_features.shape == (2173, 128) and test.image_features.shape == (693, 128)
    assert train.text_features.shape == (2173, 10) and test.text_features.shape == (693, 10)
    assert train.image_features.dtype == np.float32
    assert train.label_names[0] == "art" and len(train.label_names) == 10
    assert not train.multi_label
    assert (train.labels.sum(axis=1) == 1).all() and (test.labels.sum(axis=1) == 1).all()
    assert set(train.labels.argmax(axis=1)) == set(range(10))
    assert len(set(train.ids) | set(test.ids)) == 2866
    assert train.splits == ["train"] * 2173 and test.splits == ["test"] * 693
    s = fixed_split(np.arange(2173), np.arange(2173, 2866))
    assert (len(s.query), len(s.database), len(s.train)) == (693, 2173, 2173)
    by_column = split_from_column(train.splits + test.splits, 2866)
    np.testing.assert_array_equal(by_column.query, s.query)


def test_split_sizes_the_dataset_cannot_hold_are_config_errors() -> None:
    data = [f'data.path="{dataset("mirflickr25k")}"', 'data.kind="mirflickr"']
    for key, fragment in (("n_query", "n_query must be in"), ("n_train", "n_train must be in")):
        config = load_config(None, [*data, f"data.{key}=20000"])
        with pytest.raises(
            ConfigError, match=f"do not fit this dataset of 15677 items: {fragment}"
        ):
            load_dataset(config)
