"""The token_ids input kind: word ids by hand, lengths, truncation, padding, its manifest entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundle.errors import BundleFormatError
from bundle.inputs import KINDS, TokenIds
from bundle.text import Vocabulary


class NoFiles:
    def checked(self, name: str) -> Path:
        raise AssertionError(f"token_ids lists no file, asked for {name}")


KIND = TokenIds(Vocabulary(["dog", "a", "red", "car"]), max_length=4, cell="gru")


def test_texts_become_lengths_then_word_ids_right_padded() -> None:
    batch, known = KIND.vectorize(["A dog", "red car, red DOG!", "a zebra", "", "a a a a a a"])
    # Ids: vocabulary position + 2 (dog 2, a 3, red 4, car 5); 1 is an unknown word, 0 padding.
    assert batch.dtype == np.int64
    assert batch.tolist() == [
        [2, 3, 2, 0, 0],
        [4, 4, 5, 4, 2],
        [2, 3, 1, 0, 0],
        [0, 0, 0, 0, 0],
        [4, 3, 3, 3, 3],  # cut to max_length words
    ]
    assert known == [2, 4, 1, 0, 4]


def test_a_batch_is_as_wide_as_its_longest_text() -> None:
    assert KIND.vectorize(["dog"])[0].tolist() == [[1, 2]]
    assert KIND.vectorize([""])[0].shape == (1, 2)  # one id column even with no word
    assert KIND.vectorize(["dog"], width=4)[0].tolist() == [[1, 2, 0, 0, 0]]


def test_collate_pads_narrower_batches_to_the_widest() -> None:
    one, two = KIND.vectorize(["dog"])[0], KIND.vectorize(["a red car", "car"])[0]
    joined = KIND.collate([one, two])
    assert joined.tolist() == [[1, 2, 0, 0], [3, 3, 4, 5], [1, 5, 0, 0]]
    assert joined.dtype == np.int64
    # The other kinds join batches as they are.
    others = KINDS["bag_of_words"](Vocabulary(["dog"]))
    rows = others.collate([np.ones((1, 1), np.float32), np.zeros((2, 1), np.float32)])
    assert rows.tolist() == [[1.0], [0.0], [0.0]]


def test_the_manifest_entry_round_trips() -> None:
    entry = KIND.to_json()
    assert entry["input"] == "token_ids" and KINDS["token_ids"] is TokenIds
    assert (entry["max_length"], entry["num_ids"], entry["pad_id"]) == (4, 6, 0)
    assert (entry["unknown_id"], entry["cell"], entry["dtype"]) == (1, "gru", "int64")
    again = TokenIds.from_json(entry, "manifest.json: modalities.text", NoFiles())
    assert again == KIND
    assert np.array_equal(again.probe(), KIND.probe())
    probe = KIND.probe(6)
    assert probe.shape == (6, 1 + 4) and probe[:, 0].tolist() == [4, 0, 4, 4, 4, 0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_length": 0}, "max_length must be a positive integer, got 0"),
        ({"max_length": True}, "max_length must be a positive integer, got True"),
        ({"num_ids": 9}, "lists 4 tokens but the text encoder embeds 9 ids"),
        ({"vocabulary": {"tokens": []}}, "tokens must be a non-empty list of strings"),
    ],
)
def test_a_bad_entry_is_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(BundleFormatError, match=message):
        TokenIds.from_json({**KIND.to_json(), **changes}, "modalities.text", NoFiles())
