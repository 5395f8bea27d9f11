"""A float32 binary bag of words over the bundle's vocabulary, for a text encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleFormatError
from bundle.inputs.base import PROBES, BundleFiles, InputKind, Media, probe_rng
from bundle.text import Vocabulary


@dataclass(frozen=True)
class BagOfWords(InputKind):
    """Texts tokenised (words or character n-grams) and looked up in the vocabulary."""

    name: ClassVar[str] = "bag_of_words"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    media: ClassVar[Media | None] = "text"

    vocabulary: Vocabulary

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str, files: BundleFiles) -> Self:
        vocabulary = Vocabulary.from_json(entry.get("vocabulary"), f"{where}.vocabulary")
        dim = entry.get("dim")
        if isinstance(dim, int) and dim != len(vocabulary):
            raise BundleFormatError(
                f"{where}.vocabulary.tokens lists {len(vocabulary)} tokens but the text encoder "
                f"takes {dim} inputs (its dim); the manifest was edited or mixed with another "
                "export"
            )
        return cls(vocabulary)

    def to_json(self) -> dict[str, Any]:
        return {
            "input": self.name,
            "dim": len(self.vocabulary),
            "vocabulary": self.vocabulary.to_json(),
        }

    def probe(self, n: int = PROBES) -> npt.NDArray[np.float32]:
        return (probe_rng().random((n, len(self.vocabulary))) < 0.1).astype(np.float32)

    @property
    def vectorizer(self) -> Vocabulary:
        """Turns texts into this encoder's input: the vocabulary itself."""
        return self.vocabulary

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        """The (n, vocab) float32 bags of words and each text's count of known tokens."""
        return self.vocabulary.vectorize(texts)
