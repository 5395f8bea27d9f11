"""The collection contract (index.backend), checked alike on every backend.

Backends: the local collection over the NumPy reference and over FAISS (flat, and IVF
probed exhaustively), and Milvus (milvus-lite in-process with BIN_FLAT; the embedded
server with BIN_IVF_FLAT probed exhaustively). Every search is compared exactly, ids and
distances, with an oracle built from the NumPy reference index over what the test wrote,
ranked by the backend's declared tie order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from index.backend import CollectionBackend, Hit
from index.base import SearchParams
from index.errors import BitsMismatchError, ItemError
from index.factory import IndexConfig
from index.filters import matches
from index.milvus_collection import MilvusCollection, MilvusConfig
from index.opening import open_backend
from index.reference import NumpyHammingIndex
from index.store import NewItem

BITS = 32
#: Probes every list: IVF searches are then exact, and comparable with the oracle.
EXACT = SearchParams(nprobe=1 << 20)
BACKENDS = ["reference", "faiss-flat", "faiss-ivf", "milvus-lite", "milvus-server"]


@dataclass
class Backend:
    """Opens one backend's collection again and again (a restart is close + open)."""

    name: str
    open: Callable[[int], CollectionBackend]
    opened: list[CollectionBackend] = field(default_factory=list)

    def __call__(self, bits: int = BITS) -> CollectionBackend:
        coll = self.open(bits)
        self.opened.append(coll)
        return coll


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh empty collection of each backend."""
    name = request.param
    if name.startswith("milvus"):
        if name == "milvus-lite":
            uri = request.getfixturevalue("milvus_lite_uri")
            config = MilvusConfig(uri=uri, collection="conformance")
        else:
            uri = request.getfixturevalue("milvus_server_uri")
            config = MilvusConfig(
                uri=uri,
                collection=request.getfixturevalue("milvus_collection_name"),
                index_kind="BIN_IVF_FLAT",
                nlist=8,
            )
        made = Backend(name, lambda bits: MilvusCollection.open(bits, config))
    else:
        local = {
            "reference": IndexConfig(backend="numpy"),
            "faiss-flat": IndexConfig(kind="flat"),
            "faiss-ivf": IndexConfig(kind="ivf"),
        }[name]
        made = Backend(name, lambda bits: open_backend(tmp_path / "data", bits, local))
    yield made
    if name == "milvus-server" and made.opened:
        last = made.opened[-1]
        assert isinstance(last, MilvusCollection)
        last.drop()
    for coll in made.opened:
        coll.close()


@dataclass
class Oracle:
    """What the test wrote, replayed; searched with the NumPy reference."""

    tie_order: str
    items: dict[int, tuple[str, bytes, dict[str, Any], int]] = field(default_factory=dict)
    clock: int = 0

    def wrote(self, ids: Sequence[int], items: Sequence[NewItem]) -> None:
        for item_id, item in zip(ids, items, strict=True):
            self.clock += 1
            code = item.code if isinstance(item.code, bytes) else item.code.tobytes()
            self.items[item_id] = (item.modality, code, dict(item.metadata), self.clock)

    def deleted(self, ids: Sequence[int]) -> None:
        for item_id in ids:
            self.items.pop(item_id, None)

    def live(
        self, modalities: Sequence[str] | None, where: Mapping[str, Any] | None
    ) -> dict[int, tuple[str, bytes, dict[str, Any], int]]:
        """The items a search with these filters may return."""
        return {
            i: v
            for i, v in self.items.items()
            if (modalities is None or v[0] in modalities)
            and (where is None or matches(v[2], where))
        }

    def search(
        self,
        queries: np.ndarray,
        k: int,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[list[Hit]]:
        live = self.live(modalities, where)
        if self.tie_order == "id":
            return _ranked(live, sorted(live), queries, k)
        names = (
            list(modalities) if modalities is not None else sorted({v[0] for v in live.values()})
        )
        per = [
            _ranked(
                live,
                sorted((i for i in live if live[i][0] == m), key=lambda i: live[i][3]),
                queries,
                k,
            )
            for m in names
        ]
        # Merged by distance; equal distances keep the modalities' order (a stable sort).
        return [
            sorted((h for rows in per for h in rows[q]), key=lambda h: h.distance)[:k]
            for q in range(queries.shape[0])
        ]

    def rerank(
        self,
        values: np.ndarray,
        k: int,
        ranking: str,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> list[list[tuple[int, int]]]:
        """(id, distance) of the top k by brute force under the ranking; equal scores fall
        as equal distances do in the tie order."""
        live = self.live(modalities, where)
        names = (
            list(modalities) if modalities is not None else sorted({v[0] for v in live.values()})
        )
        out = []
        for row in values:
            query = np.packbits(row >= 0)
            keyed = []
            for i, (modality, code, _, clock) in live.items():
                b = np.unpackbits(np.frombuffer(code, np.uint8)).astype(np.float64) * 2 - 1
                score = round(float(-(row * b).sum()), 9)
                distance = int(np.unpackbits(np.frombuffer(code, np.uint8) ^ query).sum())
                tie = (i,) if self.tie_order == "id" else (names.index(modality), clock)
                first = (score,) if ranking == "asymmetric" else (distance, score)
                keyed.append((first + tie, i, distance))
            out.append([(i, d) for _, i, d in sorted(keyed)[:k]])
        return out


def _ranked(
    live: Mapping[int, tuple[str, bytes, dict[str, Any], int]],
    order: list[int],
    queries: np.ndarray,
    k: int,
) -> list[list[Hit]]:
    """Reference ranking of the items in order: ties fall in that order."""
    if not order:
        return [[] for _ in queries]
    ref = NumpyHammingIndex(BITS)
    codes = np.frombuffer(b"".join(live[i][1] for i in order), np.uint8).reshape(len(order), -1)
    ref.add(np.array(order, dtype=np.int64), codes)
    res = ref.search(queries, k)
    return [
        [Hit(int(i), int(d), live[int(i)][0]) for i, d in zip(ids, dist, strict=True) if i >= 0]
        for ids, dist in zip(res.ids, res.distances, strict=True)
    ]


def tied_codes(rng: np.random.Generator, n: int, distinct: int = 12) -> np.ndarray:
    """n codes drawn from few distinct values, so most distances tie."""
    pool = rng.integers(0, 256, (distinct, BITS // 8), dtype=np.uint8)
    return pool[rng.integers(0, distinct, n)]


def make_items(
    rng: np.random.Generator, n: int, *, prefix: str | None = None, start: int = 0
) -> list[NewItem]:
    codes = tied_codes(rng, n)
    return [
        NewItem(
            ["image", "text"][i % 2],
            codes[i].tobytes(),
            None if prefix is None else f"{prefix}{start + i}",
            {"n": (start + i) % 5, "even": (start + i) % 2 == 0},
        )
        for i in range(n)
    ]


def check(coll: CollectionBackend, oracle: Oracle, queries: np.ndarray, **kw: Any) -> None:
    for k in (1, 7, 40):
        assert coll.search(queries, k, params=EXACT, **kw) == oracle.search(queries, k, **kw)


def test_adds_then_search_match_the_oracle(backend: Backend) -> None:
    rng = np.random.default_rng(0)
    coll = backend()
    oracle = Oracle(coll.tie_order)
    for batch in range(3):
        items = make_items(rng, 60, prefix="c" if batch else None, start=100 * batch)
        ids = coll.upsert(items)
        assert len(set(ids)) == len(ids) == 60
        oracle.wrote(ids, items)
    assert len(coll) == 180
    queries = tied_codes(rng, 6)
    check(coll, oracle, queries)
    check(coll, oracle, queries, modalities=["text"])
    check(coll, oracle, queries, modalities=["text", "image"])
    stats = coll.stats()
    assert stats["count"] == 180 and stats["by_modality"] == {"image": 90, "text": 90}


def test_reads_in_one_reading_block_agree_with_those_outside(backend: Backend) -> None:
    rng = np.random.default_rng(7)
    coll = backend()
    oracle = Oracle(coll.tie_order)
    items = make_items(rng, 40, prefix="r")
    ids = coll.upsert(items)
    oracle.wrote(ids, items)
    queries = tied_codes(rng, 3)
    with coll.reading():
        check(coll, oracle, queries)
        with coll.reading():
            found = coll.get_many(ids)
        assert coll.stats()["count"] == 40
    assert sorted(found) == sorted(ids)
    assert [found[i].metadata for i in ids] == [it.metadata for it in items]
    # A write after the block is seen by the next block.
    more = make_items(rng, 5, prefix="s")
    oracle.wrote(coll.upsert(more), more)
    with coll.reading():
        check(coll, oracle, queries)
        assert len(coll) == 45


@pytest.mark.parametrize("ranking", ["asymmetric", "hamming_asymmetric"])
def test_reranking_by_the_query_values_matches_brute_force(backend: Backend, ranking: str) -> None:
    rng = np.random.default_rng(11)
    coll = backend()
    oracle = Oracle(coll.tie_order)
    items = make_items(rng, 60, prefix="v")
    oracle.wrote(coll.upsert(items), items)
    # Values whose signs are tied codes, so many items share a distance and the score decides.
    signs = np.unpackbits(tied_codes(rng, 4), axis=1).astype(np.float64) * 2 - 1
    values = signs * rng.uniform(0.05, 1.0, signs.shape)
    for k, kw in [
        (1, {}),
        (7, {}),
        (40, {}),
        (7, {"modalities": ["text"]}),
        (7, {"where": {"n": 2}}),
    ]:
        got = coll.search_values(values, k, ranking, params=EXACT, **kw)  # type: ignore[arg-type]
        assert [[(h.id, h.distance) for h in row] for row in got] == oracle.rerank(
            values, k, ranking, **kw
        ), (k, kw)
        assert all(h.score is not None for row in got for h in row)


def test_removals(backend: Backend) -> None:
    rng = np.random.default_rng(1)
    coll = backend()
    oracle = Oracle(coll.tie_order)
    items = make_items(rng, 120)
    ids = coll.upsert(items)
    oracle.wrote(ids, items)
    gone = [int(i) for i in rng.choice(ids, 50, replace=False)]
    unknown = max(ids) + 12345
    assert coll.delete([*gone, unknown, gone[0]]) == 50
    oracle.deleted(gone)
    assert coll.delete(gone) == 0
    assert len(coll) == 70
    assert coll.get(gone[0]) is None and coll.get_many(gone) == {}
    check(coll, oracle, tied_codes(rng, 5))


def test_updates_keep_the_id_and_replace_everything_else(backend: Backend) -> None:
    rng = np.random.default_rng(2)
    coll = backend()
    oracle = Oracle(coll.tie_order)
    items = make_items(rng, 80, prefix="c")
    ids = coll.upsert(items)
    oracle.wrote(ids, items)
    before = coll.get(ids[3])
    assert before is not None and before.client_id == "c3"
    # Re-sent client ids: new codes, a modality move and new metadata, same ids.
    moved = [
        NewItem("video" if i == 3 else "text", code.tobytes(), f"c{i}", {"v": i})
        for i, code in zip(range(0, 80, 3), tied_codes(rng, 27), strict=True)
    ]
    again = coll.upsert(moved)
    assert again == [ids[i] for i in range(0, 80, 3)]
    oracle.wrote(again, moved)
    after = coll.get(ids[3])
    assert after is not None
    assert (after.modality, after.code, after.metadata) == ("video", moved[1].code, {"v": 3})
    assert after.created_at == before.created_at
    assert len(coll) == 80
    queries = tied_codes(rng, 5)
    check(coll, oracle, queries)
    check(coll, oracle, queries, modalities=["video"])


def test_ties_follow_the_declared_order_across_the_kth_result(backend: Backend) -> None:
    coll = backend()
    code = np.full(BITS // 8, 0b1010_0101, np.uint8)
    items = [NewItem("image", code.tobytes(), f"same{i}") for i in range(30)]
    ids = coll.upsert(items)
    far = coll.upsert([NewItem("image", (~code).tobytes())])
    hits = coll.search(code[None, :], 10, params=EXACT)[0]
    expected = ids[:10] if coll.tie_order == "write" else sorted(ids)[:10]
    assert [h.id for h in hits] == expected and {h.distance for h in hits} == {0}
    everything = coll.search(code[None, :], 31, params=EXACT)[0]
    assert [h.id for h in everything][-1] == far[0]


FILTER_VALUES: list[Any] = [1, 1.0, True, "1", [1], {"a": 1}, None, 'q"uo\\te\n', "é☃", 0]


def test_filters_are_exact_json_equality(backend: Backend) -> None:
    rng = np.random.default_rng(3)
    coll = backend()
    oracle = Oracle(coll.tie_order)
    codes = tied_codes(rng, 60)
    items = [
        NewItem(
            ["image", "text"][i % 2],
            codes[i].tobytes(),
            metadata={"v": FILTER_VALUES[i % len(FILTER_VALUES)], 'k"ey': i % 3, "n": i},
        )
        for i in range(60)
    ]
    ids = coll.upsert(items)
    oracle.wrote(ids, items)
    queries = tied_codes(rng, 3)
    for value in FILTER_VALUES:
        where = {"v": value}
        got = coll.search(queries, 60, params=EXACT, where=where)
        assert got == oracle.search(queries, 60, where=where)
        assert len(got[0]) == 6  # exactly the items that hold this very value
    check(coll, oracle, queries, where={"v": 1, 'k"ey': 0})
    check(coll, oracle, queries, where={"v": "1"}, modalities=["text"])
    check(coll, oracle, queries, where={"missing": 1})
    assert coll.search(queries, 5, where={"v": 2.5}) == [[], [], []]
    check(coll, oracle, queries, where={})


def test_k_past_the_size_and_empty(backend: Backend) -> None:
    rng = np.random.default_rng(4)
    coll = backend()
    queries = tied_codes(rng, 2)
    assert coll.search(queries, 5) == [[], []]
    oracle = Oracle(coll.tie_order)
    items = make_items(rng, 13)
    oracle.wrote(coll.upsert(items), items)
    got = coll.search(queries, 1000, params=EXACT)
    assert got == oracle.search(queries, 1000) and len(got[0]) == 13
    with pytest.raises(ValueError, match="k must be"):
        coll.search(queries, 0)


def test_restart_keeps_everything(backend: Backend) -> None:
    rng = np.random.default_rng(5)
    coll = backend()
    oracle = Oracle(coll.tie_order)
    items = make_items(rng, 90, prefix="c")
    ids = coll.upsert(items)
    oracle.wrote(ids, items)
    coll.upsert([NewItem("image", items[0].code, "thumb", {}, thumbnail=b"\xff\xd8jpeg\x00")])
    coll.delete(ids[:10])
    oracle.deleted(ids[:10])
    coll.snapshot()
    queries = tied_codes(rng, 4)
    before = coll.search(queries, 25, params=EXACT)
    item = coll.get(ids[20])
    coll.close()
    backend.opened.remove(coll)
    again = backend()
    assert len(again) == 81
    assert again.search(queries, 25, params=EXACT) == before
    (thumb_id,) = again.upsert([NewItem("image", items[0].code, "thumb", {}, thumbnail=b"new")])
    assert again.thumbnail(thumb_id) == b"new"
    assert again.get(ids[20]) == item is not None
    oracle.wrote([thumb_id], [NewItem("image", items[0].code, "thumb")])
    check(again, oracle, queries)


def test_thumbnails_and_items_round_trip(backend: Backend) -> None:
    coll = backend()
    jpeg = bytes(range(256)) * 20
    code = np.arange(BITS // 8, dtype=np.uint8)
    with_thumb, text = coll.upsert(
        [
            NewItem("image", code, "a", {"x": [1, {"y": None}]}, thumbnail=jpeg),
            NewItem("text", code.tobytes(), None, {"t": "ü"}),
        ]
    )
    assert coll.thumbnail(with_thumb) == jpeg and coll.thumbnail(text) is None
    item = coll.get(with_thumb)
    assert item is not None
    assert (item.client_id, item.modality, item.code, item.metadata) == (
        "a",
        "image",
        code.tobytes(),
        {"x": [1, {"y": None}]},
    )
    assert set(coll.get_many([text, with_thumb, 999_999])) == {text, with_thumb}
    # Re-sent without a thumbnail: the old one goes.
    coll.upsert([NewItem("image", code, "a")])
    assert coll.thumbnail(with_thumb) is None


def test_bad_items_and_widths_are_refused(backend: Backend) -> None:
    coll = backend()
    with pytest.raises(ItemError, match="client_id"):
        coll.upsert([NewItem("image", bytes(4), "x"), NewItem("text", bytes(4), "x")])
    with pytest.raises(ItemError, match="modality"):
        coll.upsert([NewItem("Bad Modality", bytes(4))])
    with pytest.raises(ValueError, match="4 bytes"):
        coll.upsert([NewItem("image", bytes(3))])
    assert len(coll) == 0
    coll.upsert([NewItem("image", bytes(4))])
    coll.close()
    backend.opened.remove(coll)
    with pytest.raises(BitsMismatchError):
        backend(64)
