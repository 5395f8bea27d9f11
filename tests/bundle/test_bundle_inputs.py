"""Input kinds: the registry, manifest entries that round-trip, and fixed probe inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bundle.errors import BundleFormatError
from bundle.inputs import KINDS, BagOfWords, Clip, Features, InputKind, Pixels
from bundle.text import Vocabulary


class NoFiles:
    """A bundle without files beyond the encoders (what these kinds need)."""

    def checked(self, name: str) -> Path:
        raise AssertionError(f"no kind here should ask for {name}")


KINDS_TO_TRY: list[InputKind] = [
    Pixels(32, "efficientnet-lite0", (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True),
    Clip(frames=4, size=16, clips=2, backbone="efficientnet-lite0", temporal="mean"),
    BagOfWords(Vocabulary([f"w{i}" for i in range(40)], mode="char", ngram=2, normalize="NFC")),
    Features(7),
]


def test_the_registry_names_every_kind_by_its_manifest_input() -> None:
    assert sorted(KINDS) == ["bag_of_words", "clip", "features", "pixels", "sentence", "token_ids"]
    assert all(kind.name == name for name, kind in KINDS.items())


@pytest.mark.parametrize("kind", KINDS_TO_TRY, ids=lambda k: k.name)
def test_an_entry_reads_back_as_the_kind_that_wrote_it(kind: InputKind) -> None:
    entry = kind.to_json()
    assert entry["input"] == kind.name
    again = KINDS[entry["input"]].from_json(entry, "manifest.json: modalities.x", NoFiles())
    assert again.to_json() == entry
    np.testing.assert_array_equal(again.probe(), kind.probe())


@pytest.mark.parametrize("kind", KINDS_TO_TRY, ids=lambda k: k.name)
def test_probes_are_the_same_at_every_load(kind: InputKind) -> None:
    first, second = kind.probe(), kind.probe()
    np.testing.assert_array_equal(first, second)
    assert len(first) == 4 and np.any(first != 0)


def test_probe_inputs_are_those_collections_were_fingerprinted_with() -> None:
    # Collections store the codes of these inputs; other draws would orphan them all.
    rng = np.random.default_rng(20240601)
    expected = rng.integers(0, 256, size=(4, 3, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(Pixels(8).probe(), expected)
    rng = np.random.default_rng(20240601)
    bags = (rng.random((4, 3)) < 0.1).astype(np.float32)
    np.testing.assert_array_equal(BagOfWords(Vocabulary(["a", "b", "c"])).probe(), bags)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"input": "pixels", "size": 0}, r"modalities\.x\.size must be a positive integer"),
        ({"input": "pixels", "size": 32, "mean": "grey"}, r"mean must be a list of numbers"),
        ({"input": "clip", "frames": 4, "size": 16}, r"clips must be a positive integer"),
        ({"input": "bag_of_words", "vocabulary": {"tokens": []}}, "non-empty list of strings"),
        ({"input": "features"}, r"dim must be a positive integer, got None"),
    ],
)
def test_a_bad_entry_is_refused_with_what_to_fix(entry: dict, message: str) -> None:
    with pytest.raises(BundleFormatError, match=message):
        KINDS[entry["input"]].from_json(entry, "manifest.json: modalities.x", NoFiles())
