"""Text vocabulary and bag-of-words vectors for the text stream.

Tokenisation is deliberately simple (lower-case word tokens, or character n-grams for
languages written without spaces) because the service re-implements it from the bundle
manifest without importing `model/`; `tokenize` is the one definition both follow.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

WORD_PATTERN = r"[^\W_]+"
_WORD = re.compile(WORD_PATTERN)


#: Tokenizer modes: word tokens, or character n-grams (for text written without spaces).
TOKENIZER_MODES = ("word", "char")
#: Unicode form texts take before tokenising: composed, so "café" typed here and pasted
#: decomposed (as macOS and PDFs often give it) is one word, not "cafe" plus a lone accent.
#: Vocabularies saved before this existed record none and tokenise as they always did.
NORMALIZATION = "NFC"


def tokenize(
    text: str, mode: str = "word", ngram: int = 2, normalize: str | None = None
) -> list[str]:
    """Split text into vocabulary tokens: words, or character n-grams of the spaceless text."""
    if normalize:
        text = unicodedata.normalize(normalize, text)
    text = text.lower()
    if mode == "word":
        return _WORD.findall(text)
    if mode == "char":
        joined = "".join(_WORD.findall(text))
        return [joined[i : i + ngram] for i in range(max(len(joined) - ngram + 1, 0))]
    raise ValueError(f"unknown tokenizer mode {mode!r}; use 'word' or 'char'")


@dataclass
class Vocabulary:
    """Token -> column mapping built from training text only."""

    tokens: list[str]
    mode: str = "word"
    ngram: int = 2
    normalize: str | None = None
    index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        *,
        mode: str = "word",
        ngram: int = 2,
        min_count: int = 1,
        max_size: int = 20000,
    ) -> Vocabulary:
        """Keep the `max_size` most frequent tokens seen `min_count`+ times (ties by name)."""
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(set(tokenize(text, mode, ngram, NORMALIZATION)))
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t)
        )
        if not ranked:
            raise ValueError("the training text yields an empty vocabulary")
        return cls(tokens=ranked[:max_size], mode=mode, ngram=ngram, normalize=NORMALIZATION)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Binary bag-of-words (n, len(vocab)) float32; unknown tokens are ignored."""
        out = np.zeros((len(texts), len(self.tokens)), dtype=np.float32)
        for row, text in enumerate(texts):
            words = tokenize(text, self.mode, self.ngram, self.normalize)
            cols = [self.index[t] for t in words if t in self.index]
            out[row, cols] = 1.0
        return out

    def to_json(self) -> dict:
        """What the bundle manifest stores so the service can rebuild the same vectors."""
        return {
            "tokens": self.tokens,
            "mode": self.mode,
            "ngram": self.ngram,
            "pattern": WORD_PATTERN,
            "normalize": self.normalize,
        }

    @classmethod
    def from_json(cls, data: dict) -> Vocabulary:
        return cls(
            tokens=list(data["tokens"]),
            mode=data["mode"],
            ngram=int(data["ngram"]),
            normalize=data.get("normalize"),
        )
