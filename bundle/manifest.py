"""The manifest: a bundle's table of contents, typed, with its reading and validation.

`Manifest.read(root)` refuses, with a message naming the problem, a folder with no or
malformed manifest, an unknown format version, code widths the index cannot hold, an entry
that is not a known modality and input kind, and a listed file that is missing or fails its
sha256. Provenance (when and from what run it was made) is kept but not checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bundle.digests import file_sha256, spec_digest
from bundle.errors import BundleFormatError
from bundle.inputs import KINDS, InputKind
from bundle.widths import MAX_BITS, MIN_BITS

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MODALITIES = ("image", "text", "video")


@dataclass(frozen=True)
class Entry:
    """One modality's encoder: its file and the input it takes."""

    file: str
    kind: InputKind
    #: The entry as stored, less "file": what the encoder's spec digest covers.
    stored: Mapping[str, Any]

    @classmethod
    def of(cls, file: str, kind: InputKind) -> Entry:
        """A new entry (for writing) for an encoder file that takes `kind`."""
        return cls(file, kind, kind.to_json())

    @property
    def digest(self) -> str:
        """sha256 of the entry (bar its file name), as stored inside the encoder."""
        return spec_digest(self.stored)

    def to_json(self) -> dict[str, Any]:
        """The manifest's modalities.<modality> object."""
        return {"file": self.file, **self.stored}


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest.json."""

    bits: int
    modalities: dict[str, Entry]
    #: Every file of the bundle but the manifest -> its sha256 hex.
    files: dict[str, str]
    method: str = "unknown"
    label_names: list[str] = field(default_factory=list)
    multi_label: bool | None = None
    #: Free-form keys (created_at, versions, source run, verified samples), kept as they are.
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The manifest as written to manifest.json."""
        data: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "bits": self.bits,
            "label_names": list(self.label_names),
        }
        if self.multi_label is not None:
            data["multi_label"] = self.multi_label
        data["modalities"] = {m: entry.to_json() for m, entry in self.modalities.items()}
        data["files"] = dict(self.files)
        return {**data, **self.provenance}

    @classmethod
    def read(cls, root: Path | str) -> Manifest:
        """Read and check a bundle folder's manifest, and the files it lists."""
        root = Path(root)
        data = _load_json(root)
        where = root / MANIFEST
        bits = check_bits(data.get("bits"))
        modalities, hashes = data.get("modalities"), data.get("files")
        if not isinstance(modalities, dict) or not modalities:
            raise BundleFormatError(f"{where}: 'modalities' must be a non-empty object")
        if not isinstance(hashes, dict):
            raise BundleFormatError(f"{where}: 'files' must map file names to sha256 hex")
        files = _Files(root, hashes)
        entries = {m: _entry(m, modalities[m], files, where) for m in sorted(modalities)}
        names = data.get("label_names")
        if names is None:
            names = []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BundleFormatError(f"{where}: label_names must be a list of strings")
        method, multi = data.get("method", "unknown"), data.get("multi_label")
        known = ("format_version", "method", "bits", "label_names", "multi_label")
        return cls(
            bits=bits,
            modalities=entries,
            files={str(k): str(v) for k, v in hashes.items()},
            method=str(method),
            label_names=names,
            multi_label=multi if isinstance(multi, bool) else None,
            provenance={k: v for k, v in data.items() if k not in (*known, "modalities", "files")},
        )


def check_bits(bits: object) -> int:
    """A manifest's code width, which the index must be able to hold."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise BundleFormatError(f"manifest 'bits' must be an integer, got {bits!r}")
    if bits % 8 or not MIN_BITS <= bits <= MAX_BITS:
        raise BundleFormatError(
            f"manifest 'bits' is {bits}; codes must be a multiple of 8 bits "
            f"between {MIN_BITS} and {MAX_BITS}"
        )
    return bits


def checked_file(root: Path, name: str, hashes: Mapping[str, Any]) -> Path:
    """A bundle file the manifest lists, present and matching its sha256."""
    path = root / name
    if not path.is_file():
        raise BundleFormatError(f"bundle {root} is missing {name}, which the manifest lists")
    expected = hashes.get(name)
    if not isinstance(expected, str):
        raise BundleFormatError(f"{root / MANIFEST} lists no sha256 for {name} under 'files'")
    actual = file_sha256(path)
    if actual != expected.lower():
        raise BundleFormatError(
            f"sha256 mismatch for {name}: manifest says {expected}, file is {actual}; "
            "the bundle is corrupt or was modified after export"
        )
    return path


@dataclass(frozen=True)
class _Files:
    root: Path
    hashes: Mapping[str, Any]

    def checked(self, name: str) -> Path:
        return checked_file(self.root, name, self.hashes)


def _load_json(root: Path) -> dict[str, Any]:
    path = root / MANIFEST
    if not path.is_file():
        if (root / "checkpoint.pt").is_file():
            raise BundleFormatError(
                f"{root} is a training run, not a bundle: export it first "
                f"(hashbridge export --run {root} --out BUNDLE) and serve BUNDLE"
            )
        raise BundleFormatError(
            f"bundle {root} has no {MANIFEST}; point bundle_dir at an export folder"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleFormatError(f"{path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BundleFormatError(f"{path} must hold a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleFormatError(
            f"{path} has format_version {version!r}; this service reads format_version "
            f"{FORMAT_VERSION} (re-export the bundle or upgrade the service)"
        )
    return data


def _entry(modality: str, raw: object, files: _Files, manifest: Path) -> Entry:
    where = f"{manifest}: modalities.{modality}"
    if modality not in MODALITIES:
        raise BundleFormatError(f"{where}: unknown modality; expected one of {list(MODALITIES)}")
    if not isinstance(raw, dict) or not isinstance(raw.get("file"), str):
        raise BundleFormatError(f"{where} must be an object with a 'file'")
    name = raw.get("input")
    kind = KINDS.get(name) if isinstance(name, str) else None
    if kind is None or modality not in kind.modalities:
        accepted = [k.name for k in KINDS.values() if modality in k.modalities]
        wanted = " or ".join(repr(a) for a in accepted)
        raise BundleFormatError(f"{where}.input is {name!r}; expected {wanted}")
    stored = {key: value for key, value in raw.items() if key != "file"}
    parsed = kind.from_json(raw, where, files)
    files.checked(raw["file"])
    return Entry(raw["file"], parsed, stored)
