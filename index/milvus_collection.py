"""The Milvus collection backend: codes, metadata and thumbnails in one Milvus collection.

Several service processes open the same collection and serve it together; nothing is
kept in the process but the client. One row per item:

- ``id`` INT64 primary key: for an item with a client id, 53 bits of sha256(client id), so
  every replica upserting that client id lands on the same row without asking the others;
  otherwise 53 random bits. 53 bits keep ids exact in JavaScript clients. A drawn id that
  is taken is drawn again; a client id whose hash is taken by another item is refused.
- ``code`` BINARY_VECTOR (bits) with metric HAMMING, index BIN_FLAT (exact) or
  BIN_IVF_FLAT (``nlist``; ``nprobe`` per query through ``SearchParams``).
- ``modality``, ``client_id`` ("" for none) VARCHAR; ``created_at`` DOUBLE.
- ``metadata`` JSON as sent, and ``match`` JSON of each key's canonical JSON text, which
  ``where`` filters compare inside Milvus (``index.filters.milvus_expression``).
- ``thumbnail`` VARCHAR: the JPEG in base64 (Milvus has no bytes scalar), at most
  ``THUMBNAIL_CHARS`` characters; a larger one is not stored (logged).

Consistency: the first read of a request asks for Strong consistency, so it waits until
the query nodes have applied every write acknowledged before it began, whichever proxy or
replica took the write. The cost is that wait (Milvus's time tick, up to ~200 ms by
default, on top of the search itself); Bounded or Session would answer sooner but could
miss another replica's last writes. The reads after it inside one ``reading()`` block (a
search's larger tie pools, the service's lookup of the hits) ask for the point the first
one waited for (Milvus's "Customized" level with that guarantee timestamp), which the
query nodes have already passed, so a request pays the wait once. That point is the
server's session timestamp where Milvus returns one (2.4 and later), else this host's
clock just before the first read: a host clock behind Milvus's by d can let those later
reads miss writes acknowledged in the last d, and such a hit is left out of the answer as
if it was deleted meanwhile (keep hosts on NTP).

Ties: ordered by (distance, id), the ``"id"`` tie order of ``index.backend``: Milvus breaks
ties arbitrarily, so candidates are fetched in growing pools until the k-th distance's tie
group is complete and then sorted (``index.ranking``). A pool is at most ``MAX_TOPK``
(Milvus's limit): past it, which members of a larger tie group are returned is Milvus's
choice.

Every call carries a timeout; a Milvus that is down, unreachable or too slow raises
``BackendUnavailable`` (the service answers 503).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import math
import secrets
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt

from index.backend import Hit, TieOrder
from index.base import SearchParams, check_ids, check_k
from index.codes import check_bits, hamming, validate_codes
from index.errors import (
    BackendUnavailable,
    BitsMismatchError,
    CollectionMismatch,
    IndexKindMismatch,
    ItemError,
)
from index.filters import canonical_values, milvus_expression
from index.ranking import top_k_by_sequence
from index.rerank import MAX_POOL, Candidates, Ranking
from index.store import NewItem, StoredItem, encode_item
from index.value_search import search_by_values

log = logging.getLogger(__name__)

MilvusIndexKind = Literal["BIN_FLAT", "BIN_IVF_FLAT"]
MILVUS_INDEX_KINDS: tuple[str, ...] = ("BIN_FLAT", "BIN_IVF_FLAT")
#: Milvus's largest search limit (topk).
MAX_TOPK = 16_384
#: Milvus's longest VARCHAR; a base64 thumbnail longer than this is not stored.
THUMBNAIL_CHARS = 65_535
MAX_CLIENT_ID_CHARS = 1024
#: Longest a start-up may wait for Milvus to load the collection (at least timeout_s).
LOAD_TIMEOUT_S = 120.0
_ID_BITS = 53
_STRONG = "Strong"
#: A Milvus hybrid timestamp is milliseconds since the epoch shifted past 18 logical bits.
_LOGICAL_BITS = 18
_MARK = "hashbridge items"
_ITEM_FIELDS = ["id", "client_id", "modality", "code", "metadata", "created_at"]
# Ids per "id in [...]" expression: keeps each expression small.
_ID_CHUNK = 1000


@dataclass(frozen=True)
class MilvusConfig:
    """Where the Milvus collection is and how it is indexed and searched."""

    #: http://host:19530 for a Milvus server, or a local file path for milvus-lite.
    uri: str
    collection: str = "hashbridge"
    index_kind: MilvusIndexKind = "BIN_FLAT"
    nlist: int = 1024
    default_nprobe: int = 16
    #: Longest any one call to Milvus may take before it counts as unreachable.
    timeout_s: float = 10.0
    token: str = field(default="", repr=False)
    #: Modalities counted by stats() without a scan (the bundle's); others are found by one.
    modalities: tuple[str, ...] = ()
    #: Names the model whose codes these are (the bundle's fingerprint); recorded when the
    #: collection is created, and a collection of another model is refused.
    model: str = ""

    def __post_init__(self) -> None:
        if self.index_kind not in MILVUS_INDEX_KINDS:
            raise ValueError(f"index_kind must be one of {MILVUS_INDEX_KINDS}")
        if self.nlist < 1 or self.default_nprobe < 1 or self.timeout_s <= 0:
            raise ValueError("nlist, default_nprobe and timeout_s must be positive")


class MilvusCollection:
    """A Milvus collection of items; safe to share between threads and processes."""

    tie_order: TieOrder = "id"

    def __init__(self, client: Any, config: MilvusConfig, bits: int, report: str) -> None:
        self._client = client
        self.config = config
        self._bits = bits
        self._seen = set(config.modalities)
        self.open_report = {"milvus": report}
        # Per thread: None outside reading(), 0 inside it before its first read, else the
        # guarantee timestamp the block's later reads ask for.
        self._view = threading.local()

    @classmethod
    def open(cls, bits: int, config: MilvusConfig) -> Self:
        """Connect and open (or create) the collection; BitsMismatchError if bits differ."""
        bits = check_bits(bits)
        from pymilvus import MilvusClient  # imported here: only Milvus mode needs it

        where = f"Milvus at {config.uri}"
        with _unavailable(f"{where}: cannot connect"):
            # pymilvus shares one connection per URI in a process unless given an alias, and
            # closing any client on it would close it for all.
            client = MilvusClient(
                uri=config.uri,
                token=config.token,
                timeout=_seconds(config),
                alias=f"hashbridge-{uuid.uuid4().hex}",
            )
        try:
            with _unavailable(f"{where}: cannot open collection {config.collection!r}"):
                created = False
                if not client.has_collection(config.collection, timeout=_seconds(config)):
                    created = _create(client, config, bits)
                _check_schema(client, config, bits)
                client.load_collection(config.collection, timeout=_load_timeout(config))
            collection = cls(client, config, bits, "")
            n = len(collection)
        except BaseException:
            # A refused or unreachable collection leaves no client (nor milvus-lite process).
            with suppress(Exception):
                client.close()
            raise
        verb = "created" if created else "opened"
        collection.open_report["milvus"] = (
            f"{verb} collection {config.collection!r} at {config.uri} "
            f"({config.index_kind}, {n} items)"
        )
        return collection

    @property
    def bits(self) -> int:
        """Code width in bits."""
        return self._bits

    @property
    def client(self) -> Any:
        """The pymilvus MilvusClient (for operations and benches that talk to Milvus itself)."""
        return self._client

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Reads inside see one consistent view and wait for Milvus's time tick only once."""
        if getattr(self._view, "ts", None) is not None:
            yield  # nested: the outer block's view holds
            return
        self._view.ts = 0
        try:
            yield
        finally:
            self._view.ts = None

    def _consistency(self) -> dict[str, Any]:
        """The consistency arguments of the next read (see the module's docstring)."""
        view = getattr(self._view, "ts", None)
        if view:
            return {"consistency_level": "Customized", "guarantee_timestamp": view}
        if view == 0:
            # Taken before the Strong read, so at or before the point it waits for.
            self._view.ts = int(time.time() * 1000) << _LOGICAL_BITS
        return {"consistency_level": _STRONG}

    def _saw(self, session_ts: int) -> None:
        """Ask later reads of this view for the server's own timestamp where it gave one."""
        if session_ts > 0 and getattr(self._view, "ts", None):
            self._view.ts = session_ts

    def __len__(self) -> int:
        rows = self._query("", ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client."""
        with _unavailable("closing the Milvus client"):
            self._client.close()

    def upsert(self, items: Sequence[NewItem]) -> list[int]:
        """Write items (an existing client id keeps its id and created_at); return ids."""
        if not items:
            return []
        encoded = [encode_item(i, item, self._bits) for i, item in enumerate(items)]
        client_ids = [e[0] for e in encoded if e[0] is not None]
        if len(set(client_ids)) != len(client_ids):
            raise ItemError("client_id values within one batch must be unique")
        for i, item in enumerate(items):
            if item.client_id is not None and len(item.client_id) > MAX_CLIENT_ID_CHARS:
                raise ItemError(f"item #{i}: client_id is longer than {MAX_CLIENT_ID_CHARS}")
            if item.thumbnail is not None and not isinstance(item.thumbnail, bytes):
                raise ItemError(f"item #{i}: thumbnail must be bytes or None")
        ids, created = self._assign_ids([e[0] for e in encoded])
        now = time.time()
        rows = []
        for item_id, item, (client_id, modality, code, metadata_json) in zip(
            ids, items, encoded, strict=True
        ):
            metadata = json.loads(metadata_json)
            rows.append(
                {
                    "id": item_id,
                    "code": code,
                    "modality": modality,
                    "client_id": client_id or "",
                    "metadata": metadata,
                    "match": canonical_values(metadata),
                    "created_at": created.get(item_id, now),
                    "thumbnail": _thumbnail_text(item_id, item.thumbnail),
                }
            )
            self._seen.add(modality)
        with self._call("upsert"):
            self._client.upsert(self.config.collection, rows, timeout=_seconds(self.config))
        return ids

    def delete(self, ids: Sequence[int]) -> int:
        """Delete items by id; return how many existed."""
        wanted = np.unique(check_ids(ids, unique=False)).tolist()
        existing = [row["id"] for row in self._rows_of(wanted, ["id"])]
        if existing:
            with self._call("delete"):
                self._client.delete(
                    self.config.collection, ids=existing, timeout=_seconds(self.config)
                )
        return len(existing)

    def get(self, item_id: int) -> StoredItem | None:
        """One stored item, or None."""
        return self.get_many([item_id]).get(int(item_id))

    def lookup_client_ids(self, client_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """(id, modality) of the stored items among client_ids: an item's id is its client
        id's hash, so one read by id finds them (a hash taken by another item is no match)."""
        wanted = {_client_id_key(c): c for c in client_ids}
        found = self.get_many(list(wanted))
        return {
            cid: (item_id, found[item_id].modality)
            for item_id, cid in wanted.items()
            if item_id in found and found[item_id].client_id == cid
        }

    def get_many(self, ids: Sequence[int]) -> dict[int, StoredItem]:
        """The items that exist among ids, keyed by id (seq is 0: Milvus has no write order)."""
        unique = list(dict.fromkeys(int(i) for i in ids))
        return {
            int(row["id"]): StoredItem(
                int(row["id"]),
                row["client_id"] or None,
                row["modality"],
                _code_bytes(row["code"]),
                dict(row["metadata"]),
                float(row["created_at"]),
                0,
            )
            for row in self._rows_of(unique, _ITEM_FIELDS)
        }

    def thumbnail(self, item_id: int) -> bytes | None:
        """An item's thumbnail bytes, or None."""
        rows = self._rows_of([int(item_id)], ["thumbnail"])
        text = rows[0]["thumbnail"] if rows else ""
        return base64.b64decode(text) if text else None

    def search(
        self,
        codes: npt.ArrayLike,
        k: int,
        *,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
        params: SearchParams | None = None,
    ) -> list[list[Hit]]:
        """Up to k hits per query by (distance, id); where and modalities filter in Milvus."""
        queries = validate_codes(codes, self._bits)
        k = check_k(k)
        if isinstance(modalities, str):
            modalities = [modalities]
        conditions = []
        if modalities is not None:
            names = list(dict.fromkeys(modalities))
            conditions.append(f"modality in {json.dumps(names)}")
        if where:
            conditions.append(milvus_expression(where, "match"))
        expression = " and ".join(f"({c})" for c in conditions)
        nprobe = (params.nprobe if params else None) or self.config.default_nprobe
        search_params: dict[str, Any] = {"metric_type": "HAMMING"}
        if self.config.index_kind == "BIN_IVF_FLAT":
            search_params["params"] = {"nprobe": min(nprobe, self.config.nlist)}
        modality_of: dict[int, str] = {}

        def candidates(
            rows: npt.NDArray[np.intp], kk: int
        ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
            with self._call("search"):
                found = self._client.search(
                    self.config.collection,
                    data=[q.tobytes() for q in queries[rows]],
                    limit=kk,
                    filter=expression,
                    output_fields=["modality"],
                    search_params=search_params,
                    timeout=_seconds(self.config),
                    **self._consistency(),
                )
            self._saw(int(getattr(found, "get_session_ts", lambda: 0)() or 0))
            dist = np.full((len(rows), kk), -1, dtype=np.int32)
            ids = np.full((len(rows), kk), -1, dtype=np.int64)
            for r, hits in enumerate(found):
                for c, hit in enumerate(hits):
                    ids[r, c] = int(hit["id"])
                    dist[r, c] = round(float(hit["distance"]))
                    modality_of[int(hit["id"])] = hit["entity"]["modality"]
            return dist, ids

        with self.reading():
            result = top_k_by_sequence(candidates, queries.shape[0], MAX_TOPK, k, lambda ids: ids)
        return [
            [
                Hit(int(i), int(d), modality_of[int(i)])
                for i, d in zip(row_ids, row_distances, strict=True)
                if i >= 0
            ]
            for row_ids, row_distances in zip(result.ids, result.distances, strict=True)
        ]

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
        """Like ``search``, for queries given as real-valued codes (nq, bits), under ``ranking``
        (as ``Collection.search_values``): the Hamming search's nearest items, read back with
        their codes in the same view, re-ranked by the asymmetric score; equal scores fall by
        id, as equal distances do here."""

        def fetch(query: npt.NDArray[np.uint8], pool: int) -> Candidates:
            (hits,) = self.search(
                query[None, :], pool, modalities=modalities, where=where, params=params
            )
            return self._with_codes(hits, query, exhausted=len(hits) < pool)

        with self.reading():
            return search_by_values(
                values,
                codes,
                self._bits,
                k,
                ranking,
                hamming_search=lambda q: self.search(
                    q, k, modalities=modalities, where=where, params=params
                ),
                fetch=fetch,
                max_pool=max_pool,
            )

    def _with_codes(
        self, hits: Sequence[Hit], query: npt.NDArray[np.uint8], *, exhausted: bool
    ) -> Candidates:
        """The hits with their stored codes; one rewritten or deleted since is left out."""
        rows = {
            int(r["id"]): r for r in self._rows_of([h.id for h in hits], ["id", "code", "modality"])
        }
        width = self._bits // 8
        kept = [h for h in hits if h.id in rows and rows[h.id]["modality"] == h.modality]
        codes = np.frombuffer(
            b"".join(_code_bytes(rows[h.id]["code"]) for h in kept), dtype=np.uint8
        ).reshape(-1, width)
        distances = np.array([h.distance for h in kept], dtype=np.int64)
        same = hamming(codes, query) == distances if len(kept) else np.zeros(0, dtype=bool)
        ids = np.array([h.id for h in kept], dtype=np.int64)[same]
        return Candidates(
            ids=ids,
            distances=distances[same],
            codes=codes[same],
            seqs=ids,  # the "id" tie order
            exhausted=exhausted,
            modalities=tuple(h.modality for h, keep in zip(kept, same, strict=True) if keep),
        )

    def stats(self) -> dict[str, Any]:
        """Item counts per modality; index_sizes are the same (one Milvus index holds all)."""
        with self.reading():
            return self._stats()

    def _stats(self) -> dict[str, Any]:
        total = len(self)
        counts = {m: self._count(f"modality == {json.dumps(m)}") for m in sorted(self._seen)}
        if sum(counts.values()) != total:
            # Another replica wrote a modality this one has not seen: find them all.
            counts = self._count_by_scan()
            self._seen |= set(counts)
        by_modality = {m: c for m, c in sorted(counts.items()) if c}
        return {
            "uri": self.config.uri,
            "collection": self.config.collection,
            "bits": self._bits,
            "count": total,
            "by_modality": by_modality,
            "index_sizes": dict(by_modality),
            "seq": 0,
        }

    def snapshot(self) -> dict[str, Any]:
        """Nothing to save: Milvus persists every acknowledged write itself."""
        return {}

    def drop(self) -> None:
        """Delete the whole collection from Milvus (tests and benches)."""
        with self._call("drop"):
            self._client.drop_collection(self.config.collection, timeout=_seconds(self.config))

    def _assign_ids(self, client_ids: list[str | None]) -> tuple[list[int], dict[int, float]]:
        """Ids for a batch, and created_at of those that already exist (kept on update)."""
        ids = [_client_id_key(c) if c is not None else _random_id() for c in client_ids]
        while True:
            taken = {
                row["id"]: row for row in self._rows_of(ids, ["id", "client_id", "created_at"])
            }
            clashes = False
            for i, (item_id, client_id) in enumerate(zip(ids, client_ids, strict=True)):
                row = taken.get(item_id)
                if row is None or (client_id is not None and row["client_id"] == client_id):
                    continue
                if client_id is not None:
                    raise ItemError(
                        f"item #{i}: client_id {client_id!r} hashes to the id of another item "
                        f"({item_id}); use another client_id"
                    )
                ids[i] = _random_id()
                clashes = True
            if not clashes and len(set(ids)) == len(ids):
                return ids, {i: float(r["created_at"]) for i, r in taken.items()}
            ids = [
                i if c is not None else _random_id() for i, c in zip(ids, client_ids, strict=True)
            ]

    def _rows_of(self, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for s in range(0, len(ids), _ID_CHUNK):
            chunk = [int(i) for i in ids[s : s + _ID_CHUNK]]
            rows += self._query(f"id in {json.dumps(chunk)}", fields)
        return rows

    def _count(self, expression: str) -> int:
        rows = self._query(expression, ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def _count_by_scan(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._call("scan"):
            iterator = self._client.query_iterator(
                self.config.collection,
                batch_size=MAX_TOPK,
                output_fields=["modality"],
                timeout=_seconds(self.config),
                **self._consistency(),
            )
            try:
                while batch := iterator.next():
                    for row in batch:
                        counts[row["modality"]] = counts.get(row["modality"], 0) + 1
            finally:
                iterator.close()
        return counts

    def _query(self, expression: str, fields: list[str]) -> list[dict[str, Any]]:
        with self._call("query"):
            return list(
                self._client.query(
                    self.config.collection,
                    filter=expression,
                    output_fields=fields,
                    timeout=_seconds(self.config),
                    **self._consistency(),
                )
            )

    @contextmanager
    def _call(self, what: str) -> Iterator[None]:
        with _unavailable(f"Milvus at {self.config.uri}: {what} on {self.config.collection!r}"):
            yield


@contextmanager
def _unavailable(what: str) -> Iterator[None]:
    """Turn the client's connection, timeout and server errors into BackendUnavailable."""
    from pymilvus.exceptions import MilvusException

    try:
        yield
    except (MilvusException, TimeoutError, ConnectionError, OSError) as exc:
        raise BackendUnavailable(f"{what}: {exc}") from exc
    except Exception as exc:
        # grpc raises its own RpcError types (not importable without grpc) on a lost channel.
        if type(exc).__module__.startswith("grpc"):
            raise BackendUnavailable(f"{what}: {exc}") from exc
        raise


def _create(client: Any, config: MilvusConfig, bits: int) -> bool:
    """Create the collection and its index; False if another replica created it first."""
    from pymilvus import DataType, MilvusClient
    from pymilvus.exceptions import MilvusException

    schema = MilvusClient.create_schema(
        auto_id=False,
        enable_dynamic_field=False,
        description=json.dumps({"kind": _MARK, "bits": bits, "model": config.model}),
    )
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("code", DataType.BINARY_VECTOR, dim=bits)
    schema.add_field("modality", DataType.VARCHAR, max_length=32)
    schema.add_field("client_id", DataType.VARCHAR, max_length=4 * MAX_CLIENT_ID_CHARS)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("match", DataType.JSON)
    schema.add_field("created_at", DataType.DOUBLE)
    schema.add_field("thumbnail", DataType.VARCHAR, max_length=THUMBNAIL_CHARS)
    index = client.prepare_index_params()
    extra = {"nlist": config.nlist} if config.index_kind == "BIN_IVF_FLAT" else {}
    # milvus-lite's default binary metric is JACCARD: HAMMING is always said explicitly.
    index.add_index("code", index_type=config.index_kind, metric_type="HAMMING", params=extra)
    try:
        client.create_collection(
            config.collection,
            schema=schema,
            index_params=index,
            consistency_level=_STRONG,
            timeout=_load_timeout(config),
        )
    except MilvusException:
        if client.has_collection(config.collection, timeout=_seconds(config)):
            return False
        raise
    log.info(
        "created Milvus collection %r (%d bits, %s)", config.collection, bits, config.index_kind
    )
    return True


def _seconds(config: MilvusConfig) -> int:
    # pymilvus bounds its retries by a timeout only if it is an int: a float is ignored, and
    # it then retries a lost server 75 times with back-off up to 60 s (about an hour).
    return max(1, math.ceil(config.timeout_s))


def _load_timeout(config: MilvusConfig) -> int:
    # Loading a collection into the query nodes takes seconds even when it is small.
    return max(_seconds(config), int(LOAD_TIMEOUT_S))


def _check_schema(client: Any, config: MilvusConfig, bits: int) -> None:
    info = client.describe_collection(config.collection, timeout=_seconds(config))
    try:
        mark = json.loads(info.get("description") or "{}")
    except ValueError:
        mark = {}
    if not isinstance(mark, dict) or mark.get("kind") != _MARK:
        raise CollectionMismatch(
            f"Milvus collection {config.collection!r} at {config.uri} was not made by hashbridge; "
            "name another one (HASHBRIDGE_MILVUS_COLLECTION)"
        )
    if mark.get("bits") != bits:
        raise BitsMismatchError(
            f"Milvus collection {config.collection!r} holds {mark.get('bits')}-bit codes but was "
            f"opened with bits={bits}; use a bundle of that width or another collection"
        )
    index = client.describe_index(config.collection, "code", timeout=_seconds(config)) or {}
    kind, nlist = index.get("index_type"), index.get("nlist")
    if kind != config.index_kind or (
        kind == "BIN_IVF_FLAT" and nlist is not None and int(nlist) != config.nlist
    ):
        found = f"{kind}" + (f" with nlist {nlist}" if kind == "BIN_IVF_FLAT" else "")
        wanted = config.index_kind + (
            f" with nlist {config.nlist}" if config.index_kind == "BIN_IVF_FLAT" else ""
        )
        raise IndexKindMismatch(
            f"Milvus collection {config.collection!r} at {config.uri} is indexed {found}, not "
            f"{wanted}: set HASHBRIDGE_MILVUS_INDEX (and HASHBRIDGE_MILVUS_NLIST) to match it, "
            "or name another collection (HASHBRIDGE_MILVUS_COLLECTION)"
        )
    if config.model and mark.get("model") and mark["model"] != config.model:
        raise CollectionMismatch(
            f"Milvus collection {config.collection!r} holds codes of another model "
            f"(fingerprint {str(mark['model'])[:12]}, not {config.model[:12]}); codes of "
            "different models are not comparable: name another collection and re-ingest"
        )


def _client_id_key(client_id: str) -> int:
    digest = hashlib.sha256(b"hashbridge client id\0" + client_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % ((1 << _ID_BITS) - 1) + 1


def _random_id() -> int:
    return secrets.randbelow((1 << _ID_BITS) - 1) + 1


def _code_bytes(value: Any) -> bytes:
    # Query results hold a binary vector as a one-element list of bytes.
    return bytes(value[0] if isinstance(value, list) else value)


def _thumbnail_text(item_id: int, thumbnail: bytes | None) -> str:
    if thumbnail is None:
        return ""
    text = base64.b64encode(thumbnail).decode("ascii")
    if len(text) > THUMBNAIL_CHARS:
        log.warning(
            "thumbnail of item %d is %d bytes, more than a Milvus VARCHAR holds in base64; "
            "not stored (lower HASHBRIDGE_THUMBNAIL_SIZE)",
            item_id,
            len(thumbnail),
        )
        return ""
    return text
