"""Durable SQLite store of items (the source of truth the in-memory indexes are built from).

Every written row gets the next value of a store-wide ``seq`` counter, so
``ORDER BY seq`` replays writes in the order the indexes saw them; every write
also draws a random write id, so a snapshot tagged with ``last_write()`` is
provably current or provably stale, even against a store restored from a backup.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from index.base import PathLike
from index.codes import check_bits
from index.errors import BitsMismatchError, CodeError, ItemError
from index.filters import matches, sql_prefilter

SCHEMA_VERSION = 1
#: Modality names become file names of index snapshots, so they are kept plain.
MODALITY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# One encoder for every row: json.dumps with options builds a new one per call.
_METADATA_JSON = json.JSONEncoder(sort_keys=True, allow_nan=False)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT UNIQUE,
    modality TEXT NOT NULL,
    code BLOB NOT NULL,
    metadata TEXT NOT NULL,
    created_at REAL NOT NULL,
    seq INTEGER NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS items_modality_seq ON items (modality, seq);
CREATE TABLE IF NOT EXISTS thumbnails (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""


def _new_write_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class NewItem:
    """An item to upsert; ``code`` is the packed code of one item (bits // 8 bytes).

    ``thumbnail`` (small image bytes) is stored in the same transaction as the item; an
    upsert without one removes the thumbnail a replaced item had.
    """

    modality: str
    code: bytes | npt.NDArray[np.uint8]
    client_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    thumbnail: bytes | None = None


@dataclass(frozen=True)
class StoredItem:
    """An item as stored, with its external id and the seq of its last write."""

    id: int
    client_id: str | None
    modality: str
    code: bytes
    metadata: dict[str, Any]
    created_at: float
    seq: int


class CodeStore:
    """SQLite item store (WAL, synchronous=FULL); one connection guarded by a lock."""

    def __init__(
        self, path: PathLike, bits: int, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.path = Path(path)
        self.bits = check_bits(bits)
        self._clock = clock
        self._lock = threading.Lock()
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._init_schema()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def upsert(self, items: Sequence[NewItem]) -> list[int]:
        """Insert or replace items in one transaction and return their ids.

        An item whose ``client_id`` already exists overwrites that row and keeps
        its id (ids stay stable for clients); re-sending a batch creates no
        duplicates. Each written row gets a new seq.
        """
        if not items:
            # Nothing written: a new write id would make every current snapshot look stale.
            return []
        rows = [self._encode(i, item) for i, item in enumerate(items)]
        for i, item in enumerate(items):
            if item.thumbnail is not None and not isinstance(item.thumbnail, bytes):
                raise ItemError(f"item #{i}: thumbnail must be bytes or None")
        client_ids = [r[0] for r in rows if r[0] is not None]
        if len(set(client_ids)) != len(client_ids):
            raise ItemError("client_id values within one batch must be unique")
        now = self._clock()
        with self._transaction():
            first = self._seq() + 1
            # One statement for the whole batch; every written row gets the next seq, so
            # the rows' ids come back in batch order by reading them by seq.
            self._db.executemany(
                "INSERT INTO items (client_id, modality, code, metadata, created_at, seq) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (client_id) DO UPDATE SET "
                "modality = excluded.modality, code = excluded.code, "
                "metadata = excluded.metadata, seq = excluded.seq",
                [(*row, now, first + i) for i, row in enumerate(rows)],
            )
            last = first + len(rows) - 1
            ids = [
                int(i)
                for (i,) in self._db.execute(
                    "SELECT id FROM items WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last)
                )
            ]
            self._put_thumbnails(ids, items)
            self._record_write(last)
        return ids

    def delete(self, ids: Sequence[int]) -> int:
        """Delete items by id in one transaction; return how many existed."""
        with self._transaction():
            deleted = 0
            for i in ids:
                deleted += self._db.execute("DELETE FROM items WHERE id = ?", (int(i),)).rowcount
                self._db.execute("DELETE FROM thumbnails WHERE id = ?", (int(i),))
            if deleted:
                self._record_write(self._seq() + 1)
        return deleted

    def get(self, item_id: int) -> StoredItem | None:
        """Return one item by id, or None."""
        return self.get_many([item_id]).get(int(item_id))

    def get_many(self, ids: Sequence[int]) -> dict[int, StoredItem]:
        """Return the items that exist among ids, keyed by id."""
        out: dict[int, StoredItem] = {}
        unique = list(dict.fromkeys(int(i) for i in ids))
        with self._lock:
            # Chunked to stay under SQLite's bound-parameter limit.
            for s in range(0, len(unique), 500):
                chunk = unique[s : s + 500]
                marks = ",".join("?" * len(chunk))
                for row in self._db.execute(
                    "SELECT id, client_id, modality, code, metadata, created_at, seq "
                    f"FROM items WHERE id IN ({marks})",
                    chunk,
                ):
                    out[row[0]] = StoredItem(
                        row[0], row[1], row[2], bytes(row[3]), json.loads(row[4]), row[5], row[6]
                    )
        return out

    def code_rows(
        self, ids: Sequence[int], chunk: int = 4096
    ) -> tuple[npt.NDArray[np.int64], list[str], npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
        """(ids, modalities, codes, seqs) of the items that exist among ids, in no set order."""
        unique = list(dict.fromkeys(int(i) for i in ids))
        rows: list[tuple[int, str, bytes, int]] = []
        with self._lock:
            for s in range(0, len(unique), chunk):
                rows += self._db.execute(
                    "SELECT id, modality, code, seq FROM items "
                    "WHERE id IN (SELECT value FROM json_each(?))",
                    (json.dumps(unique[s : s + chunk]),),
                ).fetchall()
        width = self.bits // 8
        return (
            np.array([r[0] for r in rows], dtype=np.int64),
            [r[1] for r in rows],
            np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(-1, width),
            np.array([r[3] for r in rows], dtype=np.int64),
        )

    def thumbnail(self, item_id: int) -> bytes | None:
        """Return an item's thumbnail bytes, or None when it has none (or does not exist)."""
        with self._lock:
            row = self._db.execute(
                "SELECT data FROM thumbnails WHERE id = ?", (int(item_id),)
            ).fetchone()
        return None if row is None else bytes(row[0])

    def lookup_client_ids(self, client_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """Map existing client_ids to (id, modality)."""
        out: dict[str, tuple[int, str]] = {}
        with self._lock:
            for cid in client_ids:
                row = self._db.execute(
                    "SELECT id, modality FROM items WHERE client_id = ?", (cid,)
                ).fetchone()
                if row is not None:
                    out[cid] = (int(row[0]), str(row[1]))
        return out

    def iter_codes(
        self, modality: str | None = None, batch_size: int = 8192
    ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]]:
        """Yield (ids, codes) batches in write (seq) order, optionally for one modality."""
        width = self.bits // 8
        after = -1
        where = "seq > ?" + ("" if modality is None else " AND modality = ?")
        while True:
            args: tuple[Any, ...] = (after,) if modality is None else (after, modality)
            with self._lock:
                rows = self._db.execute(
                    f"SELECT id, code, seq FROM items WHERE {where} ORDER BY seq LIMIT ?",
                    (*args, batch_size),
                ).fetchall()
            if not rows:
                return
            after = rows[-1][2]
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            codes = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.uint8)
            yield ids, codes.reshape(len(rows), width)

    def count(self, modality: str | None = None) -> int:
        """Return the number of items, optionally for one modality."""
        with self._lock:
            if modality is None:
                row = self._db.execute("SELECT COUNT(*) FROM items").fetchone()
            else:
                row = self._db.execute(
                    "SELECT COUNT(*) FROM items WHERE modality = ?", (modality,)
                ).fetchone()
        return int(row[0])

    def modalities(self) -> list[str]:
        """Return the modalities that currently have items, sorted."""
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT modality FROM items ORDER BY 1").fetchall()
        return [r[0] for r in rows]

    def matching_codes(
        self, modality: str, where: Mapping[str, Any], chunk: int = 65_536
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """(ids, seqs, codes) of every item of the modality whose metadata matches where.

        One pass over the modality, a range of ids at a time.
        """
        with self._lock:
            (top,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM items").fetchone()
        ranges = (("id > ? AND id <= ?", (s, s + chunk)) for s in range(0, int(top), chunk))
        rows = list(self._rows_matching("id, seq, code", modality, where, ranges))
        width = self.bits // 8
        return (
            np.array([r[0] for r in rows], dtype=np.int64),
            np.array([r[1] for r in rows], dtype=np.int64),
            np.frombuffer(b"".join(r[2] for r in rows), dtype=np.uint8).reshape(-1, width),
        )

    def ids_matching(
        self, ids: Sequence[int], modality: str, where: Mapping[str, Any], chunk: int = 4096
    ) -> set[int]:
        """The ids among ids of items that are of this modality and whose metadata matches."""
        unique = list(dict.fromkeys(int(i) for i in ids))
        lists = (
            ("id IN (SELECT value FROM json_each(?))", (json.dumps(unique[s : s + chunk]),))
            for s in range(0, len(unique), chunk)
        )
        return {row[0] for row in self._rows_matching("id", modality, where, lists)}

    def _rows_matching(
        self,
        columns: str,
        modality: str,
        where: Mapping[str, Any],
        scopes: Iterable[tuple[str, tuple[Any, ...]]],
    ) -> Iterator[tuple[Any, ...]]:
        """``columns`` of the matching items of the modality within each scope (SQL, args).

        SQLite's JSON functions drop most non-matching rows before Python parses any; the
        lock is let go between scopes, so a long check does not hold writers back.
        """
        condition, params = sql_prefilter(where)
        for scope, args in scopes:
            with self._lock:
                found = self._db.execute(
                    f"SELECT {columns}, metadata FROM items WHERE {scope} "
                    f"AND modality = ? AND {condition}",
                    (*args, modality, *params),
                ).fetchall()
            for *values, text in found:
                if matches(json.loads(text), where):
                    yield tuple(values)

    def stats(self) -> dict[str, Any]:
        """Return item counts per modality, bits, seq and the database path."""
        with self._lock:
            rows = self._db.execute(
                "SELECT modality, COUNT(*) FROM items GROUP BY modality ORDER BY 1"
            ).fetchall()
            seq = self._seq()
        by_modality = {m: int(c) for m, c in rows}
        return {
            "path": str(self.path),
            "bits": self.bits,
            "count": sum(by_modality.values()),
            "by_modality": by_modality,
            "seq": seq,
        }

    def last_seq(self) -> int:
        """Return the seq of the latest write (0 for a new store)."""
        with self._lock:
            return self._seq()

    def last_write(self) -> tuple[int, str]:
        """(seq, write id) of the latest write: the id is random, new with every write.

        A seq names a write only within one history: a store restored from a backup, or
        deleted and started again, reaches the same seq through other writes. The id tells
        those apart, so an index snapshot is trusted only for the very write it saw.
        """
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'write_id'").fetchone()
            return self._seq(), str(row[0])

    def _init_schema(self) -> None:
        with self._transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            self._db.execute(
                "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?), ('bits', ?), "
                "('seq', '0'), ('write_id', ?)",
                (str(SCHEMA_VERSION), str(self.bits), _new_write_id()),
            )
            stored = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        if int(stored["bits"]) != self.bits:
            raise BitsMismatchError(
                f"store {self.path} holds {stored['bits']}-bit codes but was opened with "
                f"bits={self.bits}; open it with bits={stored['bits']} or use a new data dir"
            )
        if int(stored["schema_version"]) != SCHEMA_VERSION:
            raise ItemError(f"store {self.path} has unsupported schema {stored['schema_version']}")

    def _encode(self, index: int, item: NewItem) -> tuple[str | None, str, bytes, str]:
        return encode_item(index, item, self.bits)

    def _put_thumbnails(self, ids: Sequence[int], items: Sequence[NewItem]) -> None:
        # Only an item with a client id can replace a stored one (the rest get fresh
        # AUTOINCREMENT ids, and deletes take their thumbnails), so only those can leave a
        # stale thumbnail behind.
        self._db.executemany(
            "DELETE FROM thumbnails WHERE id = ?",
            [
                (i,)
                for i, item in zip(ids, items, strict=True)
                if item.thumbnail is None and item.client_id is not None
            ],
        )
        self._db.executemany(
            "INSERT OR REPLACE INTO thumbnails VALUES (?, ?)",
            [
                (i, item.thumbnail)
                for i, item in zip(ids, items, strict=True)
                if item.thumbnail is not None
            ],
        )

    def _seq(self) -> int:
        return int(self._db.execute("SELECT value FROM meta WHERE key = 'seq'").fetchone()[0])

    def _record_write(self, seq: int) -> None:
        """Store the last write's seq and draw its write id (see last_write)."""
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'seq'", (str(seq),))
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'write_id'", (_new_write_id(),))

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT under the store lock; ROLLBACK on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise


def encode_item(index: int, item: NewItem, bits: int) -> tuple[str | None, str, bytes, str]:
    """Check item #index of a batch; (client_id, modality, code bytes, metadata JSON text)."""
    if not isinstance(item.modality, str) or not MODALITY_RE.match(item.modality):
        raise ItemError(
            f"item #{index}: modality must match {MODALITY_RE.pattern}, got {item.modality!r}"
        )
    if item.client_id is not None and (not isinstance(item.client_id, str) or not item.client_id):
        raise ItemError(f"item #{index}: client_id must be a non-empty string or None")
    code = item.code.tobytes() if isinstance(item.code, np.ndarray) else item.code
    if isinstance(item.code, np.ndarray) and item.code.dtype != np.uint8:
        raise CodeError(f"item #{index}: code must be uint8, got {item.code.dtype}")
    if not isinstance(code, bytes) or len(code) != bits // 8:
        raise CodeError(f"item #{index}: code must be {bits // 8} bytes for {bits} bits")
    if not isinstance(item.metadata, Mapping):
        raise ItemError(f"item #{index}: metadata must be a JSON object")
    try:
        metadata = _METADATA_JSON.encode(dict(item.metadata))
    except (TypeError, ValueError) as exc:
        raise ItemError(f"item #{index}: metadata is not JSON-serialisable: {exc}") from None
    return item.client_id, item.modality, code, metadata
