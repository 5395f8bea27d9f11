"""Backends against the NumPy reference: exactness, recall, updates, persistence."""

import json
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from index.base import HammingIndex, SearchParams
from index.codes import CodeError, pack_signs, unpack_codes
from index.errors import BitsMismatchError, IndexFileError
from index.faiss_index import FaissHammingIndex, choose_nlist, set_num_threads
from index.reference import NumpyHammingIndex

BIG_NPROBE = 1 << 20
#: Probes every IVF list, so IVF searches are exact.
EXACT = SearchParams(nprobe=BIG_NPROBE)


def random_codes(rng, n, bits):
    return rng.integers(0, 256, size=(n, bits // 8), dtype=np.uint8)


def clustered_codes(rng, n, bits, clusters, flip):
    """Codes near a few random centres: realistic for learned hashes, gives IVF structure."""
    centres = rng.integers(0, 2, size=(clusters, bits), dtype=np.uint8)
    noisy = centres[rng.integers(0, clusters, n)] ^ (rng.random((n, bits)) < flip)
    return pack_signs(noisy.astype(np.int8) * 2 - 1)


def make(kind, bits, **kw):
    return NumpyHammingIndex(bits) if kind == "numpy" else FaissHammingIndex(bits, kind, **kw)


def assert_same(result, expected):
    np.testing.assert_array_equal(result.distances, expected.distances)
    np.testing.assert_array_equal(result.ids, expected.ids)


def test_reference_distances_and_ties_by_hand():
    index = NumpyHammingIndex(16)
    codes = np.array([[0xFF, 0x00], [0x0F, 0x00], [0xFF, 0x00], [0x00, 0x01]], dtype=np.uint8)
    index.add([40, 10, 30, 20], codes)
    result = index.search(np.array([[0xFF, 0x00]], dtype=np.uint8), 4)
    # Hand-computed distances; 40 and 30 tie at 0 and keep insertion order.
    assert result.ids.tolist() == [[40, 30, 10, 20]]
    assert result.distances.tolist() == [[0, 0, 4, 9]]
    assert result.ids.dtype == np.int64 and result.distances.dtype == np.int32
    # An update moves the id to the end of the database order.
    index.add([40], codes[:1])
    assert index.search(codes[:1], 2).ids.tolist() == [[30, 40]]


def test_reference_matches_unpacked_brute_force():
    rng = np.random.default_rng(1)
    codes, queries = random_codes(rng, 300, 64), random_codes(rng, 9, 64)
    index = NumpyHammingIndex(64)
    index.add(np.arange(300) * 7, codes)
    dist = (unpack_codes(queries, 64)[:, None, :] != unpack_codes(codes, 64)[None]).sum(-1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :25]
    result = index.search(queries, 25)
    np.testing.assert_array_equal(result.ids, order * 7)
    np.testing.assert_array_equal(result.distances, np.take_along_axis(dist, order, 1))


@pytest.mark.parametrize("kind", ["numpy", "flat", "ivf", "auto"])
def test_padding_when_fewer_items_than_k(kind):
    rng = np.random.default_rng(2)
    index = make(kind, 32)
    empty = index.search(random_codes(rng, 2, 32), 3)
    assert empty.ids.tolist() == [[-1] * 3] * 2 and empty.distances.tolist() == [[-1] * 3] * 2
    codes = random_codes(rng, 4, 32)
    index.add([5, 6, 7, 8], codes)
    result = index.search(codes[:1], 6, params=EXACT)
    assert result.ids[0, 0] == 5 and result.distances[0, 0] == 0
    assert sorted(result.ids[0, :4].tolist()) == [5, 6, 7, 8]
    assert result.ids[0, 4:].tolist() == [-1, -1] and result.distances[0, 4:].tolist() == [-1, -1]


@pytest.mark.parametrize("bits", [16, 64, 128])
@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_exact_equality_with_reference(kind, bits):
    # 16-bit codes over 3000 items tie heavily, which exercises the tie re-ranking.
    rng = np.random.default_rng(bits)
    codes, queries = random_codes(rng, 3000, bits), random_codes(rng, 40, bits)
    ids = rng.permutation(10**6)[:3000]
    ref, index = NumpyHammingIndex(bits), FaissHammingIndex(bits, kind)
    for part in np.array_split(np.arange(3000), 3):
        ref.add(ids[part], codes[part])
        index.add(ids[part], codes[part])
    assert index.is_ivf == (kind == "ivf")
    if kind == "ivf":
        assert index.nlist == choose_nlist(2000) > 1  # trained at 2000; 3000 < 2 * 2000
    for k in (1, 10, 50):
        assert_same(index.search(queries, k, params=EXACT), ref.search(queries, k))
    # Queries equal to stored codes must find themselves at distance 0.
    hit = index.search(codes[:5], 1, params=EXACT)
    assert hit.distances[:, 0].tolist() == [0] * 5


def test_ivf_recall_with_small_nprobe_on_clustered_data(record_property):
    rng = np.random.default_rng(7)
    bits, n = 64, 10_000
    # Many loose clusters so that a few probes miss some true neighbours.
    data = clustered_codes(rng, n + 100, bits, clusters=1000, flip=0.12)
    codes, queries = data[:n], data[n:]
    ref, ivf = NumpyHammingIndex(bits), FaissHammingIndex(bits, "ivf")
    ref.add(np.arange(n), codes)
    ivf.add(np.arange(n), codes)
    exact = ref.search(queries, 10)
    recalls = {}
    for nprobe in (1, 4, 16):
        approx = ivf.search(queries, 10, params=SearchParams(nprobe=nprobe))
        # Tie-robust recall@10: returned items no farther than the true 10th neighbour.
        found = (approx.distances <= exact.distances[:, -1:]) & (approx.ids >= 0)
        recalls[nprobe] = float(found.sum() / exact.ids.size)
        record_property(f"ivf_recall_at_10_nprobe_{nprobe}", recalls[nprobe])
    print(f"IVF nlist={ivf.nlist} recall@10 by nprobe: {recalls}")
    assert recalls[4] > 0.5
    assert recalls[1] <= recalls[4] <= recalls[16] < 1.0
    assert_same(ivf.search(queries, 10, params=SearchParams(nprobe=ivf.nlist)), exact)


@pytest.mark.parametrize("kind", ["flat", "ivf", "numpy"])
def test_add_remove_update_without_rebuild(kind):
    rng = np.random.default_rng(11)
    bits = 16
    ref, index = NumpyHammingIndex(bits), make(kind, bits)
    queries = random_codes(rng, 20, bits)
    live: set[int] = set()
    for step in range(12):
        new = rng.choice(2000, size=150, replace=False)
        codes = random_codes(rng, 150, bits)
        ref.add(new, codes)
        index.add(new, codes)
        live |= set(new.tolist())
        gone = rng.choice(2000, size=60, replace=False)  # some absent: must be ignored
        removed = ref.remove(gone)
        assert index.remove(gone) == removed == len(live & set(gone.tolist()))
        live -= set(gone.tolist())
        assert len(index) == len(ref) == len(live)
        assert_same(
            index.search(queries, 15, params=EXACT),
            ref.search(queries, 15),
        )
        if step == 3:
            # A pure update changes the code in place: the old code no longer matches.
            target = next(iter(live))
            fresh = (255 - ref.search(queries[:1], 1).ids[:1]).astype(np.uint8)
            fresh = np.repeat(fresh, bits // 8, axis=1)
            ref.add([target], fresh)
            index.add([target], fresh)
            res = index.search(fresh, 1, params=EXACT)
            assert res.distances[0, 0] == 0
    assert len(index) == len(live)


def test_auto_switches_to_ivf_and_retrains_as_it_doubles():
    rng = np.random.default_rng(5)
    bits = 32
    ref, index = NumpyHammingIndex(bits), FaissHammingIndex(bits, "auto", ivf_threshold=400)
    codes = random_codes(rng, 1800, bits)
    queries = random_codes(rng, 10, bits)
    seen = []
    for start in range(0, 1800, 200):
        part = slice(start, start + 200)
        ref.add(np.arange(start, start + 200), codes[part])
        index.add(np.arange(start, start + 200), codes[part])
        seen.append((len(index), index.is_ivf, index.nlist))
        assert_same(
            index.search(queries, 10, params=EXACT),
            ref.search(queries, 10),
        )
    assert seen[0] == (200, False, 1)
    assert seen[1] == (400, True, choose_nlist(400))  # crossed the threshold
    assert seen[2][2] == choose_nlist(400)  # 600 < 2 * 400: no retrain yet
    assert seen[3] == (800, True, choose_nlist(800))  # doubled: retrained
    assert seen[-1][2] == choose_nlist(1600)


@pytest.mark.parametrize("kind", ["ivf", "auto"])
def test_ivf_retrains_or_goes_flat_after_shrinking_below_a_quarter(kind):
    # Left with the lists of a much bigger collection, a few probes would scan almost
    # nothing: 10 items in 102 lists came back as 0-1 hits at the default nprobe.
    rng = np.random.default_rng(6)
    bits = 32
    ref, index = NumpyHammingIndex(bits), make(kind, bits, ivf_threshold=400)
    codes = random_codes(rng, 1600, bits)
    queries = random_codes(rng, 10, bits)
    for idx in (ref, index):
        idx.add(np.arange(1600), codes)
    assert index.is_ivf and index.nlist == choose_nlist(1600)
    for idx in (ref, index):
        idx.remove(np.arange(1200))  # 400 left: exactly a quarter, nothing changes yet
    assert index.nlist == choose_nlist(1600)
    for idx in (ref, index):
        idx.remove(np.arange(1200, 1300))  # 300 left
    if kind == "ivf":
        assert index.is_ivf and index.nlist == choose_nlist(300)
        assert_same(
            index.search(queries, 10, params=EXACT),
            ref.search(queries, 10),
        )
    else:  # below the threshold, as a fresh index of 300 items would be: flat and exact
        assert not index.is_ivf
        assert_same(index.search(queries, 10), ref.search(queries, 10))
    for idx in (ref, index):
        idx.remove(np.arange(1300, 1590))  # 10 left: too few to train even one list
        idx.add([5000], codes[:1])
    assert not index.is_ivf and len(index) == 11
    assert_same(index.search(queries, 20), ref.search(queries, 20))


def test_choose_nlist_is_about_four_sqrt_n_and_bounded():
    assert choose_nlist(10) == 1
    assert choose_nlist(1_000_000) == 4000
    assert choose_nlist(3900) == 100  # bounded by 39 training points per list
    assert choose_nlist(10**10) == 65536


@pytest.mark.parametrize("kind", ["numpy", "flat", "ivf"])
def test_save_load_round_trip(tmp_path: Path, kind):
    rng = np.random.default_rng(3)
    bits = 8  # 8-bit codes tie massively, so insertion order must survive the round trip
    index, ref = make(kind, bits), NumpyHammingIndex(bits)
    codes = random_codes(rng, 500, bits)
    for idx in (index, ref):
        idx.add(np.arange(500) * 3, codes)
        idx.remove(np.arange(0, 300, 9))
        idx.add([3, 6], codes[:2])
    queries = random_codes(rng, 10, bits)
    before = index.search(queries, 20, params=EXACT)
    path = tmp_path / "idx.hbix"
    index.save(path, extra={"note": "x"})
    assert [p.name for p in tmp_path.iterdir()] == ["idx.hbix"]  # no temp file left
    loaded = type(index).load(path, bits=bits)
    assert len(loaded) == len(index) == len(ref)
    assert_same(loaded.search(queries, 20, params=EXACT), before)
    assert_same(before, ref.search(queries, 20))
    # The loaded index stays writable and consistent.
    for idx in (loaded, ref):
        idx.add([1, 3], codes[5:7])
        idx.remove([6])
    assert_same(loaded.search(queries, 20, params=EXACT), ref.search(queries, 20))


@pytest.mark.parametrize("kind", ["numpy", "flat"])
def test_load_refuses_other_bits_and_damaged_files(tmp_path: Path, kind):
    index = make(kind, 64)
    index.add([1, 2], random_codes(np.random.default_rng(0), 2, 64))
    path = tmp_path / "i.hbix"
    index.save(path)
    with pytest.raises(BitsMismatchError, match="64-bit codes but 32-bit"):
        type(index).load(path, bits=32)
    other = FaissHammingIndex if kind == "numpy" else NumpyHammingIndex
    with pytest.raises(IndexFileError, match="expected"):
        other.load(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match="checksum"):
        type(index).load(path)
    path.write_bytes(bytes(data[:-10]))
    with pytest.raises(IndexFileError, match="truncated"):
        type(index).load(path)
    path.write_bytes(b"not an index")
    with pytest.raises(IndexFileError, match="bad magic"):
        type(index).load(path)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_faiss_load_refuses_a_header_that_misnames_the_payload_type(tmp_path: Path, kind):
    # trained_n (flat or IVF) lives in the JSON header, which the payload checksum skips.
    index = FaissHammingIndex(16, kind)
    index.add(np.arange(100), random_codes(np.random.default_rng(1), 100, 16))
    assert index.is_ivf == (kind == "ivf")
    path = tmp_path / "i.hbix"
    index.save(path)
    data = path.read_bytes()
    (n,) = struct.unpack("<I", data[8:12])
    header = json.loads(data[12 : 12 + n])
    header["trained_n"] = 0 if index.is_ivf else 50
    head = json.dumps(header).encode()
    path.write_bytes(data[:8] + struct.pack("<I", len(head)) + head + data[12 + n :])
    with pytest.raises(IndexFileError, match="disagrees with its header"):
        FaissHammingIndex.load(path)


def test_concurrent_searches_with_different_nprobe_do_not_interfere():
    rng = np.random.default_rng(9)
    bits = 64
    codes = clustered_codes(rng, 6000, bits, clusters=32, flip=0.1)
    index = FaissHammingIndex(bits, "ivf")
    index.add(np.arange(6000), codes)
    queries = codes[:50]
    probes = [1, 3, index.nlist] * 8
    expected = {p: index.search(queries, 10, params=SearchParams(nprobe=p)) for p in set(probes)}
    assert not np.array_equal(expected[1].distances, expected[index.nlist].distances)
    with ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(
                lambda p: (p, index.search(queries, 10, params=SearchParams(nprobe=p))), probes
            )
        )
    for p, result in results:
        assert_same(result, expected[p])


@pytest.mark.parametrize("kind", ["numpy", "flat"])
def test_protocol_and_argument_errors(kind):
    index = make(kind, 32)
    assert isinstance(index, HammingIndex)
    with pytest.raises(CodeError, match="4 bytes wide"):
        index.add([1], np.zeros((1, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match="unique"):
        index.add([1, 1], np.zeros((2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="2 ids for 1 codes"):
        index.add([1, 2], np.zeros((1, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="non-negative"):
        index.add([-1], np.zeros((1, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="positive integer"):
        index.search(np.zeros((1, 4), dtype=np.uint8), 0)
    assert len(index) == 0


def test_faiss_rejects_unknown_kind_and_gpu_flag_is_safe_on_cpu():
    with pytest.raises(ValueError, match="kind must be one of"):
        FaissHammingIndex(64, "hnsw")  # type: ignore[arg-type]
    index = FaissHammingIndex(64, "flat", use_gpu=True)
    codes = random_codes(np.random.default_rng(4), 100, 64)
    index.add(np.arange(100), codes)
    assert index.search(codes[:3], 1).ids[:, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("threads", [1, 2])
def test_flat_takes_faiss_order_as_the_tie_rule(threads):
    # The flat CPU path returns FAISS's answer without re-ranking; this holds FAISS's order
    # to the reference's (distance, insertion) rule where it could drift: one query per
    # call, batches past FAISS's query blocks, OpenMP threads, k past the live count, and
    # the removed-slot selector.
    rng = np.random.default_rng(threads)
    bits, n = 16, 20_000
    codes, queries = random_codes(rng, n, bits), random_codes(rng, 300, bits)
    ref, index = NumpyHammingIndex(bits), FaissHammingIndex(bits, "flat")
    ref.add(np.arange(n), codes)
    index.add(np.arange(n), codes)
    previous = set_num_threads(threads)
    try:
        for k in (1, 10, 500):
            assert_same(index.search(queries, k), ref.search(queries, k))
        for q in queries[:20]:
            assert_same(index.search(q[None], 10), ref.search(q[None], 10))
        gone = rng.choice(n, size=n // 10, replace=False)
        ref.remove(gone)
        index.remove(gone)
        assert_same(index.search(queries, 50), ref.search(queries, 50))
        few = FaissHammingIndex(bits, "flat")
        few.add([3, 1, 2], codes[:3])
        few.remove([1])
        assert_same(
            few.search(queries[:4], 5), make_ref(bits, [3, 2], codes[[0, 2]]).search(queries[:4], 5)
        )
    finally:
        set_num_threads(previous)


def make_ref(bits, ids, codes):
    ref = NumpyHammingIndex(bits)
    ref.add(ids, codes)
    return ref
