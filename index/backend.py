"""The collection contract every storage backend meets: items, codes, metadata, search.

A backend owns its persistence. The local one (``index.collection.Collection``) keeps
SQLite as the truth and in-process FAISS or NumPy indexes with snapshot files; the Milvus
one (``index.milvus_collection.MilvusCollection``) keeps codes, metadata and thumbnails in
a Milvus collection that several service processes share. The service sees only this.

Ranking: hits are ordered by Hamming distance; ``tie_order`` says how equal distances
fall, and a backend keeps to it exactly, also across the k-th result:

- ``"write"``: per modality in the order the items were last written (an update moves an
  item to the end), then modalities merged by distance in the order they were asked for
  (default: sorted names). The local backend.
- ``"id"``: by item id, across modalities. The Milvus backend: a distributed engine has no
  single write order, and its own order among equal distances is arbitrary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, runtime_checkable

import numpy.typing as npt

from index.base import SearchParams
from index.rerank import MAX_POOL, Ranking
from index.store import NewItem, StoredItem

if TYPE_CHECKING:
    from index.factory import IndexConfig
    from index.milvus_collection import MilvusConfig

    #: The local backend's IndexConfig, or a MilvusConfig.
    BackendConfig: TypeAlias = IndexConfig | MilvusConfig

TieOrder = Literal["write", "id"]


@dataclass(frozen=True)
class Hit:
    """One search hit."""

    id: int
    distance: int
    modality: str
    #: The asymmetric score -<q, b> (lower is nearer) when the search re-ranked by it.
    score: float | None = None


@runtime_checkable
class CollectionBackend(Protocol):
    """Items with a code per modality, searchable by Hamming distance, filterable by metadata.

    Writes are durable once they return, and visible to the next search made through any
    process on the same backend. ``where`` keeps items whose metadata has every key with
    exactly that JSON value (1, 1.0 and true differ; see ``index.filters``).
    """

    #: How each part was obtained at open (e.g. a snapshot "loaded", or why it was rebuilt).
    open_report: dict[str, str]
    tie_order: TieOrder

    @property
    def bits(self) -> int:
        """Code width in bits."""
        ...

    def __len__(self) -> int: ...

    def upsert(self, items: Sequence[NewItem]) -> list[int]:
        """Insert items, replacing those whose client_id exists (keeping its id); their ids."""
        ...

    def delete(self, ids: Sequence[int]) -> int:
        """Delete items by id; return how many existed."""
        ...

    def get(self, item_id: int) -> StoredItem | None:
        """One stored item, or None."""
        ...

    def get_many(self, ids: Sequence[int]) -> dict[int, StoredItem]:
        """The items that exist among ids, keyed by id."""
        ...

    def lookup_client_ids(self, client_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
        """(id, modality) of the stored items among client_ids, keyed by client id."""
        ...

    def thumbnail(self, item_id: int) -> bytes | None:
        """An item's thumbnail bytes, or None when it has none (or does not exist)."""
        ...

    def search(
        self,
        codes: npt.ArrayLike,
        k: int,
        *,
        modalities: Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
        params: SearchParams | None = None,
    ) -> list[list[Hit]]:
        """Up to k hits per query, nearest first, ties as ``tie_order`` says."""
        ...

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
        """Like ``search``, for queries given as real-valued codes (nq, bits): ``ranking``
        "hamming" is ``search``; the others re-rank its nearest items by the asymmetric score
        (``index.rerank``), equal scores falling as equal distances do (``tie_order``)."""
        ...

    def reading(self) -> AbstractContextManager[None]:
        """A block whose reads (a search, then the lookup of its hits) share one view of the
        writes, so a backend that waits for consistency waits once per block, not per read."""
        ...

    def stats(self) -> dict[str, Any]:
        """count, by_modality, index_sizes, bits, seq (a write counter; 0 where none)."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """Persist what a restart would otherwise rebuild (nothing where writes are the truth)."""
        ...

    def close(self) -> None:
        """Release the backend's resources."""
        ...
