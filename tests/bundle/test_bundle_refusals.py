"""Bundles written through bundle/ in the current format, then broken: each is refused.

The service must refuse each at load and at start-up with the message that names the
problem; a bundle that is whole reads back as it was written.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bundle.digests import SPEC_DIGEST, file_sha256
from bundle.errors import BundleFormatError
from bundle.inputs import BagOfWords, Pixels
from bundle.manifest import FORMAT_VERSION, MANIFEST, Manifest
from service.encoders import load_bundle
from service.errors import BundleError
from tests.support.service_bundle import VOCAB, build_bundle, make_settings, open_client


def _manifest(root: Path) -> dict:
    return json.loads((root / MANIFEST).read_text())


def _save(root: Path, manifest: dict) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest))


def _missing_file(root: Path) -> None:
    (root / "image.pt").unlink()


def _bad_digest(root: Path) -> None:
    manifest = _manifest(root)
    manifest["files"]["text.pt"] = "0" * 64
    _save(root, manifest)


def _edited_entry(root: Path) -> None:
    # 48 px for an encoder traced at 32 px would load and give codes that match nothing.
    manifest = _manifest(root)
    manifest["modalities"]["image"]["size"] = 48
    _save(root, manifest)


def _unknown_version(root: Path) -> None:
    _save(root, {**_manifest(root), "format_version": FORMAT_VERSION + 1})


BREAKAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "missing-file": (_missing_file, r"is missing image\.pt, which the manifest lists"),
    "bad-digest": (_bad_digest, r"sha256 mismatch for text\.pt: manifest says 0{64}"),
    "edited-entry": (_edited_entry, r"the entry for image\.pt is not the one it was exported"),
    "unknown-version": (
        _unknown_version,
        rf"format_version {FORMAT_VERSION + 1}; this service reads format_version "
        rf"{FORMAT_VERSION}",
    ),
}


@pytest.fixture
def written(tmp_path: Path) -> Path:
    return build_bundle(tmp_path / "bundle")


def test_a_written_bundle_reads_back_as_written(written: Path) -> None:
    manifest = Manifest.read(written)
    assert manifest.to_json() == _manifest(written)
    assert manifest.bits == 32 and sorted(manifest.modalities) == ["image", "text"]
    image, text = manifest.modalities["image"].kind, manifest.modalities["text"].kind
    assert isinstance(image, Pixels) and image.size == 32
    assert isinstance(text, BagOfWords) and text.vocabulary.tokens == VOCAB
    assert manifest.files == {name: file_sha256(written / name) for name in manifest.files}
    # Each encoder carries the digest of its entry (the current format, not the fallback).
    for entry in manifest.modalities.values():
        carried = {SPEC_DIGEST: ""}
        torch.jit.load(str(written / entry.file), _extra_files=carried)
        assert carried[SPEC_DIGEST].decode() == entry.digest
    assert load_bundle(written).modalities == ["image", "text"]


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_the_format_refuses_a_broken_bundle(written: Path, name: str) -> None:
    breakage, message = BREAKAGES[name]
    breakage(written)
    with pytest.raises(BundleError, match=message):
        load_bundle(written)


@pytest.mark.parametrize("name", sorted(BREAKAGES))
def test_the_service_does_not_start_on_a_broken_bundle(
    written: Path, tmp_path: Path, name: str
) -> None:
    breakage, message = BREAKAGES[name]
    breakage(written)
    with pytest.raises(BundleError, match=message):
        with open_client(make_settings(written, tmp_path / "data")):
            pass
    assert not (tmp_path / "data").exists()  # refused before any collection was opened


def test_reading_raises_the_format_error_without_the_service(written: Path) -> None:
    _unknown_version(written)
    with pytest.raises(BundleFormatError, match="format_version"):
        Manifest.read(written)


def test_a_bundle_from_before_the_entry_digest_still_loads(written: Path) -> None:
    # Encoders exported before the digest existed carry none and are taken as they are.
    before = load_bundle(written).fingerprint
    manifest = _manifest(written)
    for modality in ("image", "text"):
        path = written / f"{modality}.pt"
        torch.jit.load(str(path)).save(str(path))
        manifest["files"][path.name] = file_sha256(path)
    _save(written, manifest)
    assert load_bundle(written).fingerprint == before
