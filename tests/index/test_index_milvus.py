"""What only the Milvus backend does: how its reads ask for consistency, and how it refuses
a collection indexed otherwise than its settings say.

The consistency test records the keyword arguments of every call the backend makes on a
real pymilvus client talking to the embedded server (the calls still go through).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from index.errors import IndexKindMismatch
from index.milvus_collection import MilvusCollection, MilvusConfig
from index.store import NewItem

BITS = 32


class RecordingClient:
    """Forwards every call to a real MilvusClient and records its consistency arguments."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.reads: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name not in ("search", "query", "query_iterator"):
            return method

        def recorded(*args: Any, **kwargs: Any) -> Any:
            self.reads.append(
                {
                    "call": name,
                    "level": kwargs.get("consistency_level"),
                    "ts": kwargs.get("guarantee_timestamp"),
                }
            )
            return method(*args, **kwargs)

        return recorded


@pytest.fixture
def server_collection(
    milvus_server_uri: str, milvus_collection_name: str
) -> Iterator[tuple[MilvusCollection, MilvusConfig]]:
    config = MilvusConfig(uri=milvus_server_uri, collection=milvus_collection_name)
    coll = MilvusCollection.open(BITS, config)
    yield coll, config
    coll.drop()
    coll.close()


def tied_items(n: int) -> list[NewItem]:
    """n items whose codes are all one code: every search is one big tie group."""
    code = np.full(BITS // 8, 0b10110010, dtype=np.uint8)
    return [NewItem("image", code.tobytes(), metadata={"i": i}) for i in range(n)]


def test_a_reading_block_waits_once_and_later_reads_ask_for_that_point(
    server_collection: tuple[MilvusCollection, MilvusConfig],
) -> None:
    writer, config = server_collection
    ids = writer.upsert(tied_items(12))
    recording = RecordingClient(writer.client)
    # A second replica's view of the same collection, over the same (real) connection.
    replica = MilvusCollection(recording, config, BITS, "")

    before_ms = time.time() * 1000
    with replica.reading():
        (hits,) = replica.search(np.frombuffer(tied_items(1)[0].code, np.uint8)[None], 5)
        stored = replica.get_many([h.id for h in hits])
    # The tie group of 12 is larger than the first pool (2k = 10), so search asked again.
    assert [r["call"] for r in recording.reads] == ["search", "search", "query"]
    assert recording.reads[0]["level"] == "Strong"
    later = recording.reads[1:]
    assert {r["level"] for r in later} == {"Customized"}
    (ts,) = {r["ts"] for r in later}
    # A hybrid timestamp (ms << 18) taken at the block's first read, not some earlier one.
    assert before_ms - 1000 <= (ts >> 18) <= time.time() * 1000
    # Every write acknowledged before the block is seen by each read in it.
    assert [h.id for h in hits] == sorted(ids)[:5]
    assert sorted(stored) == sorted(ids)[:5]

    # Outside a block, every read waits on its own.
    recording.reads.clear()
    replica.get_many(ids[:2])
    replica.get_many(ids[2:4])
    assert [r["level"] for r in recording.reads] == ["Strong", "Strong"]

    # Nested blocks share the outer view: still one wait; a new block waits again.
    recording.reads.clear()
    with replica.reading():
        replica.get_many(ids[:1])
        with replica.reading():
            replica.get_many(ids[1:2])
        replica.get_many(ids[2:3])
    with replica.reading():
        replica.get_many(ids[3:4])
    assert [r["level"] for r in recording.reads] == ["Strong", "Customized", "Customized", "Strong"]


def test_stats_pays_one_wait_for_all_its_counts(
    server_collection: tuple[MilvusCollection, MilvusConfig],
) -> None:
    writer, config = server_collection
    writer.upsert(tied_items(3) + [NewItem("text", bytes(BITS // 8))])
    recording = RecordingClient(writer.client)
    replica = MilvusCollection(recording, config, BITS, "")
    stats = replica.stats()
    assert stats["count"] == 4 and stats["by_modality"] == {"image": 3, "text": 1}
    levels = [r["level"] for r in recording.reads]
    assert levels[0] == "Strong" and set(levels[1:]) == {"Customized"} and len(levels) > 1


def test_a_collection_indexed_otherwise_is_refused_naming_the_settings(
    milvus_lite_uri: str,
) -> None:
    made = MilvusCollection.open(BITS, MilvusConfig(uri=milvus_lite_uri, collection="c"))
    made.close()
    wrong = MilvusConfig(uri=milvus_lite_uri, collection="c", index_kind="BIN_IVF_FLAT")
    with pytest.raises(IndexKindMismatch, match="indexed BIN_FLAT, not BIN_IVF_FLAT with nlist"):
        MilvusCollection.open(BITS, wrong)
    with MilvusCollection.open(BITS, MilvusConfig(uri=milvus_lite_uri, collection="c")) as again:
        assert len(again) == 0


def test_another_nlist_is_refused_too(milvus_server_uri: str, milvus_collection_name: str) -> None:
    config = MilvusConfig(
        uri=milvus_server_uri, collection=milvus_collection_name, index_kind="BIN_IVF_FLAT", nlist=8
    )
    made = MilvusCollection.open(BITS, config)
    try:
        with pytest.raises(IndexKindMismatch, match="HASHBRIDGE_MILVUS_NLIST"):
            MilvusCollection.open(
                BITS,
                MilvusConfig(
                    uri=milvus_server_uri,
                    collection=milvus_collection_name,
                    index_kind="BIN_IVF_FLAT",
                    nlist=16,
                ),
            )
    finally:
        made.drop()
        made.close()


def test_stats_finds_a_modality_only_another_replica_wrote(
    server_collection: tuple[MilvusCollection, MilvusConfig],
) -> None:
    writer, config = server_collection
    # This replica's bundle knows images only; another replica stored texts and clips too.
    replica = MilvusCollection(writer.client, replace(config, modalities=("image",)), BITS, "")
    writer.upsert(tied_items(2) + [NewItem("text", bytes(BITS // 8)), NewItem("video", bytes(4))])
    stats = replica.stats()
    assert stats["count"] == 4
    assert stats["by_modality"] == {"image": 2, "text": 1, "video": 1}
