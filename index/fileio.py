"""The small self-describing container used for index files, written atomically.

Layout: 8-byte magic, uint32 little-endian header length, a JSON header, then
the payload blobs back to back. The header lists the blob lengths and a CRC32
of the payload so a torn or bit-flipped file is refused instead of half-loaded.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bundle.fileio import write_bytes
from index.errors import BitsMismatchError, IndexFileError

MAGIC = b"HBIDX\x00\x01\n"
_LEN = struct.Struct("<I")


def write_container(
    path: str | os.PathLike[str], header: Mapping[str, Any], blobs: Sequence[bytes]
) -> None:
    """Atomically write a header and payload blobs as one container file."""
    crc = 0
    for blob in blobs:
        crc = zlib.crc32(blob, crc)
    full = {**header, "blob_sizes": [len(b) for b in blobs], "crc32": crc}
    head = json.dumps(full, sort_keys=True).encode()
    write_bytes(path, MAGIC, _LEN.pack(len(head)), head, *blobs)


def _read_head(f: Any, path: Path) -> dict[str, Any]:
    if f.read(len(MAGIC)) != MAGIC:
        raise IndexFileError(f"{path} is not a hashbridge index file (bad magic)")
    raw_len = f.read(_LEN.size)
    if len(raw_len) != _LEN.size:
        raise IndexFileError(f"{path} is truncated (no header length)")
    (n,) = _LEN.unpack(raw_len)
    # Lengths are checked against the file before reading: f.read(n) allocates n bytes
    # up front, so one flipped digit could ask for terabytes instead of reporting damage.
    left = os.fstat(f.fileno()).st_size - f.tell()
    if n > left:
        raise IndexFileError(f"{path} is truncated (header longer than the file)")
    try:
        header = json.loads(f.read(n))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"{path} has a corrupt header: {exc}") from None
    sizes = header.get("blob_sizes") if isinstance(header, dict) else None
    if not isinstance(sizes, list) or not all(isinstance(s, int) and s >= 0 for s in sizes):
        raise IndexFileError(f"{path} has a corrupt header")
    if sum(sizes) > left - n:
        raise IndexFileError(f"{path} is truncated")
    return header


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read only the JSON header of a container file (cheap; payload not checked)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            return _read_head(f, p)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise IndexFileError(f"cannot read {p}: {exc}") from None


def read_container(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[bytes]]:
    """Read and verify a container file; raise IndexFileError if it is damaged."""
    p = Path(path)
    with p.open("rb") as f:
        header = _read_head(f, p)
        blobs = []
        crc = 0
        for size in header["blob_sizes"]:
            blob = f.read(size)
            if len(blob) != size:
                raise IndexFileError(f"{p} is truncated")
            crc = zlib.crc32(blob, crc)
            blobs.append(blob)
        if f.read(1):
            raise IndexFileError(f"{p} has trailing bytes")
    if crc != header.get("crc32"):
        raise IndexFileError(f"{p} failed its checksum (corrupt payload)")
    return header, blobs


def check_header(header: Mapping[str, Any], path: Path, backend: str, bits: int | None) -> int:
    """Check a loaded header's backend and bits; return the file's bit width."""
    if header.get("backend") != backend:
        raise IndexFileError(
            f"{path} holds a {header.get('backend')!r} index, expected {backend!r}"
        )
    file_bits = header.get("bits")
    if not isinstance(file_bits, int):
        raise IndexFileError(f"{path} header has no bit width")
    if bits is not None and file_bits != bits:
        raise BitsMismatchError(
            f"{path} holds {file_bits}-bit codes but {bits}-bit codes were requested; "
            "rebuild the index or open it with matching bits"
        )
    return file_bits
