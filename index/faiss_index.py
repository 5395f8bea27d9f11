"""FAISS-backed Hamming index (flat, IVF, or auto-switching); the only module importing faiss.

Results match ``NumpyHammingIndex`` exactly for the flat kind and for IVF probed
with ``nprobe >= nlist``: FAISS candidates are re-ranked by (distance, insertion
sequence), widening the candidate set until the k-th distance's tie group is
complete (see ``index.ranking``).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self

import faiss
import numpy as np
import numpy.typing as npt

from index.base import PathLike, SearchResult, check_ids, check_k, empty_result
from index.codes import check_bits, validate_codes
from index.errors import IndexFileError
from index.fileio import check_header, read_container, write_container
from index.ranking import top_k_by_sequence

log = logging.getLogger(__name__)

Kind = Literal["flat", "ivf", "auto"]
KINDS: tuple[str, ...] = ("flat", "ivf", "auto")

# FAISS k-means wants ~39 points per centroid; fewer gives degenerate lists.
_MIN_POINTS_PER_LIST = 39
_MAX_NLIST = 65536
# GPU k-selection is limited (2048 in current FAISS); wider searches fall back to CPU.
_GPU_MAX_K = 1024


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

    ``kind="flat"``: ``IndexBinaryIDMap2(IndexBinaryFlat)``, exact.
    ``kind="ivf"``: ``IndexBinaryIVF`` holding the external ids itself, trained once
    39 items exist (flat before) and retrained on all stored codes whenever the
    collection doubles since the last training.
    ``kind="auto"``: flat below ``ivf_threshold`` items, IVF once it grows past.
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
        self._index: Any = self._new_flat()
        self._trained_n = 0  # items at the last IVF training; 0 while flat
        self._seq: dict[int, int] = {}
        self._next_seq = 0
        self._gpu_lock = threading.Lock()
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
    def nlist(self) -> int:
        """Number of IVF lists (1 while flat)."""
        return int(self._index.nlist) if self.is_ivf else 1

    def __len__(self) -> int:
        return len(self._seq)

    def add(self, ids: npt.ArrayLike, codes: npt.ArrayLike) -> None:
        """Insert items; an id already present is removed first (update)."""
        packed = validate_codes(codes, self._bits)
        new_ids = check_ids(ids, packed.shape[0])
        if not new_ids.size:
            return
        self.remove(new_ids)
        self._index.add_with_ids(packed, new_ids)
        for i in new_ids.tolist():
            self._seq[i] = self._next_seq
            self._next_seq += 1
        self._gpu = None
        self._maybe_rebuild()

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove items by id; unknown ids are ignored. Return how many were removed."""
        present = [i for i in check_ids(ids, unique=False).tolist() if i in self._seq]
        present = list(dict.fromkeys(present))
        if not present:
            return 0
        self._index.remove_ids(faiss.IDSelectorBatch(np.array(present, dtype=np.int64)))
        for i in present:
            del self._seq[i]
        self._gpu = None
        return len(present)

    def search(self, codes: npt.ArrayLike, k: int, nprobe: int | None = None) -> SearchResult:
        """Return the k nearest items per query; nprobe applies to IVF only."""
        queries = validate_codes(codes, self._bits)
        k = check_k(k)
        n = len(self)
        if n == 0:
            return empty_result(queries.shape[0], k)
        params = None
        if self.is_ivf:
            params = faiss.SearchParametersIVF()
            params.nprobe = max(1, min(nprobe or self.default_nprobe, self.nlist))

        def candidates(
            rows: npt.NDArray[np.intp], kk: int
        ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
            if self._gpu_res is not None and params is None and kk <= _GPU_MAX_K:
                return self._gpu_search(queries[rows], kk)
            dist, ids = self._index.search(queries[rows], kk, params=params)
            return dist, ids

        return top_k_by_sequence(candidates, queries.shape[0], n, k, self._seq_of)

    def save(self, path: PathLike, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write the FAISS index and insertion sequences atomically."""
        ids = np.fromiter(self._seq.keys(), dtype=np.int64, count=len(self._seq))
        seqs = np.fromiter(self._seq.values(), dtype=np.int64, count=len(self._seq))
        header = {
            "format": 1,
            "backend": self.backend,
            "bits": self._bits,
            "kind": self.kind,
            "count": len(self),
            "trained_n": self._trained_n,
            "next_seq": self._next_seq,
            "ivf_threshold": self.ivf_threshold,
            "default_nprobe": self.default_nprobe,
            "extra": dict(extra or {}),
        }
        blob = faiss.serialize_index_binary(self._index).tobytes()
        write_container(path, header, [blob, ids.tobytes(), seqs.tobytes()])

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
            index = cls(
                file_bits,
                header["kind"],
                ivf_threshold=ivf_threshold or header["ivf_threshold"],
                default_nprobe=default_nprobe or header["default_nprobe"],
                use_gpu=use_gpu,
            )
            raw, ids_blob, seq_blob = blobs
            index._index = faiss.deserialize_index_binary(np.frombuffer(raw, dtype=np.uint8))
            index._trained_n = int(header["trained_n"])
            index._next_seq = int(header["next_seq"])
            ids = np.frombuffer(ids_blob, dtype=np.int64)
            seqs = np.frombuffer(seq_blob, dtype=np.int64)
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise IndexFileError(f"{path} is not a valid FAISS index file: {exc}") from None
        index._seq = dict(zip(ids.tolist(), seqs.tolist(), strict=True))
        if index._index.d != file_bits or index._index.ntotal != len(index._seq):
            raise IndexFileError(f"{path} FAISS payload disagrees with its header")
        return index

    def _seq_of(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        seq = self._seq
        flat = np.fromiter((seq.get(i, -1) for i in ids.ravel().tolist()), np.int64, ids.size)
        return flat.reshape(ids.shape)

    def _new_flat(self) -> Any:
        return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(self._bits))

    def _maybe_rebuild(self) -> None:
        n = len(self)
        want_ivf = self.kind == "ivf" or (self.kind == "auto" and n >= self.ivf_threshold)
        # Below ~39 items k-means cannot train even one list; flat is exact meanwhile.
        if want_ivf and n >= _MIN_POINTS_PER_LIST and n >= 2 * self._trained_n:
            self._train_ivf()

    def _train_ivf(self) -> None:
        ids, codes = self._export()
        nlist = choose_nlist(len(ids))
        log.info("training binary IVF: %d items, nlist=%d", len(ids), nlist)
        quantizer = faiss.IndexBinaryFlat(self._bits)
        # IVF stores external ids in its lists. Wrapping it in IndexBinaryIDMap2
        # corrupts the id map on remove_ids (IVF does not renumber), so it is used bare.
        ivf = faiss.IndexBinaryIVF(quantizer, self._bits, nlist)
        ivf.train(codes)
        ivf.add_with_ids(codes, ids)
        self._index = ivf
        self._trained_n = len(ids)
        self._gpu = None

    def _export(self) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
        """Return all (ids, codes) in insertion order, read back from FAISS."""
        width = self._bits // 8
        if not self.is_ivf:
            ids = faiss.vector_to_array(self._index.id_map).astype(np.int64)
            inner = faiss.downcast_IndexBinary(self._index.index)
            codes = inner.reconstruct_n(0, inner.ntotal).reshape(-1, width)
        else:
            invlists = self._index.invlists
            id_parts, code_parts = [], []
            for lst in range(invlists.nlist):
                size = invlists.list_size(lst)
                if size:
                    id_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
                    raw = faiss.rev_swig_ptr(invlists.get_codes(lst), size * width)
                    code_parts.append(raw.copy().reshape(size, width))
            ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.int64)
            codes = np.concatenate(code_parts) if code_parts else np.empty((0, width), np.uint8)
        order = np.argsort(self._seq_of(ids), kind="stable")
        return ids[order], np.ascontiguousarray(codes[order], dtype=np.uint8)

    @staticmethod
    def _gpu_resources() -> Any:
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            log.warning("use_gpu=True but this FAISS build sees no GPU; searching on CPU")
            return None
        return faiss.StandardGpuResources()

    def _gpu_search(
        self, queries: npt.NDArray[np.uint8], kk: int
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        # GpuIndexBinaryFlat has no ids or removal, so a read-only mirror of the CPU
        # flat index is rebuilt lazily after writes; its labels are flat positions.
        with self._gpu_lock:
            if self._gpu is None:
                flat: Any = faiss.downcast_IndexBinary(self._index.index)
                mirror = faiss.GpuIndexBinaryFlat(self._gpu_res, flat)
                self._gpu = (mirror, faiss.vector_to_array(self._index.id_map).astype(np.int64))
            mirror, id_map = self._gpu
        dist, pos = mirror.search(queries, kk)
        return dist, np.where(pos >= 0, id_map[np.maximum(pos, 0)], -1)
