"""int64 token ids over attention mask, (2, max_length), for a pretrained sentence encoder."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleFormatError
from bundle.inputs.base import PROBES, BundleFiles, InputKind, Media
from bundle.sentence import SentenceTokenizer

#: The file name the tokenizer takes inside a bundle.
TOKENIZER_FILE = "tokenizer.json"
#: Texts of the probe inputs (fixed: their codes identify the model).
PROBE_SENTENCES = ("a dog runs on the beach", "two people ride bicycles", "", "red sky at night")


@dataclass(frozen=True)
class Sentence(InputKind):
    """Texts tokenised by the bundle's tokenizer.json, as the sentence encoder was trained."""

    name: ClassVar[str] = "sentence"
    modalities: ClassVar[tuple[str, ...]] = ("text",)
    media: ClassVar[Media | None] = "text"

    tokenizer: SentenceTokenizer
    #: The frozen sentence encoder inside the exported one (for people reading the manifest).
    encoder: str | None = None
    #: The tokenizer's name inside the bundle.
    file: str = TOKENIZER_FILE

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], where: str, files: BundleFiles) -> Self:
        max_length, pad_id = entry.get("max_length"), entry.get("pad_id", 0)
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 3:
            raise BundleFormatError(
                f"{where}.max_length must be an integer >= 3, got {max_length!r}"
            )
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or pad_id < 0:
            raise BundleFormatError(
                f"{where}.pad_id must be a non-negative integer, got {pad_id!r}"
            )
        name = entry.get("tokenizer")
        if not isinstance(name, str) or not name:
            raise BundleFormatError(f"{where}.tokenizer must name the bundle's tokenizer file")
        path = files.checked(name)
        try:
            tokenizer = SentenceTokenizer(path, max_length, pad_id)
        except Exception as exc:  # the tokenizers library raises plain Exception on a bad file
            raise BundleFormatError(f"{path} is not a loadable tokenizer.json: {exc}") from None
        encoder = entry.get("encoder")
        return cls(tokenizer, encoder if isinstance(encoder, str) else None, name)

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"input": self.name}
        if self.encoder is not None:
            entry["encoder"] = self.encoder
        return {
            **entry,
            "tokenizer": self.file,
            "max_length": self.tokenizer.max_length,
            "pad_id": self.tokenizer.pad_id,
            "dtype": "int64",
            "layout": "N 2 max_length: token ids, then the attention mask (1 = token, 0 = padding)",
            "truncation": "to max_length tokens, [CLS] and [SEP] included; padded on the right",
        }

    def probe(self, n: int = PROBES) -> npt.NDArray[np.int64]:
        texts = (PROBE_SENTENCES * (n // len(PROBE_SENTENCES) + 1))[:n]
        return self.vectorize(texts)[0]

    def assets(self) -> dict[str, Path]:
        return {self.file: self.tokenizer.path}

    @property
    def vectorizer(self) -> SentenceTokenizer:
        """Turns texts into this encoder's input: the tokenizer."""
        return self.tokenizer

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], list[int]]:
        """int64 (n, 2, max_length) ids over mask, and each text's known word pieces."""
        return self.tokenizer.vectorize(texts)
