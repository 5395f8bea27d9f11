"""Token ids and attention mask for a pretrained sentence encoder, from its tokenizer.json.

One implementation for both sides: the trainer tokenises with the model package's file and
copies it into the bundle; the service tokenises with the bundle's copy. Texts are cut to
`max_length` tokens ([CLS] and [SEP] included) and right-padded with `pad_id`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer


class SentenceTokenizer:
    """A WordPiece tokenizer.json, truncating and padding to a fixed length.

    Texts are encoded one by one: `encode_batch` would start the library's own thread pool,
    which a shared two-core machine does not need and forked worker processes dislike.
    """

    def __init__(
        self, path: str | os.PathLike[str], max_length: int, pad_id: int | None = None
    ) -> None:
        self.path = Path(path)
        self.max_length = max_length
        self.tokenizer = Tokenizer.from_file(str(path))
        self.pad_id = self.tokenizer.token_to_id("[PAD]") if pad_id is None else pad_id
        self.tokenizer.enable_truncation(max_length=max_length)
        self.tokenizer.no_padding()
        self._unknown = self.tokenizer.token_to_id("[UNK]")

    def tokenize(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], list[int]]:
        """Ids and mask, int64 (n, pad_to or max_length), and each text's known word pieces."""
        length = pad_to or self.max_length
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        known: list[int] = []
        for row, text in enumerate(texts):
            encoding = self.tokenizer.encode(text)
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
            pieces = zip(encoding.ids, encoding.special_tokens_mask, strict=True)
            known.append(sum(1 for i, special in pieces if not special and i != self._unknown))
        return ids, mask, known

    def encode(
        self, texts: Sequence[str], pad_to: int | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """int64 ids and attention mask (n, pad_to or max_length), padded on the right."""
        ids, mask, _ = self.tokenize(texts, pad_to)
        return ids, mask

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.int64], list[int]]:
        """The text encoder's input, int64 (n, 2, max_length) ids over mask, and known counts."""
        ids, mask, known = self.tokenize(texts)
        return np.stack([ids, mask], axis=1), known

    def lengths(self, texts: Sequence[str]) -> list[int]:
        """Token counts after truncation, special tokens included."""
        return [len(self.tokenizer.encode(text).ids) for text in texts]
