"""The slot <-> id runs map, and the flat index's dead-slot masking and compaction."""

from pathlib import Path

import numpy as np
import pytest

from index.faiss_index import FaissHammingIndex
from index.idruns import IdRuns
from index.reference import NumpyHammingIndex


def check_against(runs: IdRuns, slot_of: dict[int, int]) -> None:
    """The runs agree with a plain dict of live id -> slot, both ways and in order."""
    assert len(runs) == len(slot_of)
    ids = np.array(sorted(slot_of), dtype=np.int64)
    np.testing.assert_array_equal(runs.slots_of(ids), [slot_of[i] for i in ids.tolist()])
    slots = np.arange(-1, runs.slots + 1, dtype=np.int64)
    id_at = {s: i for i, s in slot_of.items()}
    np.testing.assert_array_equal(runs.ids_of(slots), [id_at.get(s, -1) for s in slots.tolist()])
    live_slots, live_ids = runs.live()
    assert live_slots.tolist() == sorted(id_at)
    assert live_ids.tolist() == [id_at[s] for s in sorted(id_at)]
    np.testing.assert_array_equal(runs.ids_of_live(live_slots), live_ids)


def test_sequential_ids_are_one_run():
    runs = IdRuns()
    for start in range(0, 10_000, 1000):
        runs.append(np.arange(start, start + 1000, dtype=np.int64))
    assert runs.slot.size == 1 and len(runs) == 10_000
    np.testing.assert_array_equal(runs.slots_of(np.array([0, 9999, 10_000])), [0, 9999, -1])
    assert runs.nbytes == 24


def test_random_appends_and_removals_match_a_dict():
    rng = np.random.default_rng(3)
    runs, slot_of, next_slot = IdRuns(), {}, 0
    for step in range(60):
        absent = np.setdiff1d(np.arange(500), list(slot_of))
        if step % 3 == 0:  # sequential block, as the store hands ids out
            new = absent[: rng.integers(1, 40)]
        else:
            new = rng.choice(absent, size=min(len(absent), int(rng.integers(1, 20))), replace=False)
        got = runs.append(new.astype(np.int64))
        assert got.tolist() == list(range(next_slot, next_slot + new.size))
        slot_of.update(zip(new.tolist(), got.tolist(), strict=True))
        next_slot += new.size
        if slot_of:
            gone = rng.choice(list(slot_of), size=min(len(slot_of), int(rng.integers(0, 15))))
            gone = np.unique(gone)
            runs.remove_slots(runs.slots_of(gone))
            for i in gone.tolist():
                del slot_of[i]
        check_against(runs, slot_of)
    again = IdRuns.from_arrays(runs.to_arrays())
    check_against(again, slot_of)
    packed = runs.renumbered()
    assert packed.slots == len(slot_of)
    assert packed.live()[1].tolist() == runs.live()[1].tolist()


def test_from_arrays_rejects_overlapping_runs():
    runs = IdRuns()
    runs.append(np.arange(10, dtype=np.int64))
    data = runs.to_arrays()
    with pytest.raises(ValueError):
        IdRuns.from_arrays(data[:-1])
    overlapping = np.array([10, 0, 5, 0, 100, 6, 6], dtype=np.int64)  # runs [0,6) and [5,11)
    with pytest.raises(ValueError):
        IdRuns.from_arrays(overlapping)


def test_flat_masks_dead_slots_then_compacts(tmp_path: Path):
    rng = np.random.default_rng(5)
    bits, n = 32, 6000
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(30, bits // 8), dtype=np.uint8)
    ref, index = NumpyHammingIndex(bits), FaissHammingIndex(bits, "flat")
    ids = np.arange(100, 100 + n)
    ref.add(ids, codes)
    index.add(ids, codes)
    assert index.memory_bytes() == n * bits // 8 + 24  # codes and a single run

    def same() -> None:
        got, want = index.search(queries, 25), ref.search(queries, 25)
        np.testing.assert_array_equal(got.distances, want.distances)
        np.testing.assert_array_equal(got.ids, want.ids)

    few = rng.choice(ids, size=700, replace=False)  # below the compaction threshold
    ref.remove(few)
    index.remove(few)
    assert index._index.ntotal == n and len(index) == n - 700
    same()
    index.save(tmp_path / "masked.idx")
    loaded = FaissHammingIndex.load(tmp_path / "masked.idx")
    np.testing.assert_array_equal(loaded.search(queries, 25).ids, ref.search(queries, 25).ids)

    # Updates append new slots, so their ties now rank after older items, as in the reference.
    moved = rng.choice(np.setdiff1d(ids, few), size=300, replace=False)
    fresh = rng.integers(0, 256, size=(300, bits // 8), dtype=np.uint8)
    ref.add(moved, fresh)
    index.add(moved, fresh)
    same()

    many = rng.choice(np.setdiff1d(ids, few), size=1500, replace=False)
    ref.remove(many)
    index.remove(many)
    assert index._index.ntotal == len(index) == len(ref)  # compacted: no dead slots left
    assert index._alive is None
    same()


def test_ids_at_the_int64_limit_can_be_found_removed_and_updated():
    top = np.iinfo(np.int64).max
    runs = IdRuns()
    runs.append(np.array([top - 1, top, 0], dtype=np.int64))
    check_against(runs, {top - 1: 0, top: 1, 0: 2})

    rng = np.random.default_rng(9)
    codes = rng.integers(0, 256, size=(3, 8), dtype=np.uint8)
    ref, index = NumpyHammingIndex(64), FaissHammingIndex(64, "flat")
    for backend in (ref, index):
        backend.add([top, 0, top - 1], codes)
        assert backend.remove([top]) == 1
        backend.add([top], codes[:1])
        backend.add([top], codes[:1])  # an update, not a second copy
    assert len(index) == len(ref) == 3
    got, want = index.search(codes, 5), ref.search(codes, 5)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.distances, want.distances)
