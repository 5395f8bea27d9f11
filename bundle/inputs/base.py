"""What every input kind provides: its manifest entry, its probe inputs, its files.

An input kind is what one encoder takes (uint8 pixels, a bag of words, token ids ...). Each
is one class in its own module here, registered in `bundle.inputs.KINDS` under the name the
manifest's `input` key gives it. The class is its manifest entry, typed: `from_json`
validates an entry read from a bundle, `to_json` writes one; on top it says which
modalities may use it, what raw input (`media`) the service turns into it, and gives fixed
pseudo-random probe inputs (the service's start-up check and fingerprint, export's checks).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, Self

import numpy as np
import numpy.typing as npt

from bundle.errors import BundleFormatError

#: What a raw input is before preparation: a picture, a clip, a text; None for inputs no
#: raw input can be prepared into (feature vectors from extractors the bundle lacks).
Media = Literal["image", "video", "text"]
#: The seed of every probe input: their codes identify the model, so they never change.
PROBE_SEED = 20240601
PROBES = 4
MiB = 1 << 20
#: Largest input one item may need (uint8 pixels): 100x a 16-frame 224 px clip.
MAX_INPUT_BYTES = 256 * MiB


class BundleFiles(Protocol):
    """The files of a bundle being read: `checked(name)` is one present with its sha256."""

    def checked(self, name: str) -> Path:
        """The path of a listed file, present and matching its sha256."""
        ...


class InputKind(ABC):
    """One kind of encoder input; an instance is one modality's manifest entry."""

    #: The manifest's `input` value.
    name: ClassVar[str]
    #: Modalities whose encoder may take this input.
    modalities: ClassVar[tuple[str, ...]]
    #: What raw input the service prepares into this one (None: it cannot).
    media: ClassVar[Media | None]

    @classmethod
    @abstractmethod
    def from_json(cls, entry: Mapping[str, Any], where: str, files: BundleFiles) -> Self:
        """The kind's settings from a manifest entry; raise BundleFormatError on a bad one."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]:
        """The manifest entry (less its "file"), `input` included."""

    @abstractmethod
    def probe(self, n: int = PROBES) -> npt.NDArray[Any]:
        """`n` fixed pseudo-random inputs of this kind, as one batch."""

    def assets(self) -> dict[str, Path]:
        """Files the bundle carries beside the encoder for this input (name -> source)."""
        return {}

    def collate(self, batches: Sequence[npt.NDArray[Any]]) -> npt.NDArray[Any]:
        """Several batches of this input as one (the micro-batcher's join); kinds whose
        batches vary in width (token ids) pad them to a common one."""
        return np.concatenate(list(batches))


class TextPreparer(Protocol):
    """Turns texts into a text encoder's input batch, with each text's known-token count."""

    def vectorize(self, texts: Sequence[str]) -> tuple[npt.NDArray[Any], list[int]]:
        """The (n, ...) batch and, per text, how many of its tokens the model knows."""
        ...


def probe_rng() -> np.random.Generator:
    """A fresh generator for probe inputs (the same draws at every load)."""
    return np.random.default_rng(PROBE_SEED)


def positive_int(entry: Mapping[str, Any], key: str, where: str) -> int:
    """entry[key], which must be an integer >= 1."""
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BundleFormatError(f"{where}.{key} must be a positive integer, got {value!r}")
    return value


def optional_floats(entry: Mapping[str, Any], key: str, where: str) -> tuple[float, ...] | None:
    """entry[key] as a tuple of numbers, or None when the entry has none."""
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    ):
        raise BundleFormatError(f"{where}.{key} must be a list of numbers, got {value!r}")
    return tuple(float(v) for v in value)


def check_input_size(where: str, dims: Mapping[str, int], nbytes: int) -> None:
    """Refuse an input shape too large for one item (a typo such as size 100000).

    Every input is this large, the start-up probes included: it would otherwise be a
    MemoryError before the service could say what is wrong.
    """
    if nbytes > MAX_INPUT_BYTES:
        shape = " x ".join(f"{key} {value}" for key, value in dims.items())
        raise BundleFormatError(
            f"{where}: inputs of {shape} take {nbytes / MiB:,.0f} MiB per item; a bundle "
            f"may ask for at most {MAX_INPUT_BYTES // MiB} MiB"
        )
