"""CodeStore durability/idempotency and Collection crash-safety against the reference."""

import json
import os
import sqlite3
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from index.base import SearchParams
from index.collection import STORE_FILE, Collection
from index.errors import BitsMismatchError, CodeError, ItemError
from index.factory import IndexConfig
from index.reference import NumpyHammingIndex
from index.store import CodeStore, NewItem

BIG_NPROBE = 1 << 20
#: Probes every IVF list, so IVF searches are exact.
EXACT = SearchParams(nprobe=BIG_NPROBE)
CONFIGS = {
    "flat": IndexConfig(kind="flat"),
    # A low threshold so the collection crosses into IVF inside the test.
    "auto": IndexConfig(kind="auto", ivf_threshold=300),
    "numpy": IndexConfig(backend="numpy"),
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def items(rng, n, bits, modality="image", prefix=None, meta=None):
    codes = rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)
    return [
        NewItem(
            modality=modality,
            code=codes[i],
            client_id=None if prefix is None else f"{prefix}{i}",
            metadata={} if meta is None else meta(i),
        )
        for i in range(n)
    ]


def reference_from_store(store: CodeStore, modality: str, keep=None) -> NumpyHammingIndex:
    """Build the reference from SQLite in write order, optionally keeping some ids."""
    ref = NumpyHammingIndex(store.bits)
    for ids, codes in store.iter_codes(modality):
        mask = np.ones(len(ids), bool) if keep is None else np.isin(ids, list(keep))
        ref.add(ids[mask], codes[mask])
    return ref


def as_arrays(hits_per_query, k):
    ids = np.full((len(hits_per_query), k), -1, np.int64)
    dist = np.full((len(hits_per_query), k), -1, np.int32)
    for q, hits in enumerate(hits_per_query):
        ids[q, : len(hits)] = [h.id for h in hits]
        dist[q, : len(hits)] = [h.distance for h in hits]
    return ids, dist


def assert_matches_reference(
    coll: Collection, modality: str, queries, k: int, keep=None, where=None
):
    ref = reference_from_store(coll.store, modality, keep).search(queries, k)
    got = coll.search(queries, k, modalities=[modality], params=EXACT, where=where)
    ids, dist = as_arrays(got, k)
    np.testing.assert_array_equal(dist, ref.distances)
    np.testing.assert_array_equal(ids, ref.ids)
    return got


# --- CodeStore -------------------------------------------------------------------------


def test_store_round_trip_seq_and_pragmas(tmp_path: Path):
    clock = FakeClock()
    store = CodeStore(tmp_path / "s.db", 32, clock=clock)
    assert store.last_seq() == 0 and store.count() == 0
    ids = store.upsert(
        [
            NewItem("image", bytes([1, 2, 3, 4]), "a", {"lang": "en"}),
            NewItem("text", np.array([5, 6, 7, 8], np.uint8)),
        ]
    )
    assert ids == [1, 2]
    item = store.get(1)
    assert item is not None
    assert (item.client_id, item.modality, item.code, item.metadata) == (
        "a",
        "image",
        bytes([1, 2, 3, 4]),
        {"lang": "en"},
    )
    assert item.created_at == 1001.0 and item.seq == 1
    assert store.get(2).code == bytes([5, 6, 7, 8]) and store.get(2).seq == 2
    assert store.get(99) is None
    assert store.last_seq() == 2
    assert (
        store.count() == 2 and store.count("image") == 1 and store.modalities() == ["image", "text"]
    )
    assert store.stats()["by_modality"] == {"image": 1, "text": 1}
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    store.close()
    with sqlite3.connect(tmp_path / "s.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_store_upsert_by_client_id_is_idempotent_and_keeps_ids(tmp_path: Path):
    clock = FakeClock()
    store = CodeStore(tmp_path / "s.db", 16, clock=clock)
    rng = np.random.default_rng(0)
    batch = items(rng, 5, 16, prefix="c")
    first = store.upsert(batch)
    again = store.upsert(batch)
    assert again == first and store.count() == 5
    changed = NewItem("text", bytes([9, 9]), "c2", {"v": 2})
    assert store.upsert([changed]) == [first[2]]
    row = store.get(first[2])
    assert row.code == bytes([9, 9]) and row.modality == "text" and row.metadata == {"v": 2}
    assert row.created_at == 1001.0  # created_at of the first write is kept
    # Rewritten rows move to the end of the write order, like an index update does.
    order = np.concatenate([ids for ids, _ in store.iter_codes()]).tolist()
    assert order == [first[0], first[1], first[3], first[4], first[2]]
    # Ids are never reused (AUTOINCREMENT; upserts may leave gaps).
    assert store.upsert([NewItem("image", bytes([0, 0]))])[0] > max(first)


def test_store_rejects_bad_batches_without_writing(tmp_path: Path):
    store = CodeStore(tmp_path / "s.db", 16)
    good = NewItem("image", bytes(2), "x")
    bad_batches = [
        ([good, NewItem("image", bytes(3))], CodeError, "item #1: code must be 2 bytes"),
        ([good, NewItem("Bad Name", bytes(2))], ItemError, "item #1: modality"),
        ([good, NewItem("image", bytes(2), metadata={"x": float("nan")})], ItemError, "JSON"),
        ([good, NewItem("image", bytes(2), "x")], ItemError, "unique"),
        ([NewItem("image", np.zeros(2, np.int16))], CodeError, "uint8"),
    ]
    for batch, error, message in bad_batches:
        with pytest.raises(error, match=message):
            store.upsert(batch)
    assert store.count() == 0 and store.last_seq() == 0


def test_store_delete_and_bits_mismatch(tmp_path: Path):
    path = tmp_path / "s.db"
    store = CodeStore(path, 16)
    ids = store.upsert(items(np.random.default_rng(1), 4, 16))
    seq = store.last_seq()
    assert store.delete([ids[0], ids[2], 12345]) == 2
    assert store.last_seq() == seq + 1
    assert store.delete([12345]) == 0 and store.last_seq() == seq + 1  # no-op: no bump
    assert sorted(store.get_many(ids)) == [ids[1], ids[3]]
    store.close()
    with pytest.raises(BitsMismatchError, match="holds 16-bit codes but was opened with bits=32"):
        CodeStore(path, 32)


# --- Collection ------------------------------------------------------------------------


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_collection_recovers_from_missing_stale_and_corrupt_snapshots(tmp_path: Path, config):
    rng = np.random.default_rng(42)
    bits = 16  # small codes tie a lot: the rebuilt index must break ties like the live one
    queries = rng.integers(0, 256, size=(25, 2), dtype=np.uint8)
    coll = Collection.open(tmp_path, bits, config)
    coll.upsert(items(rng, 400, bits, prefix="a"))
    coll.upsert(items(rng, 50, bits, modality="text"))
    coll.snapshot()
    # Writes after the snapshot make it stale: updates (by client_id) and deletes.
    coll.upsert(items(rng, 120, bits, prefix="a"))
    coll.delete(list(range(200, 260)))
    live = coll.search(queries, 12, modalities=["image"], params=EXACT)
    assert_matches_reference(coll, "image", queries, 12)
    coll.close()  # no snapshot: as if the process died here

    coll = Collection.open(tmp_path, bits, config)
    assert coll.open_report["image"].startswith("stale")
    assert coll.open_report["text"].startswith("stale")
    assert coll.search(queries, 12, modalities=["image"], params=EXACT) == live
    assert_matches_reference(coll, "image", queries, 12)
    assert_matches_reference(coll, "text", queries, 5)
    coll.snapshot()
    coll.close()

    coll = Collection.open(tmp_path, bits, config)
    assert coll.open_report == {"image": "loaded", "text": "loaded"}
    assert coll.search(queries, 12, modalities=["image"], params=EXACT) == live
    coll.close()

    (tmp_path / "index-image.hbix").unlink()
    snap = tmp_path / "index-text.hbix"
    data = bytearray(snap.read_bytes())
    data[len(data) // 2 :] = bytes(len(data) - len(data) // 2)
    snap.write_bytes(bytes(data))
    coll = Collection.open(tmp_path, bits, config)
    assert coll.open_report["image"] == "missing"
    assert coll.open_report["text"].startswith("corrupt")
    assert coll.search(queries, 12, modalities=["image"], params=EXACT) == live
    assert_matches_reference(coll, "text", queries, 5)
    assert len(coll) == coll.store.count() == 400 + 50 - 60
    coll.close()


def _edit_header(path: Path, edit) -> None:
    """Rewrite a snapshot's JSON header (outside its payload checksum) in place."""
    data = path.read_bytes()
    (n,) = struct.unpack("<I", data[8:12])
    head = json.dumps(edit(json.loads(data[12 : 12 + n]))).encode()
    path.write_bytes(data[:8] + struct.pack("<I", len(head)) + head + data[12 + n :])


HEADER_DAMAGE = {
    "extra-not-an-object": lambda h: {**h, "extra": ["image"]},
    "blob-size-of-petabytes": lambda h: {**h, "blob_sizes": [2**60, *h["blob_sizes"][1:]]},
    "flat-payload-said-ivf": lambda h: {**h, "trained_n": 5},
}


@pytest.mark.parametrize("damage", HEADER_DAMAGE, ids=HEADER_DAMAGE.keys())
def test_collection_rebuilds_past_a_damaged_snapshot_header(tmp_path: Path, damage: str):
    rng = np.random.default_rng(12)
    queries = rng.integers(0, 256, size=(5, 2), dtype=np.uint8)
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(rng, 60, 16))
    coll.snapshot()
    coll.close()
    _edit_header(tmp_path / "index-image.hbix", HEADER_DAMAGE[damage])
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    assert coll.open_report["image"].startswith("corrupt")
    assert_matches_reference(coll, "image", queries, 10)
    coll.close()


def test_collection_rebuilds_past_a_snapshot_header_length_beyond_the_file(tmp_path: Path):
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(np.random.default_rng(13), 20, 16))
    coll.snapshot()
    coll.close()
    snap = tmp_path / "index-image.hbix"
    data = bytearray(snap.read_bytes())
    data[11] = 0xFF  # high byte of the header length: ~4 GiB asked of a tiny file
    snap.write_bytes(bytes(data))
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    report = coll.open_report["image"]
    assert report.startswith("corrupt") and "truncated" in report
    assert len(coll) == 20
    coll.close()


def test_collection_open_removes_temp_files_of_killed_snapshot_writes(tmp_path: Path):
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(np.random.default_rng(14), 30, 16))
    coll.snapshot()
    coll.close()
    # What atomic_write leaves when the process dies between mkstemp and the rename.
    fd, torn = tempfile.mkstemp(dir=tmp_path, prefix=".index-image.hbix.", suffix=".tmp")
    os.write(fd, b"half an index")
    os.close(fd)
    (tmp_path / "notes.tmp").write_text("not ours")
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    assert coll.open_report["image"] == "loaded"
    assert not Path(torn).exists()
    assert (tmp_path / "notes.tmp").exists()
    coll.close()


def test_empty_upsert_leaves_snapshots_current(tmp_path: Path):
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(np.random.default_rng(15), 30, 16))
    coll.snapshot()
    before = coll.store.last_write()
    assert coll.upsert([]) == []
    assert coll.store.last_write() == before
    coll.close()
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    assert coll.open_report == {"image": "loaded"}
    coll.close()


@pytest.mark.parametrize("history", ["restored-backup", "new-store"])
def test_snapshot_of_another_store_history_is_not_loaded(tmp_path: Path, history: str):
    # The store goes back (a backup restored, or deleted and begun again) and then reaches
    # the snapshot's seq through other writes: same seq, other contents.
    rng = np.random.default_rng(11)
    store_files = [tmp_path / (STORE_FILE + suffix) for suffix in ("", "-wal", "-shm")]
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(rng, 50, 16))
    coll.close()
    backup = {p.name: p.read_bytes() for p in store_files if p.exists()}
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(rng, 10, 16))
    coll.snapshot()
    seq = coll.store.last_seq()
    coll.close()
    for p in store_files:
        p.unlink(missing_ok=True)
    if history == "restored-backup":
        for name, data in backup.items():
            (tmp_path / name).write_bytes(data)
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    while coll.store.last_seq() < seq:
        coll.upsert(items(rng, 10, 16))
    assert coll.store.last_seq() == seq
    coll.close()  # no snapshot: as if the process died here

    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    assert coll.open_report["image"].startswith("from another history of the store")
    assert_matches_reference(coll, "image", rng.integers(0, 256, (20, 2), np.uint8), 10)
    coll.close()


def test_collection_rebuilds_when_index_config_changes(tmp_path: Path):
    rng = np.random.default_rng(3)
    coll = Collection.open(tmp_path, 64, CONFIGS["flat"])
    coll.upsert(items(rng, 100, 64))
    coll.snapshot()
    coll.close()
    coll = Collection.open(tmp_path, 64, CONFIGS["numpy"])
    assert coll.open_report["image"] == "built with a different index config"
    assert_matches_reference(coll, "image", rng.integers(0, 256, (5, 8), np.uint8), 7)
    coll.close()


def test_collection_bits_are_fixed(tmp_path: Path):
    Collection.open(tmp_path, 64).close()
    assert (tmp_path / STORE_FILE).exists()
    with pytest.raises(BitsMismatchError, match="64-bit codes.*bits=128"):
        Collection.open(tmp_path, 128)
    coll = Collection.open(tmp_path, 64)
    with pytest.raises(CodeError, match="8 bytes wide"):
        coll.search(np.zeros((1, 16), np.uint8), 3)
    coll.close()


def test_collection_reupsert_gives_no_duplicates_and_modality_moves(tmp_path: Path):
    rng = np.random.default_rng(5)
    coll = Collection.open(tmp_path, 32, CONFIGS["flat"])
    batch = items(rng, 30, 32, prefix="doc")
    ids = coll.upsert(batch)
    assert coll.upsert(batch) == ids
    assert len(coll) == coll.store.count() == 30
    hits = coll.search(np.stack([b.code for b in batch]), 30)
    assert all(len({h.id for h in row}) == 30 for row in hits)
    assert [(row[0].id, row[0].distance) for row in hits] == [(i, 0) for i in ids]
    # Same client_id, new modality: the item leaves the image index for the text one.
    moved = NewItem("text", batch[0].code, "doc0")
    assert coll.upsert([moved]) == [ids[0]]
    query = np.asarray(batch[0].code)[None]
    assert ids[0] not in {h.id for h in coll.search(query, 30, modalities=["image"])[0]}
    text_hits = coll.search(query, 1, modalities=["text"])[0]
    assert [(h.id, h.distance, h.modality) for h in text_hits] == [(ids[0], 0, "text")]
    assert coll.stats()["index_sizes"] == {"image": 29, "text": 1}
    # The text modality emptied: gone from the stats now, as it is after a restart.
    coll.upsert([NewItem("image", batch[0].code, "doc0")])
    assert coll.stats()["index_sizes"] == {"image": 30}
    coll.close()
    reopened = Collection.open(tmp_path, 32, CONFIGS["flat"])
    assert reopened.stats()["index_sizes"] == {"image": 30}
    reopened.close()


@pytest.mark.parametrize("config", [CONFIGS["flat"], CONFIGS["auto"]], ids=["flat", "auto"])
def test_collection_metadata_filter_matches_filtered_reference(tmp_path: Path, config):
    rng = np.random.default_rng(8)
    bits = 16
    coll = Collection.open(tmp_path, bits, config)

    def meta(i):
        tag = {"tag": "rare"} if i in (14, 300) else {}
        return {"lang": "de" if i % 7 == 0 else "en", "n": i % 3, "flag": i % 2 == 0, **tag}

    batch = items(rng, 700, bits, prefix="m", meta=meta)
    ids = coll.upsert(batch)
    queries = rng.integers(0, 256, size=(10, 2), dtype=np.uint8)
    rare = {i for i, item in zip(ids, batch, strict=True) if item.metadata["lang"] == "de"}
    got = assert_matches_reference(coll, "image", queries, 8, keep=rare, where={"lang": "de"})
    assert all(len(row) == 8 for row in got)
    both = {
        i for i, it in zip(ids, batch, strict=True) if it.metadata["n"] == 1 and it.metadata["flag"]
    }
    assert_matches_reference(coll, "image", queries, 5, keep=both, where={"n": 1, "flag": True})
    # Exact JSON equality: true is not 1, and a missing key never matches.
    assert coll.search(queries, 5, where={"flag": 1}) == [[] for _ in range(10)]
    assert coll.search(queries, 5, where={"nope": "x"}) == [[] for _ in range(10)]
    # Fewer matches than k: all of them come back, then padding.
    got = assert_matches_reference(
        coll, "image", queries, 4, keep={ids[14], ids[300]}, where={"tag": "rare"}
    )
    assert all({h.id for h in row} == {ids[14], ids[300]} for row in got)
    coll.close()


# Values whose JSON types SQLite and Python name differently, or that only an exact
# comparison tells apart.
FILTER_VALUES = [
    None, True, False, 0, 1, -1, 1.0, 0.5, 1e20, 2**63, 2**70, -(2**64), "", "1", "true",
    "null", "naïve ☃ 🙂", 'quote " and \\ backslash', "line\nbreak", [], [1], [1, 2], [2, 1],
    {}, {"a": 1}, {"a": 1.0}, {"b": [None]},
]  # fmt: skip


def test_store_prefilter_keeps_exactly_the_matching_items(tmp_path: Path):
    store = CodeStore(tmp_path / "s.db", 16)
    keys = ["k", "dotted.key", 'q"uote', "ü"]
    rows = [{key: value} for key in keys for value in FILTER_VALUES]
    rows += [{"k": v, "other": w} for v in FILTER_VALUES[:6] for w in FILTER_VALUES[:6]] + [{}]
    ids = store.upsert([NewItem("text", bytes(2), None, m) for m in rows])
    store.upsert([NewItem("image", bytes(2), None, {"k": "1"})])  # another modality
    wheres = [{key: value} for key in keys for value in FILTER_VALUES]
    wheres += [{"k": 1, "other": None}, {"k": True, "other": "1"}, {"missing": None}, {}]
    for where in wheres:
        expected = {
            i
            for i, m in zip(ids, rows, strict=True)
            if all(key in m and json.dumps(m[key], sort_keys=True)
                   == json.dumps(v, sort_keys=True) for key, v in where.items())
        }  # fmt: skip
        assert store.ids_matching(ids, "text", where, chunk=7) == expected, where
        found, seqs, codes = store.matching_codes("text", where, chunk=7)
        assert sorted(found.tolist()) == sorted(expected), where
        for i, seq, code in zip(found.tolist(), seqs.tolist(), codes, strict=True):
            item = store.get(i)
            assert item is not None and (item.seq, item.code) == (seq, code.tobytes())
    store.close()


@pytest.mark.parametrize("check_name", ["ids_matching", "matching_codes"])
def test_a_filtered_search_lets_writers_through_while_it_checks_metadata(
    tmp_path: Path, check_name: str
):
    """A filter that matches little checks much of the store; writers must not wait for it."""
    rng = np.random.default_rng(10)
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(rng, 500, 16, prefix="w", meta=lambda i: {"n": i}))
    check = getattr(coll.store, check_name)
    writer_done: list[bool] = []

    def check_while_writing(*args, **kwargs):
        if not writer_done:
            writer = threading.Thread(target=lambda: coll.upsert(items(rng, 3, 16)))
            writer.start()
            writer.join(timeout=30)
            writer_done.append(not writer.is_alive())
        return check(*args, **kwargs)

    setattr(coll.store, check_name, check_while_writing)
    assert coll.search(rng.integers(0, 256, (2, 2), np.uint8), 5, where={"n": -1}) == [[], []]
    assert writer_done == [True]
    assert coll.store.count() == 503
    coll.close()


def test_a_filtered_search_never_answers_one_item_twice(tmp_path: Path):
    """An item moved to another modality between two rounds is found once."""
    rng = np.random.default_rng(11)
    coll = Collection.open(tmp_path, 16, CONFIGS["flat"])
    coll.upsert(items(rng, 50, 16, modality="image", prefix="m", meta=lambda i: {"t": 1}))
    # No text item matches, so the text modality is scanned for matches after the check.
    coll.upsert(items(rng, 600, 16, modality="text", meta=lambda i: {"t": 0}))
    check = coll.store.ids_matching
    moved: list[int] = []

    def check_then_move(ids, modality, where, **kwargs):
        out = check(ids, modality, where, **kwargs)
        if not moved and modality == "image":
            # After the image check, m0 (the query's own code) becomes a text item; the
            # image check already kept it and the scan of the text modality finds it.
            old = coll.store.get(1)
            assert old is not None and 1 in out
            coll.upsert([NewItem("text", old.code, old.client_id, {"t": 1})])
            moved.append(1)
        return out

    coll.store.ids_matching = check_then_move  # type: ignore[method-assign]
    query = coll.store.get(1)
    assert query is not None
    got = coll.search(
        np.frombuffer(query.code, np.uint8)[None], 10, modalities=["image", "text"], where={"t": 1}
    )[0]
    assert moved and [h.id for h in got].count(moved[0]) <= 1
    assert len(got) == 10 and len({h.id for h in got}) == 10
    coll.close()


def test_collection_merges_modalities_by_distance(tmp_path: Path):
    rng = np.random.default_rng(9)
    coll = Collection.open(tmp_path, 32, CONFIGS["flat"])
    coll.upsert(items(rng, 200, 32, modality="image"))
    coll.upsert(items(rng, 200, 32, modality="video"))
    queries = rng.integers(0, 256, size=(6, 4), dtype=np.uint8)
    merged = coll.search(queries, 10, modalities=["video", "image"])
    image = reference_from_store(coll.store, "image").search(queries, 10)
    video = reference_from_store(coll.store, "video").search(queries, 10)
    rank = {"video": 0, "image": 1}
    for q, row in enumerate(merged):
        dists = [h.distance for h in row]
        assert dists == sorted(np.concatenate([image.distances[q], video.distances[q]]))[:10]
        for h in row:
            assert h.id in (video if h.modality == "video" else image).ids[q]
        # Equal distances keep the order in which modalities were asked for.
        keys = [(h.distance, rank[h.modality]) for h in row]
        assert keys == sorted(keys)
    assert coll.search(queries, 3, modalities=["audio"]) == [[] for _ in range(6)]
    # A modality named twice is searched once: no hit comes back twice.
    assert coll.search(queries, 10, modalities=["video", "image", "video"]) == merged
    coll.close()


def test_collection_concurrent_reads_and_writes_stay_consistent(tmp_path: Path):
    rng = np.random.default_rng(10)
    bits = 32
    coll = Collection.open(tmp_path, bits, CONFIGS["auto"])
    coll.upsert(items(rng, 200, bits, prefix="w"))
    queries = rng.integers(0, 256, size=(8, 4), dtype=np.uint8)
    batches = [items(np.random.default_rng(s), 40, bits, prefix=f"t{s}-") for s in range(10)]
    errors: list[BaseException] = []

    def reader():
        try:
            for _ in range(30):
                for row in coll.search(queries, 5, params=EXACT):
                    assert [h.distance for h in row] == sorted(h.distance for h in row)
        except BaseException as exc:  # surfaced to the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for batch in batches:
        coll.upsert(batch)
    for t in threads:
        t.join()
    assert not errors
    assert len(coll) == 600
    assert_matches_reference(coll, "image", queries, 10)
    coll.close()
