"""The Encoder protocol and loading of a model bundle (manifest + TorchScript encoders).

The format and its checks live in `bundle/`: a bundle is refused at start-up, with a
message naming the problem, when its manifest is missing or malformed, a file is missing or
fails its sha256, the format version is unknown, an entry was edited after export, or an
encoder's output does not have the manifest's code width. What the service adds: inputs
it cannot prepare from uploads are refused, and the probe codes fingerprint the model.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from bundle.encoders import load_encoder
from bundle.errors import BundleFormatError
from bundle.inputs import InputKind, TextPreparer
from bundle.manifest import MANIFEST, Manifest
from service.errors import BundleError

log = logging.getLogger(__name__)


class Encoder(Protocol):
    """Maps a batch of prepared inputs to packed codes, uint8 (n, bits // 8)."""

    modality: str
    bits: int

    def encode(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """Encode a batch; the first axis is the item axis."""
        ...


class TorchScriptEncoder:
    """An encoder backed by a traced TorchScript module run under inference mode."""

    def __init__(self, modality: str, bits: int, module: torch.jit.ScriptModule) -> None:
        self.modality = modality
        self.bits = bits
        self._module = module
        self._device = torch.device("cpu")

    def to(self, device: torch.device) -> None:
        """Run on `device` from now on (inputs go there, codes come back to the CPU)."""
        self._module.to(device)
        self._device = device

    def encode(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.uint8]:
        """Encode a batch and check the output is (n, bits // 8) uint8."""
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch)).to(self._device)
            out = self._module(x)
        codes = out.cpu().numpy() if isinstance(out, torch.Tensor) else np.asarray(out)
        expected = (batch.shape[0], self.bits // 8)
        if codes.dtype != np.uint8 or codes.shape != expected:
            raise BundleError(
                f"{self.modality} encoder returned {codes.dtype} {codes.shape}; "
                f"the manifest promises uint8 {expected} for {self.bits}-bit codes"
            )
        return codes


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle."""

    path: Path
    method: str
    bits: int
    label_names: list[str]
    encoders: dict[str, Encoder]
    #: What each modality's encoder takes (size, frames, vocabulary ...).
    inputs: dict[str, InputKind]
    #: Turns texts into the text encoder's input (a bag of words, or token ids and mask).
    vectorizer: TextPreparer | None
    #: Hash of the codes of fixed probe inputs: equal exactly when codes are comparable.
    fingerprint: str

    @property
    def modalities(self) -> list[str]:
        """Modalities this bundle can encode, sorted."""
        return sorted(self.encoders)


def load_bundle(path: Path | str, device: str = "cpu") -> Bundle:
    """Load and verify a bundle folder; raise BundleError naming the problem.

    The encoders run on `device` ("cpu" or "cuda"). The probes that fingerprint the model
    run on the CPU first, so a collection keeps its fingerprint whichever device encodes.
    """
    root = Path(path)
    target = _encoder_device(device)
    try:
        manifest = Manifest.read(root)
        for modality, entry in manifest.modalities.items():
            _check_servable(root, modality, entry.kind)
        modules = {m: load_encoder(root, entry) for m, entry in manifest.modalities.items()}
    except BundleFormatError as exc:
        raise BundleError(str(exc)) from None
    bits = manifest.bits
    encoders: dict[str, Encoder] = {}
    fingerprint = hashlib.sha256(str(bits).encode())
    for modality, entry in manifest.modalities.items():  # sorted, as the fingerprint needs
        encoder = TorchScriptEncoder(modality, bits, modules[modality])
        probe = _probe(encoder, entry.kind.probe(), root / entry.file)
        fingerprint.update(modality.encode() + probe.tobytes())
        encoder.to(target)
        encoders[modality] = encoder
    inputs = {modality: entry.kind for modality, entry in manifest.modalities.items()}
    log.info(
        "loaded %s bundle %s: %d bits, %s on %s",
        manifest.method,
        root,
        bits,
        sorted(encoders),
        target,
    )
    text = inputs.get("text")
    return Bundle(
        path=root,
        method=manifest.method,
        bits=bits,
        label_names=manifest.label_names,
        encoders=encoders,
        inputs=inputs,
        vectorizer=getattr(text, "vectorizer", None),
        fingerprint=fingerprint.hexdigest(),
    )


def _check_servable(root: Path, modality: str, kind: InputKind) -> None:
    if kind.media is None:
        # Models trained on shipped feature vectors (e.g. Wikipedia's SIFT/LDA) need those
        # extractors, which the bundle does not carry: nothing uploaded can be encoded.
        raise BundleError(
            f"{root / MANIFEST}: modalities.{modality} takes precomputed feature vectors "
            f"(input {kind.name!r}), which this service cannot compute from uploads; serve a "
            "model trained on image files and raw text instead"
        )


def _encoder_device(name: str) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise BundleError(
                "encoder_device is 'cuda' but torch sees no CUDA GPU here; set "
                "HASHBRIDGE_ENCODER_DEVICE=cpu or run on a GPU host"
            )
        return torch.device("cuda")
    raise BundleError(f"encoder_device must be 'cpu' or 'cuda', got {name!r}")


def _probe(encoder: Encoder, dummy: npt.NDArray[Any], path: Path) -> npt.NDArray[np.uint8]:
    """Run the probe so a width mismatch fails at start-up, not on the first request."""
    try:
        return encoder.encode(dummy)
    except BundleError as exc:
        raise BundleError(f"{path}: {exc}") from None
    except RuntimeError as exc:
        # TorchScript errors carry the scripted call stack; the last line says what failed.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise BundleError(
            f"{path} failed on a probe {encoder.modality} input of shape {dummy.shape}: "
            f"{lines[-1] if lines else type(exc).__name__}"
        ) from None
