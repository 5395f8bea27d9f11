"""The faiss-gpu search mirror against the NumPy reference. Skipped where there is no GPU."""

from __future__ import annotations

import numpy as np
import pytest

from index.faiss_index import FaissHammingIndex, faiss_sees_a_gpu
from index.reference import NumpyHammingIndex

needs_faiss_gpu = pytest.mark.skipif(
    not faiss_sees_a_gpu(),
    reason="needs faiss-gpu and a CUDA GPU (this FAISS build or machine has none)",
)


def assert_same(index: FaissHammingIndex, reference: NumpyHammingIndex, queries, k: int) -> None:
    got, want = index.search(queries, k), reference.search(queries, k)
    np.testing.assert_array_equal(got.distances, want.distances)
    np.testing.assert_array_equal(got.ids, want.ids)


@needs_faiss_gpu
@pytest.mark.parametrize("bits", [16, 64, 128])
def test_gpu_flat_search_equals_reference_through_writes(bits: int) -> None:
    rng = np.random.default_rng(bits)
    # Few distinct codes at 16 bits: ties everywhere, so their order is checked too.
    codes = rng.integers(0, 256, size=(3000, bits // 8), dtype=np.uint8)
    if bits == 16:
        codes = codes[rng.integers(0, 40, size=3000)]
    queries = np.concatenate([codes[:20], rng.integers(0, 256, (20, bits // 8), np.uint8)])
    index = FaissHammingIndex(bits, "flat", use_gpu=True)
    reference = NumpyHammingIndex(bits)
    assert index.uses_gpu
    ids = np.arange(3000) * 3 + 1
    index.add(ids, codes)
    reference.add(ids, codes)
    # 1500 is past the GPU's k limit: that search falls back to the CPU index.
    for k in (1, 10, 100, 1500):
        assert_same(index, reference, queries, k)
    # Writes invalidate the GPU mirror: removals, updates and new items must all show.
    gone = ids[::7]
    index.remove(gone)
    reference.remove(gone)
    moved = ids[1::11]
    new_codes = rng.integers(0, 256, size=(len(moved), bits // 8), dtype=np.uint8)
    index.add(moved, new_codes)
    reference.add(moved, new_codes)
    extra = np.arange(50) * 3 + 100_000
    index.add(extra, codes[:50])
    reference.add(extra, codes[:50])
    for k in (1, 10, 100):
        assert_same(index, reference, queries, k)
