"""int64 word ids with each text's length, (1 + width), for a recurrent sentence encoder.

A text is tokenised by the bundle's vocabulary (`bundle.text.Vocabulary`, the same words a
bag of words takes, in their order) and cut to `max_length` words. Row layout: column 0 is
the text's length in words, columns 1.. its word ids, right-padded with PAD_ID. A batch is
as wide as its longest text (at most max_length): the encoder reads only the first `length`
ids of a row, so the padding a batch adds does not change a text's code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleFormatError
from bundle.inputs.base import PROBES, BundleFiles, InputKind, Media
from bundle.text import Vocabulary

#: Id of padding (after a text's last word); the encoder never reads it.
PAD_ID = 0
#: Id of a word the vocabulary lacks: it keeps its place in the sentence.
UNKNOWN_ID = 1
#: Id of the vocabulary's first token (ids below it are PAD_ID and UNKNOWN_ID).
FIRST_ID = 2
#: Probe texts: a repeated word, an empty text, a long one and words outside any vocabulary.
PROBE_TEXTS = ("a dog runs on the beach", "", "sky " * 80, "Çà et là, 猫 🐈 ok")


@dataclass(frozen=True)
class TokenIds(InputKind):
    """Texts as word ids over the bundle's vocabulary, in order, with their lengths."""

    name: ClassVar[str] = "token_ids"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    media: ClassVar[Media | None] = "text"

    vocabulary: Vocabulary
    max_length: int
    #: The recurrent cell inside the encoder (for people reading the manifest).
    cell: str | None = None

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str, files: BundleFiles) -> Self:
        vocabulary = Vocabulary.from_json(entry.get("vocabulary"), f"{where}.vocabulary")
        max_length = entry.get("max_length")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise BundleFormatError(
                f"{where}.max_length must be a positive integer, got {max_length!r}"
            )
        ids = entry.get("num_ids")
        if isinstance(ids, int) and ids != len(vocabulary) + FIRST_ID:
            raise BundleFormatError(
                f"{where}.vocabulary.tokens lists {len(vocabulary)} tokens but the text encoder "
                f"embeds {ids} ids ({FIRST_ID} reserved); the manifest was edited or mixed with "
                "another export"
            )
        cell = entry.get("cell")
        return cls(vocabulary, max_length, cell if isinstance(cell, str) else None)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": self.name}
        if self.cell is not None:
            entry["cell"] = self.cell
        return {
            **entry,
            "max_length": self.max_length,
            "num_ids": self.num_ids,
            "pad_id": PAD_ID,
            "unknown_id": UNKNOWN_ID,
            "dtype": "int64",
            "layout": "N (1 + width): the length in words, then the word ids (vocabulary "
            f"position + {FIRST_ID}; {UNKNOWN_ID} = unknown), right-padded with {PAD_ID} to the "
            "batch's longest text",
            "truncation": "to max_length words",
            "vocabulary": self.vocabulary.to_json(),
        }

    def probe(self, n: int = PROBES) -> npt.NDArray[np.int64]:
        texts = (PROBE_TEXTS * (n // len(PROBE_TEXTS) + 1))[:n]
        return self.vectorize(texts)[0]

    @property
    def num_ids(self) -> int:
        """How many ids the encoder embeds: the vocabulary's and the reserved ones."""
        return len(self.vocabulary) + FIRST_ID

    @property
    def vectorizer(self) -> TokenIds:
        """Turns texts into this encoder's input: the kind itself."""
        return self

    def ids(self, text: str) -> list[int]:
        """A text's word ids, cut to max_length words."""
        index = self.vocabulary.index
        words = self.vocabulary.tokenize(text)[: self.max_length]
        return [index[w] + FIRST_ID if w in index else UNKNOWN_ID for w in words]

    def vectorize(
        self, texts: Sequence[str], width: int | None = None
    ) -> tuple[npt.NDArray[np.int64], list[int]]:
        """int64 (n, 1 + width) lengths and ids, and each text's count of known words.

        The ids are padded to the longest text's length, or to `width` if that is more (and
        to one column at least).
        """
        rows = [self.ids(text) for text in texts]
        width = max([width or 1, *(len(r) for r in rows)])
        out = np.full((len(rows), 1 + width), PAD_ID, dtype=np.int64)
        for i, ids in enumerate(rows):
            out[i, 0] = len(ids)
            out[i, 1 : 1 + len(ids)] = ids
        return out, [sum(1 for t in ids if t != UNKNOWN_ID) for ids in rows]

    def collate(self, batches: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        """Batches of different widths as one, the narrower right-padded with PAD_ID."""
        width = max(b.shape[1] for b in batches)
        return np.concatenate(
            [np.pad(b, ((0, 0), (0, width - b.shape[1])), constant_values=PAD_ID) for b in batches]
        )
