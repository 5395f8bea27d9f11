"""Atomic, durable writes: a reader sees the old file (or folder) or the new one, never half.

Used for bundles, checkpoints, index files and service records alike: write to a temp file
beside the target, fsync it, rename it over the target, then fsync the folder (a rename is
durable only once the directory entry is on disk).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file beside `path`; on success fsync it and rename it over `path`."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[IO[Any]], object], mode: str = "wb"
) -> Path:
    """Call `write(handle)` on a temp file and move it into place atomically."""
    with atomic_open(path, mode) as handle:
        write(handle)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], *chunks: bytes) -> Path:
    """Write the chunks, back to back, atomically."""
    return atomic_write(path, lambda handle: handle.writelines(chunks))


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write indented JSON atomically."""
    text = json.dumps(data, indent=2) + "\n"
    return atomic_write(path, lambda handle: handle.write(text), mode="w")


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file written by someone else (torch.save, a copy) to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install_dir(tmp: Path, out: Path) -> None:
    """Move a finished folder into place; an old one is replaced only once the new is whole."""
    # mkdtemp makes the folder private (0700); a bundle is meant to be read by a service that
    # may run as another user (the container's), so give it the usual umask'd permissions.
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)
    fsync_dir(tmp)
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.with_name(f".{out.name}-old-{os.getpid()}")
            os.replace(out, old)
    os.replace(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
        else:
            old.unlink()  # a file, or a link to the earlier folder (left where it points)
