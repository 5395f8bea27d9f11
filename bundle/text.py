"""Word and character n-gram tokenising, and the vocabulary a bag-of-words stream is built on.

One implementation for both sides: the trainer builds the vocabulary from training text and
stores it in the manifest (`to_json`); the service rebuilds it from there (`from_json`) and
turns request texts into the same vectors. Tokenising is deliberately simple: lower-case
word tokens, or character n-grams for languages written without spaces.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal, cast, get_args

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleFormatError

WORD_PATTERN = r"[^\W_]+"
#: Tokenizer modes: word tokens, or character n-grams (for text written without spaces).
TOKENIZER_MODES = ("word", "char")
#: Unicode form texts take before tokenising: composed, so "café" typed here and pasted
#: decomposed (as macOS and PDFs often give it) is one word, not "cafe" plus a lone accent.
#: Vocabularies saved before this existed record none and tokenise as they always did.
UnicodeForm = Literal["NFC", "NFD", "NFKC", "NFKD"]
NORMALIZATION: UnicodeForm = "NFC"


@lru_cache(maxsize=8)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def tokenize(
    text: str,
    mode: str = "word",
    ngram: int = 2,
    normalize: UnicodeForm | None = None,
    pattern: str = WORD_PATTERN,
) -> list[str]:
    """Split text into vocabulary tokens: words, or character n-grams of the spaceless text."""
    if normalize:
        text = unicodedata.normalize(normalize, text)
    words: list[str] = _regex(pattern).findall(text.lower())
    if mode == "word":
        return words
    if mode == "char":
        joined = "".join(words)
        return [joined[i : i + ngram] for i in range(max(len(joined) - ngram + 1, 0))]
    raise ValueError(f"unknown tokenizer mode {mode!r}; use 'word' or 'char'")


@dataclass
class Vocabulary:
    """Token -> column mapping built from training text only."""

    tokens: list[str]
    mode: str = "word"
    ngram: int = 2
    normalize: UnicodeForm | None = None
    pattern: str = WORD_PATTERN
    index: dict[str, int] = field(init=False, repr=False, compare=False)

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

    def tokenize(self, text: str) -> list[str]:
        """This vocabulary's tokens of `text`, known or not."""
        return tokenize(text, self.mode, self.ngram, self.normalize, self.pattern)

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[np.float32], list[int]]:
        """The (n, len(vocab)) float32 binary bag of words, and each text's known-token count.

        Known tokens count occurrences that hit the vocabulary, repeats included.
        """
        out = np.zeros((len(texts), len(self.tokens)), dtype=np.float32)
        known: list[int] = []
        for row, text in enumerate(texts):
            cols = [self.index[t] for t in self.tokenize(text) if t in self.index]
            out[row, cols] = 1.0
            known.append(len(cols))
        return out, known

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Binary bag-of-words (n, len(vocab)) float32; unknown tokens are ignored."""
        return self.vectorize(texts)[0]

    def to_json(self) -> dict[str, Any]:
        """What the manifest (and a checkpoint) stores to rebuild the same vectors."""
        return {
            "tokens": self.tokens,
            "mode": self.mode,
            "ngram": self.ngram,
            "pattern": self.pattern,
            "normalize": self.normalize,
        }

    @classmethod
    def from_json(cls, data: Any, where: str = "vocabulary") -> Vocabulary:
        """Rebuild a stored vocabulary; raise BundleFormatError naming what is wrong."""
        if not isinstance(data, Mapping) or not isinstance(data.get("tokens"), list):
            raise BundleFormatError(f"{where} must be an object with a 'tokens' list")
        tokens = data["tokens"]
        if not tokens or not all(isinstance(t, str) for t in tokens):
            raise BundleFormatError(f"{where}.tokens must be a non-empty list of strings")
        mode = data.get("mode", "word")
        if mode not in TOKENIZER_MODES:
            raise BundleFormatError(f"{where}.mode is {mode!r}; expected 'word' or 'char'")
        ngram = data.get("ngram", 2)
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 1:
            raise BundleFormatError(f"{where}.ngram must be a positive integer, got {ngram!r}")
        pattern = data.get("pattern", WORD_PATTERN)
        try:
            _regex(pattern)
        except (re.error, TypeError) as exc:
            raise BundleFormatError(
                f"{where}.pattern is not a valid regular expression: {exc}"
            ) from None
        normalize = data.get("normalize")
        if normalize is not None and normalize not in get_args(UnicodeForm):
            raise BundleFormatError(
                f"{where}.normalize is {normalize!r}; expected a Unicode form or null"
            )
        return cls(
            tokens=list(tokens),
            mode=mode,
            ngram=ngram,
            normalize=cast(UnicodeForm | None, normalize),
            pattern=pattern,
        )
