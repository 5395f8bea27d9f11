"""What the lifespan builds and every request shares: bundle, collection, pool, batchers."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch

from bundle.fileio import write_bytes
from index.backend import CollectionBackend
from index.collection import STORE_FILE
from index.errors import (
    BackendUnavailable,
    BitsMismatchError,
    CollectionMismatch,
    IndexKindMismatch,
)
from index.factory import IndexConfig
from index.faiss_index import set_num_threads
from index.milvus_collection import MilvusConfig
from index.opening import open_backend
from index.store import CodeStore
from service.batcher import MicroBatcher
from service.encoders import Bundle, load_bundle
from service.errors import BundleError, DataDirError, IndexBackendError
from service.metrics import Metrics
from service.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
BUNDLE_RECORD = "bundle.json"
#: Past snapshot_every, snapshots come after writes of 1/SNAPSHOT_GROWTH of the collection.
SNAPSHOT_GROWTH = 10


@dataclass
class Runtime:
    """Loaded state of a running service."""

    settings: Settings
    bundle: Bundle
    collection: CollectionBackend
    pool: ThreadPoolExecutor
    metrics: Metrics
    batchers: dict[str, MicroBatcher]
    #: Decodes and image/clip encodes, at a lower CPU priority than ``pool`` (see open_runtime).
    media_pool: ThreadPoolExecutor
    _writes_since_snapshot: int = 0
    _items_at_snapshot: int = 0
    _snapshot_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _background: set[asyncio.Task[None]] = field(default_factory=set)

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run CPU-heavy or blocking work in the bounded pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, partial(fn, *args, **kwargs))

    async def run_media(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a decode (or other per-upload pixel work) in the media pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.media_pool, partial(fn, *args, **kwargs))

    def wrote(self, n: int) -> None:
        """Count writes; snapshot in the background once enough accumulate.

        Enough is ``snapshot_every`` or a tenth of the collection at the last snapshot,
        whichever is more: a snapshot rewrites the whole index (17 ms at 10^6 x 64 bits:
        save_ms in bench/results/search-1e6-64.json) while holding off writers, so a
        fixed cadence would make bulk loading quadratic.
        """
        self._writes_since_snapshot += n
        due = max(self.settings.snapshot_every, self._items_at_snapshot // SNAPSHOT_GROWTH)
        if self._writes_since_snapshot >= due:
            self._writes_since_snapshot = 0
            task = asyncio.get_running_loop().create_task(self.snapshot())
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def snapshot(self) -> None:
        """Save index snapshots (one at a time); a failure is logged, the store stays the truth."""
        async with self._snapshot_lock:
            try:
                self._items_at_snapshot = await self.run(self._snapshot_and_count)
            except Exception:
                log.exception("index snapshot failed; the next start-up rebuilds from the store")

    def _snapshot_and_count(self) -> int:
        self.collection.snapshot()
        return len(self.collection)

    async def close(self) -> None:
        """Stop batchers, wait for snapshots, snapshot once more and close the collection."""
        for batcher in self.batchers.values():
            await batcher.stop()
        if self._background:
            await asyncio.gather(*self._background)
        await self.snapshot()
        await self.run(self.collection.close)
        self.pool.shutdown(wait=True)
        self.media_pool.shutdown(wait=True)


async def open_runtime(settings: Settings, bundle: Bundle | None, metrics: Metrics) -> Runtime:
    """Load the bundle (unless given), open the collection and start the batchers.

    Two pools: searches, texts, reads and writes in ``pool``; decoding uploads and
    encoding images and clips in ``media_pool``, whose threads run at a higher niceness.
    A request of forty huge PNGs then keeps the media threads busy while a search still
    gets a thread at once (separate pools) and most of the CPU when it needs it (the
    kernel favours the less nice thread), instead of queueing behind the decodes.
    """
    threads = threads_per_worker(settings)
    pool = ThreadPoolExecutor(
        max_workers=settings.workers,
        thread_name_prefix="hashbridge",
        initializer=configure_worker_thread,
        initargs=(threads,),
    )
    media_pool = ThreadPoolExecutor(
        max_workers=settings.media_workers,
        thread_name_prefix="hashbridge-media",
        initializer=configure_worker_thread,
        initargs=(threads, settings.media_nice),
    )
    loop = asyncio.get_running_loop()
    try:
        if bundle is None:
            bundle = await loop.run_in_executor(pool, load_bundle, settings.bundle_dir)
        # serve() ran this before binding the port; an app started otherwise needs it here.
        await loop.run_in_executor(
            pool, partial(check_data_dir, settings.data_dir, bundle, settings.index_backend)
        )
        collection = await loop.run_in_executor(pool, open_collection, settings, bundle)
    except BaseException:
        pool.shutdown(wait=False)
        media_pool.shutdown(wait=False)
        raise
    log.info("collection %s opened: %s", settings.data_dir, collection.open_report)
    batchers = {
        modality: MicroBatcher(
            encoder,
            pool if modality == "text" else media_pool,
            max_items=(
                settings.text_batch_max_items if modality == "text" else settings.batch_max_items
            ),
            window_s=settings.batch_window_ms / 1000,
            observe=metrics.observe_encode,
            collate=bundle.inputs[modality].collate,
        )
        for modality, encoder in bundle.encoders.items()
    }
    for batcher in batchers.values():
        batcher.start()
    # The snapshot cadence scales with the collection as opened, not from zero after a restart.
    return Runtime(
        settings,
        bundle,
        collection,
        pool,
        metrics,
        batchers,
        media_pool,
        _items_at_snapshot=len(collection),
    )


def open_collection(settings: Settings, bundle: Bundle) -> CollectionBackend:
    """Open the configured backend's collection; say at start-up what could not be reached."""
    config: IndexConfig | MilvusConfig
    if settings.index_backend == "milvus":
        token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        config = MilvusConfig(
            uri=settings.milvus_uri,
            collection=settings.milvus_collection,
            index_kind=settings.milvus_index,
            nlist=settings.milvus_nlist,
            default_nprobe=settings.default_nprobe,
            timeout_s=settings.milvus_timeout_s,
            token=token,
            modalities=tuple(bundle.modalities),
            model=bundle.fingerprint,
        )
    else:
        config = IndexConfig(
            kind=settings.index_kind,
            ivf_threshold=settings.ivf_threshold,
            default_nprobe=settings.default_nprobe,
            use_gpu=settings.index_gpu,
        )
    try:
        return open_backend(settings.data_dir, bundle.bits, config)
    except BackendUnavailable as exc:
        raise IndexBackendError(
            f"cannot reach the index backend: {exc}; start Milvus or fix HASHBRIDGE_MILVUS_URI "
            f"(waited {settings.milvus_timeout_s:g} s, HASHBRIDGE_MILVUS_TIMEOUT_S)"
        ) from None
    except IndexKindMismatch as exc:
        raise IndexBackendError(f"the index settings do not fit the collection: {exc}") from None
    except (BitsMismatchError, CollectionMismatch) as exc:
        if settings.index_backend != "milvus":
            raise
        raise BundleError(f"bundle {bundle.path} does not fit the collection: {exc}") from None


def threads_per_worker(settings: Settings) -> int:
    """CPU threads of each encoder or search call: the setting, or usable CPUs / workers.

    Up to ``workers`` calls run at once; if each also spread over every CPU, their threads
    would outnumber the cores and wait on one another at every step (text encoding ran
    about 5x slower beside one busy core with two threads per call instead of one).
    """
    return settings.worker_threads or max(1, len(os.sched_getaffinity(0)) // settings.workers)


def configure_worker_thread(threads: int, nice: int = 0) -> None:
    """Set one pool thread's OpenMP thread count (torch and FAISS alike) and its niceness.

    OpenMP counts are per thread (set in the event loop's thread they never reached the
    pool), and torch and FAISS share the one OpenMP runtime, so they get the same count.
    Linux keeps a niceness per thread, and threads this one starts (OpenMP's) inherit it.
    """
    torch.set_num_threads(threads)
    set_num_threads(threads)
    if nice:
        try:
            me = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, me, min(19, os.getpriority(os.PRIO_PROCESS, me) + nice))
        except OSError as exc:  # not Linux, or a sandbox that forbids it: pools still split
            log.warning("could not lower the media threads' priority: %s", exc)


def check_data_dir(data_dir: Path, bundle: Bundle, backend: str = "faiss") -> None:
    """Refuse, with one clear message, a data dir the service could not open at start-up.

    Opening the store is cheap (no index is rebuilt), so this runs before the port is
    bound; otherwise a broken store would surface as a failed uvicorn start-up. With the
    Milvus backend the data dir holds only the bundle record (the items are in Milvus).
    """
    store_path = data_dir / STORE_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        if backend == "faiss":
            CodeStore(store_path, bundle.bits).close()
    except BitsMismatchError as exc:
        raise BundleError(f"bundle {bundle.path} does not fit the data dir: {exc}") from None
    except (OSError, sqlite3.Error) as exc:
        raise DataDirError(
            f"cannot open the collection in {data_dir} ({store_path.name}): {exc}; the data "
            "dir must be a writable folder whose store is an intact SQLite file"
        ) from None
    check_bundle_record(data_dir, bundle)


def check_bundle_record(data_dir: Path, bundle: Bundle) -> None:
    """Refuse a data dir whose codes came from a different model; record the model if new.

    Codes of two models are not comparable, so serving a collection with another
    bundle would return meaningless neighbours instead of failing.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / BUNDLE_RECORD
    record = {"fingerprint": bundle.fingerprint, "method": bundle.method, "bits": bundle.bits}
    if path.exists():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            stored = exc
        if not isinstance(stored, dict):
            raise DataDirError(
                f"{path} is unreadable ({stored}); it records which bundle made the codes "
                "in this data dir: restore it, or use a new data dir and re-ingest"
            )
        if stored.get("fingerprint") != bundle.fingerprint:
            raise BundleError(
                f"data dir {data_dir} holds codes from another bundle "
                f"({stored.get('method')}, {stored.get('bits')} bits, fingerprint "
                f"{str(stored.get('fingerprint'))[:12]}) than {bundle.path} ({bundle.method}, "
                f"{bundle.bits} bits, fingerprint {bundle.fingerprint[:12]}); codes of different "
                "models are not comparable: use a new data dir and re-ingest"
            )
        return
    write_bytes(path, json.dumps(record, indent=2).encode())
