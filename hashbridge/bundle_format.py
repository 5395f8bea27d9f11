"""What export writes and the service reads: the bundle's file names and format version.

Each encoder file also carries the sha256 of the manifest entry it was traced with, so an
edited manifest (an input size or vocabulary that no longer fits the traced network) is
refused at load instead of giving codes that match nothing stored.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: Extra file inside each TorchScript encoder: sha256 of its manifest entry (less "file").
SPEC_DIGEST = "input_spec.sha256"


def spec_digest(spec: Mapping[str, Any]) -> str:
    """sha256 hex of a modality's manifest entry, without its file name, as canonical JSON."""
    entry = {key: value for key, value in spec.items() if key != "file"}
    canonical = json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()
