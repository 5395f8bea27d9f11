"""The local collection backend: one in-process Hamming index per modality over a CodeStore.

SQLite is the truth: every write commits there first and is then applied to the
in-memory indexes (FAISS, or the NumPy reference). Their snapshot files and rebuilding
live in ``index.snapshots``. Meets ``index.backend.CollectionBackend`` with ties in
write order.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from index.backend import Hit, TieOrder
from index.base import PathLike, SearchParams, SnapshotIndex, check_ids, check_k
from index.codes import check_bits, hamming, validate_codes
from index.factory import IndexConfig, make_index
from index.reference import NumpyHammingIndex
from index.rerank import MAX_POOL, Candidates, Ranking
from index.rwlock import RWLock
from index.snapshots import rebuild, remove_leftovers, restore, save_snapshots
from index.store import CodeStore, NewItem, StoredItem
from index.value_search import search_by_values

log = logging.getLogger(__name__)

STORE_FILE = "store.sqlite3"
#: Nearest items a filtered search checks before it scans the modality's matches instead.
_MIN_CANDIDATES = 256
#: Re-ranking ties across modalities: a modality's rank sits above its index's slots.
_RANK_SHIFT = 48


__all__ = ["STORE_FILE", "Collection", "Hit"]


class Collection:
    """Per-modality indexes over one CodeStore; searches run concurrently, writes exclusively."""

    tie_order: TieOrder = "write"

    def __init__(
        self,
        data_dir: Path,
        store: CodeStore,
        indexes: dict[str, SnapshotIndex],
        config: IndexConfig,
        open_report: dict[str, str],
    ) -> None:
        self.data_dir = data_dir
        self.store = store
        self.config = config
        #: How each modality's index was obtained at open: "loaded" or why it was rebuilt.
        self.open_report = open_report
        self._indexes = indexes
        self._lock = RWLock()

    @classmethod
    def open(cls, data_dir: PathLike, bits: int, config: IndexConfig | None = None) -> Self:
        """Open or create a collection; fails with BitsMismatchError if bits differ."""
        root = Path(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        config = config or IndexConfig()
        store = CodeStore(root / STORE_FILE, check_bits(bits))
        remove_leftovers(root)
        indexes: dict[str, SnapshotIndex] = {}
        report: dict[str, str] = {}
        for modality in store.modalities():
            indexes[modality], report[modality] = restore(root, store, modality, config)
        return cls(root, store, indexes, config, report)

    @property
    def bits(self) -> int:
        """Code width in bits."""
        return self.store.bits

    def __len__(self) -> int:
        with self._lock.read():
            return sum(len(i) for i in self._indexes.values())

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the store."""
        with self._lock.write():
            self.store.close()

    def reading(self) -> AbstractContextManager[None]:
        """Nothing to share: every read of this process already sees every committed write."""
        return nullcontext()

    def upsert(self, items: Sequence[NewItem]) -> list[int]:
        """Write items to the store, then to the indexes; return their ids."""
        with self._lock.write():
            previous = self.store.lookup_client_ids([i.client_id for i in items if i.client_id])
            ids = self.store.upsert(items)
            try:
                self._apply_upsert(items, ids, previous)
            except Exception:
                # The store committed, so it stays the truth; resync the indexes from it.
                log.exception("index update failed after commit; rebuilding indexes from store")
                self._indexes = {m: rebuild(self.store, m, self.config) for m in self._modalities()}
                raise
            return ids

    def delete(self, ids: Sequence[int]) -> int:
        """Delete items from the store, then from the indexes; return how many existed."""
        # Validate before the store commits, so the index removal below cannot fail.
        id_array = check_ids(ids, unique=False)
        with self._lock.write():
            deleted = self.store.delete(id_array.tolist())
            if deleted:
                for index in self._indexes.values():
                    index.remove(id_array)
            return deleted

    def get(self, item_id: int) -> StoredItem | None:
        """Return one stored item, or None."""
        return self.store.get(item_id)

    def get_many(self, ids: Sequence[int]) -> dict[int, StoredItem]:
        """The items that exist among ids, keyed by id."""
        return self.store.get_many(ids)

    def lookup_client_ids(self, client_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """(id, modality) of the stored items among client_ids, keyed by client id."""
        return self.store.lookup_client_ids(client_ids)

    def thumbnail(self, item_id: int) -> bytes | None:
        """An item's thumbnail bytes, or None."""
        return self.store.thumbnail(item_id)

    def search(
        self,
        codes: npt.ArrayLike,
        k: int,
        *,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
        params: SearchParams | None = None,
    ) -> list[list[Hit]]:
        """Return up to k hits per query across modalities, nearest first.

        ``where`` keeps only items whose metadata has exactly these key/value
        pairs. Hits from several modalities are merged by distance; equal
        distances keep the order of ``modalities`` (default: sorted names).

        A search without ``where`` sees one state of the collection. One with it
        checks candidates against the store between index rounds without holding
        writers back (a filter that matches little checks many), so it may see a write
        that lands meanwhile; each hit's metadata matched when it was checked.
        """
        queries = validate_codes(codes, self.bits)
        k = check_k(k)
        if isinstance(modalities, str):
            modalities = [modalities]
        if modalities is not None:
            # A modality named twice would be searched twice and its hits returned twice.
            modalities = list(dict.fromkeys(modalities))
        if where is not None:
            return self._search_filtered(queries, k, modalities, where, params)
        merged: list[list[Hit]] = [[] for _ in range(queries.shape[0])]
        with self._lock.read():
            for modality in modalities if modalities is not None else sorted(self._indexes):
                index = self._indexes.get(modality)
                if index is None or not len(index):
                    continue
                # k can be far above the index size; FAISS allocates k results per query.
                res = index.search(queries, min(k, len(index)), params)
                for row, ids, distances in zip(merged, res.ids, res.distances, strict=True):
                    row.extend(
                        Hit(int(i), int(d), modality)
                        for i, d in zip(ids, distances, strict=True)
                        if i >= 0
                    )
        return [sorted(row, key=lambda h: h.distance)[:k] for row in merged]

    def search_values(
        self,
        values: npt.ArrayLike,
        k: int,
        ranking: Ranking,
        *,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
        params: SearchParams | None = None,
        max_pool: int = MAX_POOL,
        codes: npt.ArrayLike | None = None,
    ) -> list[list[Hit]]:
        """Like ``search``, for queries given as real-valued codes (nq, bits), under ``ranking``.

        The query's bits are ``codes`` (packed), by default its values' signs (0 counts as +1,
        as encoders pack them); they may differ from the signs only where a value is 0. The
        Hamming ranking is ``search``'s; the others re-rank its nearest items by the
        asymmetric score (index.rerank). Equal scores fall as ``search`` orders equal
        distances: by the order of the modalities, then write order. The candidates' codes
        come back with the index search where the index can give them (FAISS on the CPU);
        otherwise, and for filtered searches, they are read from the store, leaving out a
        candidate the store no longer holds with the code the index found it by (a write
        meanwhile).
        """

        def fetch(query: npt.NDArray[np.uint8], pool: int) -> Candidates:
            if where is None:
                found = self._nearest(query, pool, modalities, params)
                if found is not None:
                    return found
            hits = self.search(
                query[None, :], pool, modalities=modalities, where=where, params=params
            )[0]
            names = modalities if modalities is not None else sorted(self._indexes)
            return self._stored_candidates(hits, query, names, exhausted=len(hits) < pool)

        return search_by_values(
            values,
            codes,
            self.bits,
            k,
            ranking,
            hamming_search=lambda q: self.search(
                q, k, modalities=modalities, where=where, params=params
            ),
            fetch=fetch,
            max_pool=max_pool,
        )

    def _nearest(
        self,
        query: npt.NDArray[np.uint8],
        pool: int,
        modalities: Sequence[str] | None,
        params: SearchParams | None,
    ) -> Candidates | None:
        """One query's ``pool`` nearest items with their codes, read back with the search.

        None when an index cannot give codes (the caller reads them from the store). Ties
        in the score fall as ``search`` orders Hamming ties: by the order of the modalities,
        then by write order within one (an index's slots are its write order).
        """
        parts = []
        with self._lock.read():
            names = modalities if modalities is not None else sorted(self._indexes)
            for rank, modality in enumerate(names):
                index = self._indexes.get(modality)
                if index is None or not len(index):
                    continue
                nearest = getattr(index, "nearest_with_codes", None)
                found = nearest(query, pool, params) if nearest is not None else None
                if found is None:
                    return None
                ids, distances, codes, slots = found
                parts.append((ids, distances, codes, slots + (rank << _RANK_SHIFT), modality))
        width = self.bits // 8
        if not parts:
            empty = np.empty(0, np.int64)
            return Candidates(empty, empty, np.empty((0, width), np.uint8), empty, True)
        ids, distances, codes, seqs = (
            np.concatenate(c) for c in list(zip(*parts, strict=True))[:4]
        )
        modality_of = np.concatenate([np.full(len(p[0]), p[4], object) for p in parts])
        order = np.lexsort((seqs, distances))[:pool]
        return Candidates(
            ids=ids[order],
            distances=distances[order].astype(np.int64),
            codes=codes[order],
            seqs=seqs[order],
            exhausted=len(ids) < pool,
            modalities=tuple(modality_of[order].tolist()),
        )

    def _stored_candidates(
        self,
        hits: Sequence[Hit],
        query: npt.NDArray[np.uint8],
        ranks: Sequence[str],
        *,
        exhausted: bool,
    ) -> Candidates:
        """The hits with their stored codes and seqs, leaving out those changed since."""
        ids = np.array([h.id for h in hits], dtype=np.int64)
        distances = np.array([h.distance for h in hits], dtype=np.int64)
        modalities = np.array([h.modality for h in hits], dtype=object)
        stored_ids, stored_modalities, codes, seqs = self.store.code_rows(ids.tolist())
        keep = np.zeros(len(ids), dtype=bool)
        rows = np.zeros(len(ids), dtype=np.intp)
        if len(stored_ids):
            by_id = np.argsort(stored_ids)
            at = np.minimum(np.searchsorted(stored_ids, ids, sorter=by_id), len(by_id) - 1)
            rows = by_id[at]
            stored_as = np.asarray(stored_modalities, dtype=object)[rows]
            # Left out: gone, moved to another modality, or rewritten with another code.
            keep = (stored_ids[rows] == ids) & (stored_as == modalities)
            keep &= hamming(codes[rows], query) == distances
        rows = rows[keep]
        # Equal scores fall by modality order, then write order, as in _nearest.
        rank = {m: r for r, m in enumerate(dict.fromkeys(ranks))}
        ranked = np.array([rank[m] for m in modalities[keep]], dtype=np.int64)
        return Candidates(
            ids=ids[keep],
            distances=distances[keep],
            codes=codes[rows],
            seqs=seqs[rows] + (ranked << _RANK_SHIFT),
            exhausted=exhausted,
            modalities=tuple(modalities[keep].tolist()),
        )

    def snapshot(self) -> dict[str, Any]:
        """Atomically save every index tagged with the store write it reflects."""
        # A read lock suffices: it excludes writers, so seq and index contents agree.
        with self._lock.read():
            paths = save_snapshots(self.data_dir, self.store, self._indexes)
        return {"snapshots": [str(p) for p in paths]}

    def stats(self) -> dict[str, Any]:
        """Return store statistics plus each index's size."""
        with self._lock.read():
            # A modality emptied by deletes or moves has no index after a restart either.
            sizes = {m: len(i) for m, i in self._indexes.items() if len(i)}
        return {**self.store.stats(), "index_sizes": sizes}

    def _modalities(self) -> list[str]:
        return sorted(set(self._indexes) | set(self.store.modalities()))

    def _apply_upsert(
        self, items: Sequence[NewItem], ids: list[int], previous: dict[str, tuple[int, str]]
    ) -> None:
        groups: dict[str, tuple[list[int], list[bytes]]] = {}
        for item, item_id in zip(items, ids, strict=True):
            old = previous.get(item.client_id) if item.client_id else None
            if old is not None and old[1] != item.modality:
                self._indexes[old[1]].remove(np.array([item_id], dtype=np.int64))
            code = item.code if isinstance(item.code, bytes) else item.code.tobytes()
            group = groups.setdefault(item.modality, ([], []))
            group[0].append(item_id)
            group[1].append(code)
        width = self.bits // 8
        for modality, (gids, gcodes) in groups.items():
            if modality not in self._indexes:
                self._indexes[modality] = make_index(self.bits, self.config)
            codes = np.frombuffer(b"".join(gcodes), dtype=np.uint8).reshape(-1, width)
            self._indexes[modality].add(np.array(gids, dtype=np.int64), codes)

    def _search_filtered(
        self,
        queries: npt.NDArray[np.uint8],
        k: int,
        modalities: Sequence[str] | None,
        where: Mapping[str, Any],
        params: SearchParams | None,
    ) -> list[list[Hit]]:
        """Post-filter the nearest items; where too few pass, pre-filter the modality.

        A filter most items pass is served by the first 2k nearest. One that passes few
        would need ever larger candidate lists, each checked against the store; one scan
        of the modality's matching codes, ranked here by (distance, write order) as the
        indexes rank, costs less. Neither check holds the collection lock.
        """
        rounds = {}
        with self._lock.read():
            names = list(modalities) if modalities is not None else sorted(self._indexes)
            for modality in names:
                index = self._indexes.get(modality)
                if index is not None and len(index):
                    fetch = min(len(index), max(2 * k, _MIN_CANDIDATES))
                    rounds[modality] = (fetch, len(index), index.search(queries, fetch, params))
        found: dict[str, list[list[Hit]]] = {m: [[] for _ in queries] for m in names}
        short: dict[str, list[int]] = {}
        for modality, (fetch, n, res) in rounds.items():
            keep = self.store.ids_matching(res.ids[res.ids >= 0].tolist(), modality, where)
            for q in range(queries.shape[0]):
                hits = [
                    Hit(int(i), int(d), modality)
                    for i, d in zip(res.ids[q], res.distances[q], strict=True)
                    if int(i) in keep
                ]
                found[modality][q] = hits[:k]
                if len(hits) < k and fetch < n and res.ids[q, -1] >= 0:
                    short.setdefault(modality, []).append(q)
        for modality, rows in short.items():
            ids, seqs, codes = self.store.matching_codes(modality, where)
            # Added in write order, the reference ranks ties as the indexes do.
            matched = NumpyHammingIndex(self.bits)
            order = np.argsort(seqs, kind="stable")
            matched.add(ids[order], codes[order])
            res = matched.search(queries[rows], k)
            for q, row_ids, row_distances in zip(rows, res.ids, res.distances, strict=True):
                found[modality][q] = [
                    Hit(int(i), int(d), modality)
                    for i, d in zip(row_ids, row_distances, strict=True)
                    if i >= 0
                ]
        merged = []
        for q in range(queries.shape[0]):
            row = sorted((h for m in names for h in found[m][q]), key=lambda h: h.distance)
            # An item moved to another modality between two checks could be found in both.
            firsts = {h.id: h for h in reversed(row)}
            merged.append([h for h in row if firsts[h.id] is h][:k])
        return merged
