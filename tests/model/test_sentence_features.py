"""Cached sentence embeddings, the text.encoder option and its wiring into the method."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.sentence import SentenceTokenizer
from model.backbones.minilm import EMBEDDING_DIM, load_minilm, tokenizer_path
from model.build import build_method
from model.config import ConfigError, config_from_dict
from model.features import FeatureCache
from model.sentence_features import extract_sentence_features, text_digest
from model.streams import MLPStream

TEXTS = [
    "A black dog and a spotted dog are fighting",
    "A little girl climbing into a wooden playhouse .",
    "A black dog and a spotted dog are fighting",  # a duplicate: embedded once
    "Two dogs on pavement moving toward each other .",
    "",
]


def _rows(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM features").fetchone()[0])


def test_embeddings_equal_the_encoder_and_are_cached(tmp_path: Path) -> None:
    got = extract_sentence_features(TEXTS, encoder="minilm", max_length=24, cache_dir=tmp_path)
    assert got.shape == (len(TEXTS), EMBEDDING_DIM) and got.dtype == np.float32
    # Length-bucketed batches padded to their longest give the fixed-length embeddings.
    ids, mask = SentenceTokenizer(tokenizer_path(), 24).encode(TEXTS)
    with torch.inference_mode():
        expected = load_minilm()(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert np.array_equal(got[0], got[2])
    cache_file = tmp_path / "all-minilm-l6-v2-len24.sqlite"
    assert _rows(cache_file) == 4  # unique texts
    # A second call reads the cache: plant a marker vector and see it come back.
    marker = np.full(EMBEDDING_DIM, 0.5, dtype=np.float32)
    cache = FeatureCache(cache_file)
    cache.put_many({text_digest(TEXTS[1]): marker})
    cache.close()
    again = extract_sentence_features(TEXTS, encoder="minilm", max_length=24, cache_dir=tmp_path)
    assert np.array_equal(again[1], marker)
    assert np.array_equal(np.delete(again, 1, axis=0), np.delete(got, 1, axis=0))


def test_cache_is_keyed_by_max_length(tmp_path: Path) -> None:
    long_text = "a man rides a bicycle down a steep muddy hill " * 4
    short = extract_sentence_features(
        [long_text], encoder="minilm", max_length=8, cache_dir=tmp_path
    )
    full = extract_sentence_features(
        [long_text], encoder="minilm", max_length=64, cache_dir=tmp_path
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "all-minilm-l6-v2-len64.sqlite",
        "all-minilm-l6-v2-len8.sqlite",
    ]
    # Truncation at 8 tokens really changes the embedding, so the two must not share entries.
    assert float(short[0] @ full[0]) < 0.99


def test_no_texts_and_unknown_encoder(tmp_path: Path) -> None:
    empty = extract_sentence_features([], encoder="minilm", max_length=8, cache_dir=tmp_path)
    assert empty.shape == (0, EMBEDDING_DIM)
    with pytest.raises(ValueError, match="unknown sentence encoder 'bert'"):
        extract_sentence_features(["x"], encoder="bert", max_length=8, cache_dir=tmp_path)


def test_text_digest_is_sha256_of_utf8() -> None:
    # sha256("abc"), a published test vector.
    assert text_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert text_digest("café") != text_digest("cafe")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            {"encoder": "bert"},
            "text.encoder must be one of bag_of_words, minilm, recurrent, got 'bert'",
        ),
        ({"max_length": 2}, "text.max_length must be between 3 and 512, got 2"),
        ({"max_length": 513}, "text.max_length must be between 3 and 512, got 513"),
        ({"max_length": "64"}, "'text.max_length' must be an integer"),
    ],
)
def test_bad_text_options_are_refused(text: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"text": text})


def test_sentence_kind_builds_an_mlp_from_the_text_section() -> None:
    config = config_from_dict(
        {"bits": 16, "text": {"encoder": "minilm", "hidden": [32, 24], "dropout": 0.0}}
    )
    assert (config.text.encoder, config.text.max_length) == ("minilm", 64)
    method = build_method(config, {"text": EMBEDDING_DIM}, {"text": "sentence"}, 3, False)
    stream = method.stream("text")
    assert isinstance(stream, MLPStream)
    widths = [m.out_features for m in stream.body if isinstance(m, torch.nn.Linear)]
    assert widths == [32, 24] and stream.hash.bits == 16
    assert stream.body[0].in_features == EMBEDDING_DIM
