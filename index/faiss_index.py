"""FAISS-backed Hamming index (flat, IVF, or auto-switching); the only module importing faiss.

Results match ``NumpyHammingIndex`` exactly for the flat kind and for IVF probed
with ``nprobe >= nlist``. On the CPU, ``IndexBinaryFlat`` already returns the top k
in (distance, slot) order: it scans slots in ascending order per query and its heap
admits an item only when strictly nearer, evicting the largest (distance, slot) first
(``tests/index/test_index_backends.py`` holds it to the reference on tie-heavy codes), so
its answer is used as is. IVF (lists scanned out of slot order) and the GPU mirror
break ties their own way: their candidates are re-ranked by (distance, insertion
sequence), widening the candidate set until the k-th distance's tie group is
complete (see ``index.ranking``).

FAISS addresses items by slot, handed out in insertion order (so a slot is also the
insertion sequence that ranks ties); ``IdRuns`` maps slots to ids in a few bytes.
The flat index stores nothing but the codes: a removed item's slot is masked out of
searches and the dead slots are dropped once they make up a quarter of the index.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any, Literal, Self

import faiss
import numpy as np
import numpy.typing as npt

from index.base import PAD, PathLike, SearchParams, SearchResult, check_ids, check_k, empty_result
from index.codes import check_bits, validate_codes
from index.errors import IndexFileError
from index.fileio import check_header, read_container, write_container
from index.idruns import IdRuns
from index.ranking import top_k_by_sequence

log = logging.getLogger(__name__)

Kind = Literal["flat", "ivf", "auto"]
KINDS: tuple[str, ...] = ("flat", "ivf", "auto")

# FAISS k-means wants ~39 points per centroid; fewer gives degenerate lists.
_MIN_POINTS_PER_LIST = 39
_MAX_NLIST = 65536
# GPU k-selection is limited (2048 in current FAISS); wider searches fall back to CPU.
_GPU_MAX_K = 1024
# Dead flat slots are compacted away past this share of the index (and this count).
_DEAD_SHARE = 0.25
_MIN_DEAD_TO_COMPACT = 1024
_FORMAT = 2


def faiss_sees_a_gpu() -> bool:
    """Whether this FAISS build has GPU support and a CUDA GPU to run it on."""
    return hasattr(faiss, "StandardGpuResources") and int(faiss.get_num_gpus()) > 0


def choose_nlist(n: int) -> int:
    """Return the IVF list count for n items: about 4*sqrt(n), bounded by training size."""
    return max(1, min(round(4 * math.sqrt(n)), n // _MIN_POINTS_PER_LIST, _MAX_NLIST))


def set_num_threads(n: int) -> int:
    """Set FAISS's process-wide OpenMP thread count; return the previous value.

    When searches already run in a thread pool, or the CPU is shared, OpenMP's
    spinning barriers oversubscribe the cores and slow FAISS down many times over;
    one thread per call is then the better choice.
    """
    previous = int(faiss.omp_get_max_threads())
    faiss.omp_set_num_threads(max(1, n))
    return previous


class FaissHammingIndex:
    """Hamming index over FAISS binary indexes.

    ``kind="flat"``: ``IndexBinaryFlat``, exact; 8 bytes per 64-bit item plus the id runs.
    ``kind="ivf"``: ``IndexBinaryIVF`` whose list entries carry slots, trained once
    39 items exist (flat before) and retrained on all stored codes whenever the
    collection doubles, or shrinks below a quarter, since the last training.
    ``kind="auto"``: flat below ``ivf_threshold`` items, IVF once it grows past (and
    flat again once it shrinks below a quarter of its size at the last training).
    ``nprobe`` is passed per query through ``SearchParametersIVF``, so concurrent
    searches never mutate shared state. Writes must not overlap any other call.
    """

    backend = "faiss"

    def __init__(
        self,
        bits: int,
        kind: Kind = "auto",
        *,
        ivf_threshold: int = 100_000,
        default_nprobe: int = 16,
        use_gpu: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if ivf_threshold < 1 or default_nprobe < 1:
            raise ValueError("ivf_threshold and default_nprobe must be positive")
        self._bits = check_bits(bits)
        self.kind: Kind = kind
        self.ivf_threshold = ivf_threshold
        self.default_nprobe = default_nprobe
        self._index: Any = faiss.IndexBinaryFlat(self._bits)
        self._runs = IdRuns()
        self._alive: npt.NDArray[np.uint8] | None = None  # flat slot bitmap while any is dead
        self._trained_n = 0  # items at the last IVF training; 0 while flat
        self._gpu_lock = threading.Lock()
        self._nprobe_lock = threading.Lock()
        self._gpu: tuple[Any, npt.NDArray[np.int64]] | None = None
        self._gpu_res: Any = self._gpu_resources() if use_gpu else None
        self._maybe_rebuild()

    @property
    def bits(self) -> int:
        """Code width in bits."""
        return self._bits

    @property
    def is_ivf(self) -> bool:
        """Whether the current structure is an IVF index."""
        return self._trained_n > 0

    @property
    def uses_gpu(self) -> bool:
        """Whether flat searches run on a GPU (faiss-gpu found one)."""
        return self._gpu_res is not None

    @property
    def nlist(self) -> int:
        """Number of IVF lists (1 while flat)."""
        return int(self._index.nlist) if self.is_ivf else 1

    def __len__(self) -> int:
        return len(self._runs)

    def memory_bytes(self) -> int:
        """Bytes held for the items: FAISS's codes (and IVF's slot ids), id runs, slot mask."""
        held = int(self._index.ntotal) * (self._bits // 8)
        if self.is_ivf:
            held += int(self._index.ntotal) * 8 + int(self._index.nlist) * (self._bits // 8)
        mask = self._alive.nbytes if self._alive is not None else 0
        return held + self._runs.nbytes + mask

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike) -> None:
        """Insert items; an id already present is removed first (update)."""
        packed = validate_codes(codes, self._bits)
        new_ids = check_ids(ids, packed.shape[0])
        if not new_ids.size:
            return
        self.remove(new_ids)
        slots = self._runs.append(new_ids)
        if self.is_ivf:
            self._index.add_with_ids(packed, slots)
        else:
            self._index.add(packed)
            self._update_mask()
        self._gpu = None
        self._maybe_rebuild()

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove items by id; unknown ids are ignored. Return how many were removed."""
        slots = self._runs.slots_of(np.unique(check_ids(ids, unique=False)))
        slots = slots[slots >= 0]
        if not slots.size:
            return 0
        self._runs.remove_slots(slots)
        if self.is_ivf:
            self._index.remove_ids(faiss.IDSelectorBatch(slots))
            self._maybe_rebuild()
        elif self._dead_slots() > max(_MIN_DEAD_TO_COMPACT, _DEAD_SHARE * self._index.ntotal):
            self._compact()
        else:
            self._update_mask()
        self._gpu = None
        return int(slots.size)

    def search(
        self, codes: npt.ArrayLike, k: int, params: SearchParams | None = None
    ) -> SearchResult:
        """Return the k nearest items per query; params.nprobe applies to IVF only."""
        nprobe = params.nprobe if params is not None else None
        queries = validate_codes(codes, self._bits)
        k = check_k(k)
        n = len(self)
        if n == 0:
            return empty_result(queries.shape[0], k)
        faiss_params = self._faiss_params(nprobe)
        if not self.is_ivf and self._gpu_res is None:
            return self._flat_search(queries, k, faiss_params)

        def candidates(
            rows: npt.NDArray[np.intp], kk: int
        ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
            if self._gpu_res is not None and not self.is_ivf and kk <= _GPU_MAX_K:
                return self._gpu_search(queries[rows], kk)
            dist, slots = self._index.search(queries[rows], kk, params=faiss_params)
            return dist, slots

        # Slots are insertion sequences, so they rank ties directly.
        found = top_k_by_sequence(candidates, queries.shape[0], n, k, lambda slots: slots)
        return SearchResult(ids=self._runs.ids_of(found.ids), distances=found.distances)

    def nearest_with_codes(
        self, query: npt.NDArray[np.uint8], k: int, params: SearchParams | None = None
    ) -> (
        tuple[
            npt.NDArray[np.int64],
            npt.NDArray[np.int32],
            npt.NDArray[np.uint8],
            npt.NDArray[np.int64],
        ]
        | None
    ):
        """One query's k nearest (ids, distances, codes, slots), in any order among ties.

        The codes are read back with the search (FAISS's search_and_reconstruct), so a
        re-ranking pool needs no store lookups; slots are insertion order, the tie rule.
        None on the GPU path (the caller reads the codes elsewhere).
        """
        if self._gpu_res is not None:
            return None
        queries = validate_codes(query[None, :], self._bits)
        k = min(check_k(k), len(self))
        nprobe = params.nprobe if params is not None else None
        width = self._bits // 8
        if k == 0:
            return (
                np.empty(0, np.int64),
                np.empty(0, np.int32),
                np.empty((0, width), np.uint8),
                np.empty(0, np.int64),
            )
        dist = np.empty((1, k), np.int32)
        slots = np.empty((1, k), np.int64)
        codes = np.empty((1, k, width), np.uint8)
        # The binary indexes' Python wrapper lacks the array form: the C++ signature.
        call = partial(
            self._index.search_and_reconstruct,
            1,
            faiss.swig_ptr(queries),
            k,
            faiss.swig_ptr(dist),
            faiss.swig_ptr(slots),
            faiss.swig_ptr(codes),
        )
        if self.is_ivf:
            # Binary IVF's search_and_reconstruct takes no parameters, only the index's own
            # nprobe: set it under a lock that only these calls take (searches pass theirs
            # as parameters, so they never read it).
            with self._nprobe_lock:
                self._index.nprobe = max(1, min(nprobe or self.default_nprobe, self.nlist))
                call(None)
        else:
            call(self._faiss_params(nprobe))
        found = slots[0] >= 0
        slots = slots[0][found]
        ids = self._runs.ids_of(slots) if self.is_ivf else self._runs.ids_of_live(slots)
        return ids, dist[0][found], codes[0][found].reshape(-1, width), slots

    def _faiss_params(self, nprobe: int | None) -> Any:
        """FAISS's per-call parameters: IVF's nprobe, or the flat index's live-slot filter."""
        if self.is_ivf:
            ivf: Any = faiss.SearchParametersIVF()
            ivf.nprobe = max(1, min(nprobe or self.default_nprobe, self.nlist))
            return ivf
        alive = self._alive
        if alive is None:
            return None
        flat: Any = faiss.SearchParameters()
        flat.sel = faiss.IDSelectorBitmap(alive.size, faiss.swig_ptr(alive))
        flat.bitmap = alive  # the selector points into it: keep it alive as long as flat
        return flat

    def _flat_search(self, queries: npt.NDArray[np.uint8], k: int, params: Any) -> SearchResult:
        """One FAISS call; its (distance, slot) order is the tie rule, so no re-ranking."""
        dist, slots = self._index.search(queries, k, params=params)
        ids = self._runs.ids_of_live(slots)  # FAISS returns live slots only (and -1 pads)
        if k > len(self):  # slots FAISS could not fill come back as -1, distance int max
            pad = slots < 0
            ids[pad], dist[pad] = PAD, PAD
        return SearchResult(ids=ids, distances=dist)

    def save(self, path: PathLike, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the FAISS index and the id runs atomically."""
        header = {
            "format": _FORMAT,
            "backend": self.backend,
            "bits": self._bits,
            "kind": self.kind,
            "count": len(self),
            "trained_n": self._trained_n,
            "ivf_threshold": self.ivf_threshold,
            "default_nprobe": self.default_nprobe,
            "extra": dict(extra or {}),
        }
        blob = faiss.serialize_index_binary(self._index).tobytes()
        write_container(path, header, [blob, self._runs.to_arrays().tobytes()])

    @classmethod
    def load(
        cls,
        path: PathLike,
        *,
        bits: int | None = None,
        ivf_threshold: int | None = None,
        default_nprobe: int | None = None,
        use_gpu: bool = False,
    ) -> Self:
        """Read an index written by ``save``; refuse it if ``bits`` disagrees."""
        header, blobs = read_container(path)
        file_bits = check_header(header, Path(path), cls.backend, bits)
        try:
            if header.get("format") != _FORMAT:
                raise ValueError(f"format {header.get('format')} is not {_FORMAT}")
            index = cls(
                file_bits,
                header["kind"],
                ivf_threshold=ivf_threshold or header["ivf_threshold"],
                default_nprobe=default_nprobe or header["default_nprobe"],
                use_gpu=use_gpu,
            )
            raw, runs_blob = blobs
            index._index = faiss.deserialize_index_binary(np.frombuffer(raw, dtype=np.uint8))
            index._trained_n = int(header["trained_n"])
            index._runs = IdRuns.from_arrays(np.frombuffer(runs_blob, dtype=np.int64))
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise IndexFileError(f"{path} is not a valid FAISS index file: {exc}") from None
        stored = len(index) if index.is_ivf else index._runs.slots
        # trained_n sits in the header, outside the checksum; it must name the payload's type.
        is_ivf_payload = isinstance(index._index, faiss.IndexBinaryIVF)
        if (
            index._index.d != file_bits
            or index._index.ntotal != stored
            or is_ivf_payload != index.is_ivf
        ):
            raise IndexFileError(f"{path} FAISS payload disagrees with its header")
        if not index.is_ivf:
            index._update_mask()
        return index

    def _dead_slots(self) -> int:
        return int(self._index.ntotal) - len(self._runs)

    def _update_mask(self) -> None:
        """Rebuild the live-slot bitmap the flat search filters by (none when all are live)."""
        if not self._dead_slots():
            self._alive = None
            return
        mask = np.zeros(int(self._index.ntotal), bool)
        mask[self._runs.live()[0]] = True
        self._alive = np.packbits(mask, bitorder="little")

    def _compact(self) -> None:
        """Drop dead flat slots: a new flat index over the live codes, same order."""
        _, codes = self._export()
        self._runs = self._runs.renumbered()
        self._index = faiss.IndexBinaryFlat(self._bits)
        self._index.add(codes)
        self._alive = None

    def _maybe_rebuild(self) -> None:
        n = len(self)
        want_ivf = self.kind == "ivf" or (self.kind == "auto" and n >= self.ivf_threshold)
        # Below ~39 items k-means cannot train even one list; flat is exact meanwhile.
        if want_ivf and n >= _MIN_POINTS_PER_LIST and n >= 2 * self._trained_n:
            self._train_ivf()
        elif self.is_ivf and 4 * n < self._trained_n:
            # Shrunk below a quarter since training: most lists are empty, so probing a
            # few finds little. Retrain for the items left, or go flat (exact) as a fresh
            # index of this size would be.
            if want_ivf and n >= _MIN_POINTS_PER_LIST:
                self._train_ivf()
            else:
                self._compact()
                self._trained_n = 0

    def _train_ivf(self) -> None:
        slots, codes = self._export()
        nlist = choose_nlist(len(slots))
        log.info("training binary IVF: %d items, nlist=%d", len(slots), nlist)
        quantizer = faiss.IndexBinaryFlat(self._bits)
        ivf = faiss.IndexBinaryIVF(quantizer, self._bits, nlist)
        ivf.train(codes)
        ivf.add_with_ids(codes, slots)
        self._index = ivf
        self._alive = None
        self._trained_n = len(slots)
        self._gpu = None

    def _export(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Return all live (slots, codes) in slot (= insertion) order, read back from FAISS."""
        width = self._bits // 8
        if not self.is_ivf:
            slots = self._runs.live()[0]
            every = self._index.reconstruct_n(0, self._index.ntotal).reshape(-1, width)
            return slots, np.ascontiguousarray(every[slots], dtype=np.uint8)
        invlists = self._index.invlists
        slot_parts, code_parts = [], []
        for lst in range(invlists.nlist):
            size = invlists.list_size(lst)
            if size:
                slot_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
                raw = faiss.rev_swig_ptr(invlists.get_codes(lst), size * width)
                code_parts.append(raw.copy().reshape(size, width))
        slots = np.concatenate(slot_parts) if slot_parts else np.empty(0, np.int64)
        codes = np.concatenate(code_parts) if code_parts else np.empty((0, width), np.uint8)
        order = np.argsort(slots, kind="stable")
        return slots[order], np.ascontiguousarray(codes[order], dtype=np.uint8)

    @staticmethod
    def _gpu_resources() -> Any:
        if not faiss_sees_a_gpu():
            log.warning("use_gpu=True but this FAISS build sees no GPU; searching on CPU")
            return None
        return faiss.StandardGpuResources()

    def _gpu_search(
        self, queries: npt.NDArray[np.uint8], kk: int
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        # GpuIndexBinaryFlat has no ids, removal or selectors, so a read-only mirror of
        # the live codes is rebuilt lazily after writes; its labels are mirror positions.
        with self._gpu_lock:
            if self._gpu is None:
                slots, codes = self._export()
                mirror = faiss.GpuIndexBinaryFlat(self._gpu_res, self._bits)
                mirror.add(codes)
                self._gpu = (mirror, slots)
            mirror, slot_of = self._gpu
        dist, pos = mirror.search(queries, kk)
        return dist, np.where(pos >= 0, slot_of[np.maximum(pos, 0)], -1)
