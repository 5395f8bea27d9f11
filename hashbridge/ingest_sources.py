"""What `hashbridge ingest` sends: the items of a media folder or of a manifest.

A folder is walked recursively: images and clips by their extension, and a ``.txt`` file as
a text (the caption of the image or clip of the same name beside it, when there is one).
A manifest is the training format (CSV with a header, or JSON lines): ``image``, ``video``
and ``text`` columns become items, ``labels`` and every other column their metadata.

Client ids are what makes a rerun skip what is stored: a folder's items are named by their
path relative to the folder, a manifest's by ``<row id>/<column>``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm"})
TEXT_SUFFIX = ".txt"
MANIFEST_SUFFIXES = frozenset({".csv", ".jsonl", ".ndjson"})
#: Manifest columns that are items; ``id`` names the row and the rest is metadata.
ITEM_COLUMNS = ("image", "video", "text")
#: Columns a training manifest has that mean nothing to a stored item.
TRAINING_ONLY = frozenset({"split"})


class SourceError(ValueError):
    """A path or manifest that cannot be read as items (a user's mistake)."""


@dataclass(frozen=True)
class Entry:
    """One item to ingest: a file to upload or a text, under a client id."""

    client_id: str
    path: Path | None = None
    text: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """What the summary calls it."""
        return self.client_id


def collect(paths: list[Path], prefix: str = "") -> list[Entry]:
    """Every item of the given folders and manifests, in a stable order; ids unique."""
    entries: list[Entry] = []
    for path in paths:
        if path.is_dir():
            entries += folder_entries(path, prefix)
        elif path.is_file() and path.suffix.lower() in MANIFEST_SUFFIXES:
            entries += manifest_entries(path, prefix)
        elif path.exists():
            raise SourceError(
                f"{path}: give a folder or a manifest (.csv, .jsonl), not a "
                f"{path.suffix or 'suffix-less'} file"
            )
        else:
            raise SourceError(f"{path}: no such file or folder")
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.client_id in seen:
            raise SourceError(
                f"two items would be stored as {entry.client_id!r}; ingest those sources "
                "separately with different --prefix values"
            )
        seen[entry.client_id] = i
    return entries


def folder_entries(root: Path, prefix: str = "") -> list[Entry]:
    """Images, clips and texts under a folder (hidden files and folders skipped)."""
    files = sorted(p for p in _walk(root) if p.is_file())
    media = {p.with_suffix(""): p for p in files if _media_kind(p)}
    entries = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        if _media_kind(path):
            entries.append(Entry(prefix + rel, path=path, metadata={"path": rel}))
        elif suffix == TEXT_SUFFIX:
            metadata: dict[str, Any] = {"path": rel}
            partner = media.get(path.with_suffix(""))
            if partner is not None:
                # The caption's own item, linked to its picture by metadata.
                metadata["caption_of"] = prefix + partner.relative_to(root).as_posix()
            entries.append(Entry(prefix + rel, text=_read_text(path), metadata=metadata))
    return entries


def manifest_entries(manifest: Path, prefix: str = "") -> list[Entry]:
    """The items of a CSV or JSONL manifest; extra columns go into each item's metadata."""
    base = manifest.parent
    entries = []
    for line, row in _manifest_rows(manifest):
        where = f"{manifest}, line {line}"
        row_id = str(row.get("id") or "").strip()
        if not row_id:
            raise SourceError(f"{where}: the row has no id (the 'id' column)")
        metadata = _row_metadata(row)
        if not any(row.get(c) for c in ITEM_COLUMNS):
            raise SourceError(f"{where}: the row has none of {', '.join(ITEM_COLUMNS)}")
        for column in ITEM_COLUMNS:
            value = row.get(column)
            if value in (None, ""):
                continue
            client_id = f"{prefix}{row_id}/{column}"
            if column == "text":
                entries.append(Entry(client_id, text=str(value), metadata=metadata))
            else:
                path = Path(str(value))
                entries.append(
                    Entry(client_id, path=path if path.is_absolute() else base / path,
                          metadata={**metadata, "path": str(value)})
                )  # fmt: skip
    return entries


def _walk(root: Path) -> Iterator[Path]:
    for path in root.iterdir():
        if path.name.startswith("."):
            continue
        if path.is_dir():
            yield from _walk(path)
        else:
            yield path


def _media_kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig").strip()
    except UnicodeDecodeError:
        raise SourceError(f"{path}: a caption must be UTF-8 text") from None


def _manifest_rows(manifest: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    if manifest.suffix.lower() == ".csv":
        with manifest.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "id" not in reader.fieldnames:
                raise SourceError(f"{manifest}: a CSV manifest needs a header with an id column")
            for row in reader:
                yield reader.line_num, {k: v for k, v in row.items() if k is not None}
        return
    with manifest.open(encoding="utf-8-sig") as f:
        for number, text in enumerate(f, 1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{manifest}, line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise SourceError(f"{manifest}, line {number}: each line must be a JSON object")
            yield number, row


def _row_metadata(row: dict[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {"row": str(row["id"]).strip()}
    for key, value in row.items():
        if key in ITEM_COLUMNS or key in TRAINING_ONLY or key == "id":
            continue
        if key == "labels" and isinstance(value, str):
            value = [name for name in value.split("|") if name]
        metadata[key] = value
    return metadata
