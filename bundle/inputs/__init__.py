"""Input kinds, one class per module, and the registry from manifest name to class.

Adding a kind: a module here with an `InputKind` subclass, one line in `KINDS`, and the
model stream (and export encoder) that takes it.
"""

from __future__ import annotations

from bundle.inputs.bag_of_words import BagOfWords
from bundle.inputs.base import InputKind, Media, TextPreparer
from bundle.inputs.clip import Clip
from bundle.inputs.features import Features
from bundle.inputs.pixels import Pixels
from bundle.inputs.sentence import Sentence
from bundle.inputs.token_ids import TokenIds

KINDS: dict[str, type[InputKind]] = {
    kind.name: kind for kind in (Pixels, Clip, BagOfWords, Sentence, TokenIds, Features)
}

__all__ = [
    "KINDS",
    "BagOfWords",
    "Clip",
    "Features",
    "InputKind",
    "Media",
    "Pixels",
    "Sentence",
    "TextPreparer",
    "TokenIds",
]
