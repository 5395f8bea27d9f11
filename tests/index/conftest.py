"""Fixtures of the index tests; Milvus comes from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from index.faiss_index import set_num_threads


@pytest.fixture(autouse=True, scope="module")
def _single_faiss_thread() -> Iterator[None]:
    # OpenMP spin-waits badly on a shared 2-core box; one thread keeps timings stable.
    previous = set_num_threads(1)
    yield
    set_num_threads(previous)
