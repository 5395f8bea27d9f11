"""Tokenisation and the bag-of-words vocabulary, against hand-worked examples."""

from __future__ import annotations

import json
import unicodedata

import numpy as np
import pytest

from bundle.text import WORD_PATTERN, Vocabulary, tokenize


@pytest.mark.parametrize(
    ("text", "tokens"),
    [
        ("A red Circle, on GREY!", ["a", "red", "circle", "on", "grey"]),
        ("snake_case and 42 cats", ["snake", "case", "and", "42", "cats"]),
        ("Café naïve", ["café", "naïve"]),
        ("  ,;!  ", []),
        ("", []),
    ],
)
def test_word_tokens(text: str, tokens: list[str]) -> None:
    assert tokenize(text, "word") == tokens


@pytest.mark.parametrize(
    ("text", "ngram", "tokens"),
    [
        ("Ab cd", 2, ["ab", "bc", "cd"]),  # spaces and case are dropped before n-gramming
        ("Ab, cd!", 3, ["abc", "bcd"]),
        ("猫が好き", 2, ["猫が", "が好", "好き"]),
        ("a", 2, []),  # shorter than one n-gram
        ("ab", 2, ["ab"]),
    ],
)
def test_char_ngrams(text: str, ngram: int, tokens: list[str]) -> None:
    assert tokenize(text, "char", ngram) == tokens


def test_unknown_mode() -> None:
    with pytest.raises(ValueError, match="unknown tokenizer mode 'bpe'"):
        tokenize("x", "bpe")


TEXTS = ["b a a a", "b c", "c b", "d", "e b"]


def test_build_orders_by_frequency_then_name() -> None:
    vocab = Vocabulary.build(TEXTS)
    # Counts are of texts containing the token: b 4, c 2, then a, d, e once each (by name).
    # "a" appears three times but in one text only.
    assert vocab.tokens == ["b", "c", "a", "d", "e"]
    assert vocab.index == {"b": 0, "c": 1, "a": 2, "d": 3, "e": 4}
    assert len(vocab) == 5
    assert (vocab.mode, vocab.ngram) == ("word", 2)


def test_min_count() -> None:
    assert Vocabulary.build(TEXTS, min_count=2).tokens == ["b", "c"]
    assert Vocabulary.build(TEXTS, min_count=4).tokens == ["b"]
    assert Vocabulary.build(TEXTS, min_count=2, max_size=1).tokens == ["b"]


def test_min_count_above_every_count_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty vocabulary"):
        Vocabulary.build(TEXTS, min_count=5)
    with pytest.raises(ValueError, match="empty vocabulary"):
        Vocabulary.build(["", "!!"])


def test_max_size_keeps_the_most_frequent() -> None:
    assert Vocabulary.build(TEXTS, max_size=3).tokens == ["b", "c", "a"]
    assert Vocabulary.build(TEXTS, max_size=1).tokens == ["b"]
    assert Vocabulary.build(TEXTS, max_size=100).tokens == ["b", "c", "a", "d", "e"]


def test_encode_is_binary_and_ignores_unknown_tokens() -> None:
    vocab = Vocabulary.build(TEXTS)
    x = vocab.encode(["a a b", "zebra c", "", "unknown words only"])
    assert x.dtype == np.float32 and x.shape == (4, 5)
    np.testing.assert_array_equal(
        x,
        [
            [1, 0, 1, 0, 0],  # "a" twice still counts 1
            [0, 1, 0, 0, 0],  # "zebra" is not in the vocabulary
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
    )


def test_encode_char_mode() -> None:
    vocab = Vocabulary.build(["abc", "abd"], mode="char", ngram=2)
    assert vocab.tokens == ["ab", "bc", "bd"]
    np.testing.assert_array_equal(vocab.encode(["xabd", "BC"]), [[1, 0, 1], [0, 1, 0]])


def test_json_round_trip() -> None:
    vocab = Vocabulary.build(["Cats and dogs", "cats, more cats", "birds"], mode="char", ngram=3)
    data = json.loads(json.dumps(vocab.to_json()))
    assert data["pattern"] == WORD_PATTERN
    again = Vocabulary.from_json(data)
    assert again.tokens == vocab.tokens
    assert (again.mode, again.ngram) == ("char", 3)
    assert again.index == vocab.index
    probe = ["cats and birds", "dogs?", "nothing known here"]
    np.testing.assert_array_equal(again.encode(probe), vocab.encode(probe))


PASTED = ["Café naïve", "ÉCOLE élève", "mañana über", "plain words"]


@pytest.mark.parametrize("mode", ["word", "char"])
def test_decomposed_text_is_the_same_words_as_composed(mode: str) -> None:
    # Text pasted decomposed (NFD: macOS, PDFs) split "café" into "cafe" + a lone accent and
    # matched no word of a vocabulary built from composed text.
    vocab = Vocabulary.build(PASTED, mode=mode)
    assert vocab.normalize == "NFC"
    decomposed = [unicodedata.normalize("NFD", t) for t in PASTED]
    assert decomposed != PASTED
    np.testing.assert_array_equal(vocab.encode(decomposed), vocab.encode(PASTED))
    # The vocabulary the service rebuilds from the manifest does the same.
    spec = vocab.to_json()
    service_side = Vocabulary.from_json(json.loads(json.dumps(spec)))
    bags, known = service_side.vectorize(decomposed)
    np.testing.assert_array_equal(bags, vocab.encode(PASTED))
    assert all(k > 0 for k in known)


def test_a_vocabulary_saved_before_normalization_tokenizes_as_it_did() -> None:
    old = {"tokens": ["café", "cafe"], "mode": "word", "ngram": 2, "pattern": WORD_PATTERN}
    vocab = Vocabulary.from_json(old)
    assert vocab.normalize is None
    decomposed = unicodedata.normalize("NFD", "café")
    np.testing.assert_array_equal(vocab.encode([decomposed]), [[0, 1]])
    assert Vocabulary(["café", "cafe"]).vectorize([decomposed])[1] == [1]
