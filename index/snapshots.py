"""Snapshot files of the local collection's in-process indexes, and rebuilding without one.

A snapshot records the store write (seq and write id) it reflects; on open it is used
only if that write is still the store's latest and it was built with the configured
index, otherwise the modality's index is rebuilt from SQLite in write order.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from index.base import SnapshotIndex
from index.errors import BitsMismatchError, IndexFileError
from index.factory import IndexConfig, build_index, load_index
from index.fileio import read_header
from index.store import CodeStore

log = logging.getLogger(__name__)


def snapshot_path(root: Path, modality: str) -> Path:
    """Where a modality's index snapshot lives in the data dir."""
    return root / f"index-{modality}.hbix"


def remove_leftovers(root: Path) -> None:
    """Delete temp files of snapshot writes killed midway (each as big as its index)."""
    # Nothing else would ever remove them; the opening process now owns the data dir.
    for leftover in root.glob(f".{snapshot_path(root, '*').name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def save_snapshots(root: Path, store: CodeStore, indexes: dict[str, SnapshotIndex]) -> list[Path]:
    """Atomically save every index tagged with the store write it reflects.

    The caller holds writers off, so the store's latest write and the indexes agree.
    """
    seq, write_id = store.last_write()
    paths = []
    for modality, index in indexes.items():
        path = snapshot_path(root, modality)
        index.save(path, extra={"store_seq": seq, "store_write_id": write_id, "modality": modality})
        paths.append(path)
    log.info("snapshot of %d indexes at store seq %d", len(paths), seq)
    return paths


def rebuild(store: CodeStore, modality: str, config: IndexConfig) -> SnapshotIndex:
    """Build a modality's index from the store in write order (same ties as live)."""
    batches = list(store.iter_codes(modality))
    width = store.bits // 8
    ids = np.concatenate([b[0] for b in batches]) if batches else np.empty(0, np.int64)
    codes = np.concatenate([b[1] for b in batches]) if batches else np.empty((0, width), np.uint8)
    return build_index(store.bits, config, ids, codes)


def restore(
    root: Path, store: CodeStore, modality: str, config: IndexConfig
) -> tuple[SnapshotIndex, str]:
    """The modality's index from its snapshot if still current, else rebuilt; and which."""
    path = snapshot_path(root, modality)
    seq, write_id = store.last_write()
    reason = "missing"
    if path.exists():
        try:
            # The header alone decides most cases, without reading a stale index's payload.
            header = read_header(path)
            extra = header.get("extra") or {}
            # The checksum covers the payload only: a damaged header can still parse.
            if not isinstance(extra, dict):
                raise IndexFileError(f"{path} has a corrupt header (extra is not an object)")
            if extra.get("modality") != modality:
                reason = f"of another modality ({extra.get('modality')!r})"
            elif extra.get("store_seq") != seq:
                reason = f"stale (snapshot seq {extra.get('store_seq')}, store seq {seq})"
            elif "store_write_id" not in extra:
                reason = "written by an older version (no store write id)"
            elif extra.get("store_write_id") != write_id:
                reason = f"from another history of the store (same seq {seq}, other writes)"
            elif not config.matches(header):
                reason = "built with a different index config"
            else:
                index = load_index(path, store.bits, config)
                if len(index) != store.count(modality):
                    reason = "item count disagrees with the store"
                else:
                    log.info("loaded %s index snapshot at seq %d", modality, seq)
                    return index, "loaded"
        except (IndexFileError, BitsMismatchError) as exc:
            reason = f"corrupt ({exc})"
    log.warning("%s index snapshot %s: rebuilding from the store", modality, reason)
    return rebuild(store, modality, config), reason
