"""Writing a bundle: encoders, the files their inputs need, then the manifest, atomically.

Everything goes into a private folder beside the target, which replaces the target only
once the manifest is written: a reader sees the old bundle or the new one, never half.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from bundle.digests import file_sha256
from bundle.encoders import save_encoder
from bundle.fileio import fsync_file, install_dir, write_json
from bundle.inputs import InputKind
from bundle.manifest import MANIFEST, Entry, Manifest


class BundleWriter:
    """`with BundleWriter(out) as w: w.add(...); w.finish(...)` writes the bundle `out`."""

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{self.out.name}-"
        self.folder = Path(tempfile.mkdtemp(dir=self.out.parent, prefix=prefix, suffix=".tmp"))
        self.entries: dict[str, Entry] = {}
        self.files: dict[str, str] = {}
        self._done = False

    def add(self, modality: str, module: torch.jit.ScriptModule, kind: InputKind) -> Path:
        """Save `modality`'s encoder, taking `kind`, and copy in the files the input needs."""
        entry = Entry.of(f"{modality}.pt", kind)
        path = self.folder / entry.file
        save_encoder(module, path, entry)
        self.files[entry.file] = file_sha256(path)
        for name, source in kind.assets().items():
            shutil.copyfile(source, self.folder / name)
            fsync_file(self.folder / name)
            self.files[name] = file_sha256(self.folder / name)
        self.entries[modality] = entry
        return path

    def finish(
        self,
        bits: int,
        *,
        method: str,
        label_names: list[str],
        multi_label: bool | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> Manifest:
        """Write the manifest and move the bundle into place."""
        manifest = Manifest(
            bits=bits,
            modalities=dict(self.entries),
            files=dict(self.files),
            method=method,
            label_names=list(label_names),
            multi_label=multi_label,
            provenance=dict(provenance or {}),
        )
        write_json(self.folder / MANIFEST, manifest.to_json())
        install_dir(self.folder, self.out)
        self._done = True
        return manifest

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self._done:  # an error, or no finish(): leave nothing behind
            shutil.rmtree(self.folder, ignore_errors=True)
