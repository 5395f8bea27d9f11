"""Open the configured collection backend: local (SQLite + FAISS under a data dir) or Milvus.

Apart from index.backend (the contract) so the backends can import the contract's types
without an import cycle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from index.base import PathLike

if TYPE_CHECKING:
    from index.backend import BackendConfig, CollectionBackend


def open_backend(data_dir: PathLike, bits: int, config: BackendConfig) -> CollectionBackend:
    """Open the collection of the configured backend (local under data_dir, or Milvus)."""
    from index.milvus_collection import MilvusCollection, MilvusConfig

    if isinstance(config, MilvusConfig):
        return MilvusCollection.open(bits, config)
    from index.collection import Collection

    return Collection.open(data_dir, bits, config)
