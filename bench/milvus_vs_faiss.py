"""The Milvus backend (embedded server) against the FAISS backend on the same codes; JSON out.

    python -m bench.milvus_vs_faiss --quick       # 2,000 codes, a few queries: a smoke test
    python -m bench.milvus_vs_faiss --out bench/results/milvus-vs-faiss.json   # 10^5 and 10^6

At each ``--sizes`` value the same seeded clustered 64-bit codes (bench.search's Gaussian
mixture, signs packed) go into four collection backends through ``index.opening.open_backend``,
as the service opens them: the local backend (SQLite + FAISS) with ``IndexConfig(kind="flat")``
and ``kind="ivf"``, and ``MilvusCollection`` with ``BIN_FLAT`` and ``BIN_IVF_FLAT`` on an
embedded Milvus 2.3 standalone server (bench.milvus_server, a fresh server per Milvus
collection so that its memory is that collection's). Each backend is measured in a fresh
spawned process: ingest (``upsert`` in batches of the service's HASHBRIDGE_MAX_BATCH_ITEMS from
--ingest-writers threads), then search with k=10: one call with 100 queries (the contract's
search takes a batch) and single-query calls, p50/p99 of each; recall@10 against exact
search; memory.

Then, at each ``--http-sizes`` value, the real service (``python -m service`` with the tiny
bundle of tests/support/service_bundle.py) is started on each backend's filled collection
(HASHBRIDGE_INDEX_BACKEND=faiss with the kind's data dir; =milvus with HASHBRIDGE_MILVUS_URI at
the embedded server) and answers searches by code with 1 and 4 concurrent clients
(bench.serving.load_test, as bench.http_search does).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeAlias

import httpx
import numpy as np
import numpy.typing as npt

from bench.common import (
    base_parser,
    command,
    emit,
    environment,
    latency_summary,
    log,
    positive_int,
    ratio,
    set_threads,
    timed,
)
from bench.milvus_server import embedded_milvus
from bench.search import make_data
from bench.serving import load_test, make_bundle
from index.backend import CollectionBackend
from index.codes import pack_signs
from index.factory import IndexConfig
from index.faiss_index import FaissHammingIndex, choose_nlist
from index.milvus_collection import MilvusCollection, MilvusConfig
from index.opening import open_backend
from index.store import NewItem
from service.settings import Settings
from tests.support.service_bundle import ServerProcess

BITS = 64
K = 10
BATCH = 100
MODALITY = "image"
_DEFAULTS = {name: f.default for name, f in Settings.model_fields.items()}
#: The service's largest ingest call: what one request's items reach the backend as.
INGEST_BATCH: int = _DEFAULTS["max_batch_items"]
NPROBE: int = _DEFAULTS["default_nprobe"]
MILVUS_NLIST: int = _DEFAULTS["milvus_nlist"]
MILVUS_KINDS = {"milvus_bin_flat": "BIN_FLAT", "milvus_bin_ivf_flat": "BIN_IVF_FLAT"}
FAISS_KINDS = {"faiss_flat": "flat", "faiss_ivf": "ivf"}
#: Which FAISS backend each Milvus one is compared with.
PAIRS = {"milvus_bin_flat": "faiss_flat", "milvus_bin_ivf_flat": "faiss_ivf"}
BackendConfig: TypeAlias = IndexConfig | MilvusConfig
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Eventually")

NOTES = {
    "data": "bench.search.make_data: 1000 Gaussian cluster centres in 64-d, noise 0.5, signs "
    "packed MSB-first; queries are fresh draws from the same mixture (seeded). Items carry "
    "no client id, no metadata and no thumbnail.",
    "ingest": "items_per_s = items / the wall seconds of backend.upsert calls of "
    "HASHBRIDGE_MAX_BATCH_ITEMS items each (the service's largest ingest call), made by "
    "ingest_writers threads at once, as that many service workers' ingest requests reach "
    "the backend; per_call is one call's latency. FAISS flat and IVF: the local Collection "
    "(SQLite commit + in-process index under one write lock, so writers queue; IVF retrains "
    "whenever the collection doubles). Milvus: MilvusCollection.upsert (an id-clash query "
    "at Strong consistency, which waits for the time tick, then the upsert), so writers "
    "overlap their waits.",
    "search": "One call of backend.search with the 100 batch queries (the contract takes a "
    "batch: one Milvus search request, one FAISS search), timed batch_calls times, and "
    "single-query calls: p50 and p99 of each. The backends are timed one after another, "
    "each in its own process, on a CPU shared with other work: load_average records it.",
    "recall": "recall@10 against exact search over the same codes (FaissHammingIndex flat): "
    "a returned item counts as a hit when its Hamming distance is <= the exact 10th-nearest "
    "distance of its query, since distance ties make id-based recall ambiguous. Exact "
    "backends must reach 1.0.",
    "memory": "FAISS: rss_growth_bytes is this backend's process RSS after ingest minus "
    "before the backend was opened (/proc/self/status VmRSS): the in-process index, id "
    "runs, SQLite's page cache and Python's allocations. Milvus: server_rss_bytes is the "
    "RSS of the embedded milvus server process (found among this process's children by "
    "name) after ingest and settling, and server_rss_growth_bytes that minus its RSS "
    "before the collection was created (a fresh server per collection); the client's "
    "process growth is client_rss_growth_bytes. disk_bytes: the local data dir, or the "
    "Milvus server's data dir.",
    "milvus_settle": "Milvus builds a collection's index only on sealed segments; a "
    "growing segment is searched by brute force. recall_as_ingested is measured right "
    "after the last upsert (as the service would see it); then the bench flushes (the "
    "service never does), waits until describe_index reports every row indexed and the "
    "query node serves only sealed segments, and measures all timings and recall_at_10 "
    "there (settle_s). segments: the query node's segments after settling.",
    "consistency": "MilvusCollection asks for Strong consistency on every search and "
    "read. consistency_single_ms: single-query search latency (p50/p99) through the same "
    "pymilvus client call the backend makes, at Strong, Bounded and Eventually, on the "
    "settled collection with no writes in flight.",
    "nlist": "FAISS IVF: nlist = index.faiss_index.choose_nlist(n) (about 4 sqrt(n)). "
    "Milvus BIN_IVF_FLAT: HASHBRIDGE_MILVUS_NLIST lists per sealed segment (Milvus "
    "indexes each segment on its own). Both searched at HASHBRIDGE_DEFAULT_NPROBE.",
    "http": "The service (python -m service, tiny bundle, HASHBRIDGE_INDEX_KIND flat or "
    "ivf, or HASHBRIDGE_MILVUS_INDEX) over loopback on the collection the in-process run "
    "filled; POST /v1/search {code, k: 10} from 1 and 4 client threads "
    "(bench.serving.load_test), the queries' codes as hex. recall_at_10 of the first "
    "100 answers as above. While the FAISS service runs, the idle Milvus server runs beside it.",
    "ratios": "milvus_over_faiss: the Milvus figure / the FAISS figure of its pair "
    "(BIN_FLAT with flat, BIN_IVF_FLAT with ivf); > 1 means Milvus is slower or larger, "
    "or (items_per_s) faster.",
}


@dataclass(frozen=True)
class Job:
    """What one backend's process measures."""

    name: str
    config: BackendConfig
    data_dir: Path
    codes_file: Path
    queries_file: Path
    batch_calls: int
    ingest_budget_s: float
    ingest_writers: int
    threads: int


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of a process from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def milvus_pid() -> int | None:
    """The embedded milvus server among this process's descendants, or None."""
    parents: dict[int, int] = {}
    names: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        parents[int(entry.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        names[int(entry.name)] = name
    me = os.getpid()

    def descends(pid: int) -> bool:
        while pid in parents and pid > 1:
            pid = parents[pid]
            if pid == me:
                return True
        return False

    found = [p for p, name in names.items() if name == "milvus" and descends(p)]
    return found[0] if len(found) == 1 else None


def disk_bytes(path: Path) -> int:
    """Bytes of the files under path."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def exact_kth(codes: npt.NDArray[np.uint8], queries: npt.NDArray[np.uint8]) -> np.ndarray:
    """Each query's exact 10th-nearest Hamming distance over codes."""
    exact = FaissHammingIndex(BITS, "flat")
    exact.add(np.arange(len(codes)), codes)
    return exact.search(queries, K).distances[:, K - 1]


def tie_aware_recall(distances: list[list[int]], kth: np.ndarray) -> float:
    """Share of the k slots per query filled with an item within the exact k-th distance."""
    hits = sum(sum(1 for d in row[:K] if d <= kth[q]) for q, row in enumerate(distances))
    return round(hits / (K * len(distances)), 4)


def _distances(backend: CollectionBackend, queries: np.ndarray) -> list[list[int]]:
    return [[h.distance for h in row] for row in backend.search(queries, K)]


def ingest(
    backend: CollectionBackend, codes: np.ndarray, budget_s: float, writers: int
) -> tuple[npt.NDArray[np.bool_], list[float], float]:
    """Upsert codes in the service's batch size from `writers` threads, as that many service
    workers or clients would, until done or past budget_s; (written, s/call, wall s)."""
    written = np.zeros(len(codes), dtype=bool)
    seconds: list[float] = []
    lock = threading.Lock()
    out_of_time = threading.Event()
    step = max(1, len(codes) // 10)
    started = time.perf_counter()

    def write(s: int) -> None:
        if out_of_time.is_set():
            return
        items = [NewItem(MODALITY, c) for c in codes[s : s + INGEST_BATCH]]
        took = timed(lambda: backend.upsert(items))[0]
        with lock:
            before = int(written.sum())
            written[s : s + len(items)] = True
            seconds.append(took)
            done, elapsed = before + len(items), time.perf_counter() - started
            if done // step != before // step:
                log(f"  {done:,} of {len(codes):,} items ({done / elapsed:,.0f} items/s)")
            if elapsed > budget_s and done < len(codes) and not out_of_time.is_set():
                log(f"  ingest budget of {budget_s:.0f} s spent at {done:,} items: stopping")
                out_of_time.set()

    with ThreadPoolExecutor(writers) as pool:
        list(pool.map(write, range(0, len(codes), INGEST_BATCH)))
    return written, seconds, time.perf_counter() - started


def measure(job: Job) -> dict[str, Any]:
    """Ingest into one backend and time its searches (runs in its own process)."""
    set_threads(job.threads)
    codes = np.load(job.codes_file)
    queries = np.load(job.queries_file)
    batch, singles = queries[:BATCH], queries[BATCH:]
    rss_before = rss_bytes()
    backend = open_backend(job.data_dir, BITS, job.config)
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        written, upserts, wall_s = ingest(backend, codes, job.ingest_budget_s, job.ingest_writers)
        done = int(written.sum())
        out: dict[str, Any] = {
            "backend": job.name,
            "items": done,
            "ingest_complete": done == len(codes),
            "count_after_ingest": len(backend),
            "ingest": {
                "batch_items": INGEST_BATCH,
                "writers": job.ingest_writers,
                "calls": len(upserts),
                "seconds": round(wall_s, 2),
                "items_per_s": round(done / wall_s, 1),
                "per_call": latency_summary(upserts),
            },
        }
        kth = exact_kth(codes[written], queries)
        if isinstance(backend, MilvusCollection):
            out["recall_as_ingested"] = tie_aware_recall(_distances(backend, queries), kth)
            out.update(settle(backend))
            out["consistency_single_ms"] = consistency_costs(backend, singles)
            out["client_rss_growth_bytes"] = rss_bytes() - rss_before
        else:
            out["rss_growth_bytes"] = rss_bytes() - rss_before
        out["search"] = time_searches(backend, batch, singles, job.batch_calls)
        out["recall_at_10"] = tie_aware_recall(_distances(backend, queries), kth)
        out["nlist"], out["nprobe"] = _ivf_settings(job.config, done)
        out["tie_order"] = backend.tie_order
        if not isinstance(backend, MilvusCollection):
            backend.snapshot()  # so the service loads the index instead of rebuilding it
            out["disk_bytes"] = disk_bytes(job.data_dir)
        out["load_average"] = {
            "start": load_at_start,
            "end": [round(x, 2) for x in os.getloadavg()],
        }
    finally:
        backend.close()
    return out


def _ivf_settings(config: BackendConfig, n: int) -> tuple[int | None, int | None]:
    if isinstance(config, MilvusConfig):
        ivf = config.index_kind == "BIN_IVF_FLAT"
        return (config.nlist, config.default_nprobe) if ivf else (None, None)
    return (choose_nlist(n), config.default_nprobe) if config.kind == "ivf" else (None, None)


def time_searches(
    backend: CollectionBackend, batch: np.ndarray, singles: np.ndarray, calls: int
) -> dict[str, Any]:
    """p50/p99 of the 100-query batch call and of single-query calls (after a warm-up)."""
    backend.search(batch, K)
    for q in singles[:5]:
        backend.search(q[None], K)
    batch_s = [timed(lambda: backend.search(batch, K))[0] for _ in range(calls)]
    single_s = [timed(lambda q=q: backend.search(q[None], K))[0] for q in singles]
    return {"batch100": latency_summary(batch_s), "single": latency_summary(single_s)}


def settle(backend: MilvusCollection, timeout_s: float = 600) -> dict[str, Any]:
    """Flush, wait until every row is indexed and only sealed segments are served."""
    from pymilvus import connections, utility
    from pymilvus.grpc_gen.common_pb2 import SegmentState

    client, name = backend.client, backend.config.collection
    alias = f"bench-{name}"
    connections.connect(alias=alias, uri=backend.config.uri)
    started = time.perf_counter()
    client.flush(name)
    segments: list[Any] = []
    while time.perf_counter() - started < timeout_s:
        info = client.describe_index(name, "code")
        segments = list(utility.get_query_segment_info(name, using=alias))
        growing = [s for s in segments if s.state == SegmentState.Growing]
        # The query node lists only the segments handed off to it: until the last flushed
        # segment is, its rows are still served from the growing one.
        served = sum(int(s.num_rows) for s in segments)
        if info.get("pending_index_rows", 0) == 0 and not growing and segments:
            if info.get("indexed_rows") == info.get("total_rows") == served:
                break
        time.sleep(1)
    settle_s = time.perf_counter() - started
    connections.disconnect(alias)
    rows = sorted(int(s.num_rows) for s in segments)
    return {
        "settle_s": round(settle_s, 1),
        "segments": {
            "count": len(segments),
            "rows_min": rows[0] if rows else 0,
            "rows_max": rows[-1] if rows else 0,
            "states": sorted({SegmentState.Name(s.state) for s in segments}),
            "rows_served_sealed": sum(rows),
            "indexed_rows": info.get("indexed_rows"),
            "total_rows": info.get("total_rows"),
        },
    }


def consistency_costs(backend: MilvusCollection, singles: np.ndarray) -> dict[str, Any]:
    """Single-query latency of the backend's Milvus search call at each consistency level."""
    client, config = backend.client, backend.config
    params: dict[str, Any] = {"metric_type": "HAMMING"}
    if config.index_kind == "BIN_IVF_FLAT":
        params["params"] = {"nprobe": config.default_nprobe}
    out = {}
    for level in CONSISTENCY_LEVELS:

        def one(q: np.ndarray, level: str = level) -> None:
            client.search(
                config.collection,
                data=[q.tobytes()],
                limit=K,
                output_fields=["modality"],
                search_params=params,
                consistency_level=level,
            )

        for q in singles[:3]:
            one(q)
        s = [timed(lambda q=q: one(q))[0] for q in singles[:100]]
        summary = latency_summary(s)
        out[level] = {"p50_ms": summary["median_ms"], "p99_ms": summary["p99_ms"]}
    return out


def http_run(
    name: str, env: dict[str, str], data_dir: Path, root: Path, bundle_dir: Path, args: Any
) -> dict[str, Any]:
    """The service on one backend: searches by code from 1 and 4 clients, recall@10."""
    queries = np.load(root / "queries.npy")
    kth = np.load(root / "kth.npy")
    bodies = [{"code": q.tobytes().hex(), "k": K} for q in queries]
    bodies = (bodies * (args.requests // len(bodies) + 1))[: args.requests]
    env = {**env, "HASHBRIDGE_LOG_LEVEL": "warning", "HASHBRIDGE_DEFAULT_NPROBE": str(NPROBE)}
    out: dict[str, Any] = {"backend": name}
    with ServerProcess(bundle_dir, data_dir, root / f"server-{name}.log", **env) as server:
        out["ready_after_s"] = round(timed(lambda: server.wait_ready(1800))[0], 1)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            out["count"] = client.get("/v1/stats").json()["count"]
            answers = [client.post("/v1/search", json=b).json() for b in bodies[:BATCH]]
        distances = [[r["distance"] for r in a["results"]] for a in answers]
        out["recall_at_10"] = tie_aware_recall(distances, kth)
        out["clients"] = {}
        for clients in args.clients:
            r = load_test(server.url, bodies, clients)
            out["clients"][str(clients)] = {
                "requests": r["requests"],
                "failures": r["failures"],
                "queries_per_s": r["queries_per_s"],
                "p50_ms": r["latency"]["median_ms"],
                "p99_ms": r["latency"]["p99_ms"],
            }
        server.stop()
    return out


def run_size(n: int, args: Any, pool: ProcessPoolExecutor, bundle_dir: Path) -> dict[str, Any]:
    """Every backend at n items, and the service over HTTP on each if n is an HTTP size."""
    root = Path(tempfile.mkdtemp(prefix=f"bench-mvf-{n}-", dir=args.tmp))
    try:
        log(f"n={n:,}: generating data")
        x, q = make_data(n, BITS, BATCH + args.singles, args.seed, 0.5)
        codes, queries = pack_signs(x), pack_signs(q)
        del x
        np.save(root / "codes.npy", codes)
        np.save(root / "queries.npy", queries)
        np.save(root / "kth.npy", exact_kth(codes, queries))
        base = Job(
            "",
            IndexConfig(),
            root,
            root / "codes.npy",
            root / "queries.npy",
            args.batch_calls,
            args.ingest_budget_s,
            args.ingest_writers,
            args.threads,
        )
        backends: dict[str, dict[str, Any]] = {}
        for name, kind in FAISS_KINDS.items():
            log(f"n={n:,}: {name}")
            config = IndexConfig(kind=kind, default_nprobe=NPROBE)  # type: ignore[arg-type]
            job = replace(base, name=name, config=config, data_dir=root / name)
            backends[name] = pool.submit(measure, job).result()
            log(f"n={n:,}: {name}: {json.dumps(backends[name]['ingest']['items_per_s'])} items/s")
        http: dict[str, dict[str, Any]] = {}
        for name, kind in MILVUS_KINDS.items():
            log(f"n={n:,}: {name}: starting an embedded Milvus server")
            with embedded_milvus(root / f"{name}-server") as uri:
                pid = milvus_pid()
                idle = rss_bytes(pid) if pid else None
                config = MilvusConfig(
                    uri=uri,
                    collection=f"bench_{name}",
                    index_kind=kind,  # type: ignore[arg-type]
                    nlist=MILVUS_NLIST,
                    default_nprobe=NPROBE,
                    timeout_s=120,
                )
                job = replace(base, name=name, config=config, data_dir=root / name)
                row = pool.submit(measure, job).result()
                if pid:
                    row["server_rss_bytes"] = rss_bytes(pid)
                    row["server_rss_growth_bytes"] = row["server_rss_bytes"] - (idle or 0)
                else:
                    row["server_rss_bytes"] = None  # the server process was not found
                row["disk_bytes"] = disk_bytes(root / f"{name}-server")
                backends[name] = row
                if n in args.http_sizes:
                    pair = PAIRS[name]
                    log(f"n={n:,}: the service over HTTP on {pair}, then on {name}")
                    env = {
                        "HASHBRIDGE_INDEX_BACKEND": "faiss",
                        "HASHBRIDGE_INDEX_KIND": FAISS_KINDS[pair],
                    }
                    http[pair] = http_run(pair, env, root / pair, root, bundle_dir, args)
                    env = {
                        "HASHBRIDGE_INDEX_BACKEND": "milvus",
                        "HASHBRIDGE_MILVUS_URI": uri,
                        "HASHBRIDGE_MILVUS_COLLECTION": config.collection,
                        "HASHBRIDGE_MILVUS_INDEX": kind,
                        "HASHBRIDGE_MILVUS_NLIST": str(MILVUS_NLIST),
                    }
                    http[name] = http_run(
                        name, env, root / f"{name}-service", root, bundle_dir, args
                    )
        return {"n": n, "backends": backends, "http": http}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def side_by_side(row: dict[str, Any]) -> list[dict[str, Any]]:
    """Milvus and its FAISS pair's headline figures at one size, with Milvus/FAISS ratios."""
    out = []
    for milvus, faiss_name in PAIRS.items():
        m, f = row["backends"][milvus], row["backends"][faiss_name]
        line: dict[str, Any] = {"n": row["n"], "milvus": milvus, "faiss": faiss_name}
        figures = {
            "items": lambda b: b["items"],
            "ingest_items_per_s": lambda b: b["ingest"]["items_per_s"],
            "batch100_p50_ms": lambda b: b["search"]["batch100"]["median_ms"],
            "batch100_p99_ms": lambda b: b["search"]["batch100"]["p99_ms"],
            "single_p50_ms": lambda b: b["search"]["single"]["median_ms"],
            "single_p99_ms": lambda b: b["search"]["single"]["p99_ms"],
            "recall_at_10": lambda b: b["recall_at_10"],
            "memory_bytes": lambda b: b.get("server_rss_growth_bytes", b.get("rss_growth_bytes")),
        }
        for key, get in figures.items():
            a, b = get(m), get(f)
            line[key] = {"milvus": a, "faiss": b, "milvus_over_faiss": _ratio(a, b)}
        for label in (milvus, faiss_name):
            if label in row["http"]:
                h = row["http"][label]
                side = "milvus" if label == milvus else "faiss"
                for c, r in h["clients"].items():
                    for stat in ("p50_ms", "p99_ms"):
                        line.setdefault(f"http_{c}_clients_{stat}", {})[side] = r[stat]
        for key, v in line.items():
            if key.startswith("http_") and {"milvus", "faiss"} <= set(v):
                v["milvus_over_faiss"] = _ratio(v["milvus"], v["faiss"])
        out.append(line)
    return out


def _ratio(a: Any, b: Any) -> float | None:
    return ratio(a, b) if isinstance(a, int | float) and isinstance(b, int | float) else None


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", help="items per collection")
    parser.add_argument(
        "--http-sizes",
        type=positive_int,
        nargs="*",
        help="sizes at which the service is also measured over HTTP "
        "(default: the smallest of --sizes)",
    )
    parser.add_argument("--singles", type=positive_int, help="single queries timed")
    parser.add_argument("--batch-calls", type=positive_int, help="timed 100-query calls")
    parser.add_argument("--requests", type=positive_int, help="HTTP searches per client count")
    parser.add_argument("--clients", type=positive_int, nargs="+", default=[1, 4])
    parser.add_argument(
        "--ingest-budget-s",
        type=float,
        default=600.0,
        help="stop one backend's ingest after this long, measuring the "
        "items it reached (default 600 s)",
    )
    parser.add_argument(
        "--ingest-writers",
        type=positive_int,
        default=4,
        help="threads upserting at once, as service workers or clients would (default 4)",
    )
    parser.add_argument("--tmp", type=Path, help="folder for the data dirs (default: the system's)")
    args = parser.parse_args()
    set_threads(args.threads)
    args.sizes = args.sizes or ([2000] if args.quick else [100_000, 1_000_000])
    args.http_sizes = args.sizes[:1] if args.http_sizes is None else args.http_sizes
    args.singles = args.singles or (20 if args.quick else 200)
    args.batch_calls = args.batch_calls or (3 if args.quick else 20)
    args.requests = args.requests or (20 if args.quick else 200)
    env = environment(args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mvf-bundle-") as tmp:
        bundle_dir = make_bundle("tiny", Path(tmp), BITS, args.seed)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
            for n in args.sizes:
                rows.append(run_size(n, args, pool, bundle_dir))
    notes = dict(NOTES)
    short = [
        f"{b['backend']} at {row['n']:,}: {b['items']:,} items"
        for row in rows
        for b in row["backends"].values()
        if not b["ingest_complete"]
    ]
    if short:
        notes["incomplete_ingest"] = (
            f"Ingest stopped after --ingest-budget-s {args.ingest_budget_s:g} s for: "
            + "; ".join(short)
            + ". Those backends' figures are at the items they reached (their recall against "
            "exact search over those items), not at the size of the row."
        )
    result = {
        "benchmark": "milvus_vs_faiss",
        "command": command("bench.milvus_vs_faiss"),
        "mode": "quick" if args.quick else "full",
        "environment": env,
        "settings": {
            "bits": BITS,
            "k": K,
            "batch_queries": BATCH,
            "single_queries": args.singles,
            "batch_calls": args.batch_calls,
            "ingest_batch_items": INGEST_BATCH,
            "nprobe": NPROBE,
            "milvus_nlist": MILVUS_NLIST,
            "milvus_consistency": "Strong",
            "sizes": args.sizes,
            "http_sizes": args.http_sizes,
            "http_requests": args.requests,
            "http_clients": args.clients,
            "ingest_budget_s": args.ingest_budget_s,
            "ingest_writers": args.ingest_writers,
            "seed": args.seed,
        },
        "notes": notes,
        "summary": [line for row in rows for line in side_by_side(row)],
        "results": rows,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
