"""A compact two-way map between index slots and item ids, stored as runs.

FAISS binary indexes address items by slot (their position in insertion order). The
collection's ids come from a counter, so slots and ids advance together and the whole
map is a handful of runs ``(first slot, first id, length)``: a few bytes in all instead
of 8 bytes per item (an ``IndexBinaryIDMap2`` doubles a 64-bit index's memory).
Updates and deletions split runs; the map stays exact whatever the id pattern, and only
its size depends on how sequential the ids are.

Only live slots are covered by runs, so runs never overlap in either direction.
Because slots are handed out in insertion order, a slot number is also the item's
insertion sequence, which ranks ties.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]


class IdRuns:
    """Live slot <-> id map; slots are allocated by ``append`` and never reused."""

    def __init__(self) -> None:
        self.slot = np.empty(0, np.int64)  # first slot of each run, increasing
        self.first = np.empty(0, np.int64)  # id at that slot
        self.length = np.empty(0, np.int64)
        self.slots = 0  # slots handed out so far (live or not)
        self._by_id: Int64Array | None = None  # run order sorted by first id, built lazily
        self._count = 0  # live slots: the sum of the lengths, kept since searches ask often

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self.slot.nbytes + self.first.nbytes + self.length.nbytes

    def append(self, ids: Int64Array) -> Int64Array:
        """Give the ids (absent from the map) new slots at the end; return the slots."""
        start = self.slots
        slots = np.arange(start, start + ids.size, dtype=np.int64)
        self.slots += ids.size
        self._splice(slots, ids, keep=np.ones(self.slot.size, bool))
        return slots

    def remove_slots(self, slots: Int64Array) -> None:
        """Drop these live slots from the map."""
        if not slots.size:
            return
        run = self._run_of_slot(slots)
        touched = np.zeros(self.slot.size, bool)
        touched[run] = True
        keep_slot, keep_id = self._expand(np.flatnonzero(touched))
        alive = ~np.isin(keep_slot, slots)
        self._splice(keep_slot[alive], keep_id[alive], keep=~touched)

    def slots_of(self, ids: Int64Array) -> Int64Array:
        """Slot of each id, or -1 where the id is absent."""
        if not self.slot.size:
            return np.full(ids.shape, -1, np.int64)
        if self._by_id is None:
            self._by_id = np.argsort(self.first, kind="stable")
        order = self._by_id
        pos = np.searchsorted(self.first[order], ids, side="right") - 1
        run = order[np.maximum(pos, 0)]
        # Offsets, not first + length: that sum overflows for ids near the int64 limit.
        offset = ids - self.first[run]
        inside = (pos >= 0) & (offset < self.length[run])
        return np.where(inside, self.slot[run] + offset, -1)

    def ids_of(self, slots: Int64Array) -> Int64Array:
        """Id at each slot, or -1 where the slot is dead or negative."""
        if not self.slot.size:
            return np.full(slots.shape, -1, np.int64)
        pos = np.searchsorted(self.slot, slots, side="right") - 1
        run = np.maximum(pos, 0)
        inside = (pos >= 0) & (slots >= 0) & (slots < self.slot[run] + self.length[run])
        return np.where(inside, self.first[run] + slots - self.slot[run], -1)

    def ids_of_live(self, slots: Int64Array) -> Int64Array:
        """Id at each slot, for slots known to be live; what a -1 maps to is unspecified."""
        if self.slot.size == 1:
            # Ids from a counter with nothing removed form one run: one shift. This sits on
            # every search's path, where the general lookup costs several times more.
            return slots + (int(self.first[0]) - int(self.slot[0]))
        return self.ids_of(slots)

    def live(self) -> tuple[Int64Array, Int64Array]:
        """All live (slots, ids) in slot order."""
        return self._expand(np.arange(self.slot.size))

    def renumbered(self) -> IdRuns:
        """The same ids with the dead slots' gaps closed: slots 0..n-1, order kept."""
        fresh = IdRuns()
        fresh.append(self.live()[1])
        return fresh

    def to_arrays(self) -> Int64Array:
        """Serialise as one int64 array: slots, then the runs' columns."""
        return np.concatenate([[self.slots], self.slot, self.first, self.length]).astype(np.int64)

    @classmethod
    def from_arrays(cls, data: Int64Array) -> IdRuns:
        """Inverse of ``to_arrays``; raises ValueError on an inconsistent array."""
        if data.size < 1 or (data.size - 1) % 3:
            raise ValueError("id run table has the wrong length")
        runs = cls()
        runs.slots = int(data[0])
        runs.slot, runs.first, runs.length = (c.copy() for c in np.split(data[1:], 3))
        runs._count = int(runs.length.sum())
        ends = runs.slot + runs.length
        disjoint = (ends[:-1] <= runs.slot[1:]).all() and ends.max(initial=0) <= runs.slots
        if (runs.length <= 0).any() or not disjoint:
            raise ValueError("id run table is not ordered and disjoint")
        return runs

    def _run_of_slot(self, slots: Int64Array) -> Int64Array:
        return np.searchsorted(self.slot, slots, side="right") - 1

    def _expand(self, runs: npt.NDArray[np.intp]) -> tuple[Int64Array, Int64Array]:
        """(slots, ids) covered by the given runs, in slot order."""
        length = self.length[runs]
        offset = np.arange(int(length.sum()), dtype=np.int64) - np.repeat(
            np.cumsum(length) - length, length
        )
        slots = np.repeat(self.slot[runs], length) + offset
        return slots, np.repeat(self.first[runs], length) + offset

    def _splice(self, slots: Int64Array, ids: Int64Array, keep: npt.NDArray[np.bool_]) -> None:
        """Replace the runs not kept by runs compressing the given (slot, id) pairs."""
        slot, first, length = _compress(slots, ids)
        merged_slot = np.concatenate([self.slot[keep], slot])
        order = np.argsort(merged_slot, kind="stable")
        self.slot = merged_slot[order]
        self.first = np.concatenate([self.first[keep], first])[order]
        self.length = np.concatenate([self.length[keep], length])[order]
        self._merge_adjacent()
        self._by_id = None
        self._count = int(self.length.sum())

    def _merge_adjacent(self) -> None:
        """Join neighbouring runs that continue each other in both slot and id."""
        if self.slot.size < 2:
            return
        joins = (self.slot[:-1] + self.length[:-1] == self.slot[1:]) & (
            self.first[:-1] + self.length[:-1] == self.first[1:]
        )
        if not joins.any():
            return
        starts = np.concatenate([[True], ~joins])
        group = np.cumsum(starts) - 1
        self.length = np.bincount(group, weights=self.length).astype(np.int64)
        self.slot, self.first = self.slot[starts], self.first[starts]


def _compress(slots: Int64Array, ids: Int64Array) -> tuple[Int64Array, Int64Array, Int64Array]:
    """Runs of (slot, id) pairs sorted by slot where both advance by one."""
    if not slots.size:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    breaks = np.flatnonzero((np.diff(slots) != 1) | (np.diff(ids) != 1)) + 1
    starts = np.concatenate([[0], breaks])
    length = np.diff(np.concatenate([starts, [slots.size]]))
    return slots[starts].astype(np.int64), ids[starts].astype(np.int64), length.astype(np.int64)
