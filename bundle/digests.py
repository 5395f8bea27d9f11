"""Content digests: of files (bundles, clips, caches) and of a manifest entry.

Each encoder file carries the sha256 of the manifest entry it was traced with, so an
edited manifest (an input size or vocabulary that no longer fits the traced network) is
refused at load instead of giving codes that match nothing stored.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

#: Extra file inside each TorchScript encoder: sha256 of its manifest entry (less "file").
SPEC_DIGEST = "input_spec.sha256"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex of a file's bytes, read in 1 MiB blocks (bundles and clips can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def spec_digest(spec: Mapping[str, Any]) -> str:
    """sha256 hex of a modality's manifest entry, without its file name, as canonical JSON."""
    entry = {key: value for key, value in spec.items() if key != "file"}
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
