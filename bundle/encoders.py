"""Encoder files: TorchScript modules that carry the digest of the entry they were traced for."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from bundle.digests import SPEC_DIGEST
from bundle.errors import BundleFormatError
from bundle.fileio import fsync_file
from bundle.manifest import MANIFEST, Entry


def trace(module: torch.nn.Module, example: torch.Tensor) -> torch.jit.ScriptModule:
    """Trace an encoder on an example batch (its batch axis stays dynamic)."""
    # Shape-dependent Python values (TF 'SAME' padding) are fixed by the input size, which
    # the manifest pins; callers check several batch sizes against the eager module.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(module, example, check_trace=False)


def save_encoder(module: torch.jit.ScriptModule, path: Path, entry: Entry) -> None:
    """Write a traced encoder with the digest of its manifest entry inside, durably."""
    module.save(str(path), _extra_files={SPEC_DIGEST: entry.digest})
    fsync_file(path)


def load_encoder(root: Path, entry: Entry) -> torch.jit.ScriptModule:
    """Load an entry's encoder (on the CPU, eval mode); refuse one traced for another entry."""
    path = root / entry.file
    traced_with: dict[str, Any] = {SPEC_DIGEST: ""}  # torch.jit.load fills in the bytes
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=traced_with)
    except RuntimeError as exc:
        raise BundleFormatError(f"{path} is not a loadable TorchScript module: {exc}") from None
    # Bundles exported before the digest existed carry none (b"") and are taken as they are.
    digest = bytes(traced_with[SPEC_DIGEST]).decode("ascii", "replace")
    if digest and digest != entry.digest:
        raise BundleFormatError(
            f"{root / MANIFEST}: the entry for {path.name} is not the one it was exported with "
            "(an input size, normalisation or vocabulary edited by hand would give codes that "
            "match nothing); export the bundle again"
        )
    return module.eval()
