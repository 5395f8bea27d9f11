"""Binary Hamming search (flat and IVF) against a float32 inner-product baseline; JSON out.

    python -m bench.search --quick             # < 1 min: 10^4 and 10^5 items, 64 bits
    python -m bench.search --out bench/results/search.json   # 10^4..10^6 items

Data: a seeded stand-in for one network's continuous embeddings (Gaussian clusters) and
their signs as the binary codes, so both sides index "the same" items. Compared, at each
size and code width: the float32 ``faiss.IndexFlatIP`` baseline; raw ``faiss.IndexBinaryFlat``;
our ``FaissHammingIndex(kind="flat")`` (which re-ranks ties deterministically, the cost of
which shows against raw FAISS); and ``FaissHammingIndex(kind="ivf")`` at several nprobe.

With ``--gpu`` (faiss-gpu and a CUDA GPU), the float32 baseline is ``GpuIndexFlatIP``, raw
binary search ``GpuIndexBinaryFlat`` and the wrapper runs with ``use_gpu=True``; each is
checked against the same search on the CPU. IVF is left out there: FAISS has no GPU binary IVF.
"""

from __future__ import annotations

import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from bench.common import (
    base_parser,
    code_bits,
    command,
    emit,
    environment,
    latency_summary,
    log,
    ms,
    positive_int,
    ratio,
    set_threads,
    timed,
)
from index.codes import pack_signs
from index.faiss_index import FaissHammingIndex, faiss_sees_a_gpu

K = 10
BATCH = 100
CENTRES = 1000
DATA_NOTE = (
    "Synthetic, seeded stand-in for one network's continuous embeddings: {centres} Gaussian "
    "cluster centres drawn from N(0, I_d), items = centre + {noise} * N(0, I_d) with d = bits. "
    "The float32 baseline indexes the L2-normalised vectors (cosine by inner product, "
    "faiss.IndexFlatIP); the binary codes are the signs of the same vectors packed MSB-first "
    "(index.codes.pack_signs). Queries are fresh draws from the same mixture."
)
RECALL_NOTE = (
    "IVF recall@10 is measured against exact binary search (raw IndexBinaryFlat) on all "
    "batch and single queries: a returned item counts as a hit when its Hamming distance is "
    "<= the exact 10th-nearest distance of that query, because distance ties make id-based "
    "recall ambiguous."
)
MEMORY_NOTE = (
    "float32 and raw binary bytes are the lengths of faiss.serialize_index / "
    "serialize_index_binary (the raw binary flat index holds only codes, n*bits/8 plus a "
    "small header). Wrapper bytes are FaissHammingIndex.memory_bytes(): everything it holds "
    "per collection: FAISS's codes (IVF: plus its 8-byte slot per item and the centroids), "
    "the slot<->id runs (a few runs when ids come from a counter, as the store's do) and the "
    "dead-slot bitmap (absent until something is removed). saved_file_bytes is what "
    "FaissHammingIndex.save writes; save_ms is the median of 3 saves (atomic write + fsync), "
    "what one service snapshot costs."
)
TIMING_NOTE = (
    "All indexes of one (n, bits) are built first, then timed in {rounds} interleaved rounds: "
    "each round runs, for every method in an order rotated per round, one search call with "
    "100 queries (k=10) and its share of the {singles} single-query calls (after a warm-up "
    "batch and 5 single calls). batch100.median_s is the median over rounds and "
    "seconds_by_round its min/max and (max-min)/median; single pools every single call "
    "(median_ms_by_round: the spread of the rounds' medians). overhead_vs_raw_* and "
    "speedup_vs_float32_by_round are ratios taken round by round (calls seconds apart, so a "
    "load change on the shared CPU hits both sides) and their median; speedup_* elsewhere = "
    "float32 baseline median / this median; memory_ratio = float32 baseline bytes / this "
    "index's bytes. build_s for the wrapper includes its Python bookkeeping and, for IVF, "
    "k-means training (nlist = index.faiss_index.choose_nlist(n), FAISS's 25 k-means "
    "iterations). blas records the BLAS libraries loaded (threadpoolctl) and the SIMD levels "
    "the FAISS build carries: the float32 baseline runs through BLAS sgemm for batches of 20 "
    "queries or more, and its speed is the kernel's."
)
GPU_NOTE = (
    "--gpu: float32 baseline faiss.GpuIndexFlatIP, raw binary faiss.GpuIndexBinaryFlat, the "
    "wrapper FaissHammingIndex(kind='flat', use_gpu=True) (a GPU mirror of its live codes, "
    "built on the first search after a write; its build_s leaves that out, and its bytes "
    "count the CPU side only). Bytes are those of the same index on the CPU. Checks: the "
    "GPU's exact binary distances equal the CPU IndexBinaryFlat's (distances_equal_cpu), and "
    "top10_ids_equal_cpu_fraction is the share of queries whose float32 top-10 ids equal "
    "the CPU IndexFlatIP's. No IVF rows: FAISS has no GPU binary IVF."
)


def kernels() -> dict[str, Any]:
    """The BLAS libraries loaded (each with its kernel architecture) and FAISS's SIMD build."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # a dev extra; the figures stand without it, the kernel goes unnamed
        blas: Any = "unknown (threadpoolctl not installed)"
    else:
        keys = ("internal_api", "version", "architecture", "threading_layer", "num_threads")
        blas = [
            {"library": Path(lib["filepath"]).name, **{k: lib.get(k) for k in keys}}
            for lib in threadpool_info()
            if lib.get("user_api") == "blas"
        ]
    return {"blas": blas, "faiss_compile_options": faiss.get_compile_options().strip()}


def gpu_resources() -> Any:
    """FAISS GPU resources, or a clear exit when this FAISS build or machine has no GPU."""
    if not faiss_sees_a_gpu():
        raise SystemExit("--gpu needs faiss-gpu and a CUDA GPU; this FAISS build sees none")
    return faiss.StandardGpuResources()


def make_data(
    n: int, bits: int, n_queries: int, seed: int, noise: float
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Clustered continuous vectors (n, bits) and queries from the same mixture, normalised."""
    centres = np.random.default_rng((seed, bits)).standard_normal((CENTRES, bits), np.float32)

    def draw(rng: np.random.Generator, count: int) -> npt.NDArray[np.float32]:
        out = np.empty((count, bits), dtype=np.float32)
        for s in range(0, count, 200_000):
            m = min(200_000, count - s)
            chunk = centres[rng.integers(CENTRES, size=m)]
            chunk += noise * rng.standard_normal((m, bits), np.float32)
            chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
            out[s : s + m] = chunk
        return out

    items = draw(np.random.default_rng((seed, bits, n)), n)
    queries = draw(np.random.default_rng((seed, bits, 0)), n_queries)
    return items, queries


class Interleaved:
    """Time several search functions in alternating rounds, so load drifts hit all alike.

    Each round times one batch call and a slice of the single queries of every method, the
    methods in an order rotated per round. A method's figure is the median over rounds and
    its spread the min/max of the rounds; ratios between methods are taken round by round
    (each from calls seconds apart) and their median reported.
    """

    def __init__(self, rounds: int) -> None:
        self.rounds = rounds
        self.methods: dict[str, tuple[Any, np.ndarray, np.ndarray]] = {}

    def add(self, name: str, search: Any, batch: np.ndarray, singles: np.ndarray) -> None:
        """Register a search function (queries -> anything) with its queries; warm it up."""
        search(batch)
        for i in range(min(5, len(singles))):
            search(singles[i : i + 1])
        self.methods[name] = (search, batch, singles)

    def run(self) -> dict[str, dict[str, Any]]:
        """Per method: batch seconds per round, single-query seconds per round."""
        names = list(self.methods)
        batch: dict[str, list[float]] = {n: [] for n in names}
        single: dict[str, list[list[float]]] = {n: [] for n in names}
        for r in range(self.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                search, queries, singles = self.methods[name]
                batch[name].append(timed(lambda s=search, b=queries: s(b))[0])
                part = np.array_split(np.arange(len(singles)), self.rounds)[r]
                single[name].append(
                    [timed(lambda q=singles[i : i + 1], s=search: s(q))[0] for i in part]
                )
        return {n: {"batch": batch[n], "single": single[n]} for n in names}


def spread(values: list[float]) -> dict[str, Any]:
    """Median, min, max and the relative spread (max - min) / median of per-round figures."""
    med = float(np.median(values))
    return {
        "rounds": len(values),
        "median": round(med, 6),
        "min": round(min(values), 6),
        "max": round(max(values), 6),
        "spread_of_median": ratio(max(values) - min(values), med),
    }


def report_of(timings: dict[str, Any]) -> dict[str, Any]:
    """The batch and single figures of one method from its interleaved rounds."""
    med = float(np.median(timings["batch"]))
    per_round = [float(np.median(r)) * 1000 for r in timings["single"] if r]
    pooled = [t for r in timings["single"] for t in r]
    return {
        "batch100": {
            "runs": len(timings["batch"]),
            "median_s": round(med, 6),
            "queries_per_s": round(BATCH / med, 1),
            "seconds_by_round": spread(timings["batch"]),
        },
        "single": {**latency_summary(pooled), "median_ms_by_round": spread(per_round)},
    }


def paired_ratio(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """a / b round by round (batch, and single-query medians): median and range."""
    batch = [x / y for x, y in zip(a["batch"], b["batch"], strict=True)]
    single = [
        float(np.median(x)) / float(np.median(y))
        for x, y in zip(a["single"], b["single"], strict=True)
        if x and y
    ]
    return {"batch": spread(batch), "single_median": spread(single)}


def add_speedups(report: dict[str, Any], base: dict[str, Any]) -> None:
    """Speed-up and memory ratio of one method against the float32 baseline."""
    report["speedup_batch_vs_float32"] = ratio(
        base["batch100"]["median_s"], report["batch100"]["median_s"]
    )
    report["speedup_single_median_vs_float32"] = ratio(
        base["single"]["median_ms"], report["single"]["median_ms"]
    )
    if "bytes" in report:
        report["memory_ratio_float32_over_this"] = ratio(base["bytes"], report["bytes"])


def snapshot_save(index: FaissHammingIndex) -> dict[str, Any]:
    """Size of the file FaissHammingIndex.save writes, and the median of 3 saves' time.

    Saving is what a service snapshot costs (atomic write + fsync), while writers wait.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.bin"
        seconds = [timed(lambda: index.save(path))[0] for _ in range(3)]
        return {"saved_file_bytes": path.stat().st_size, "save_ms": ms(sorted(seconds)[1])}


def bench_float(
    timer: Interleaved, x: np.ndarray, batch: np.ndarray, singles: np.ndarray, gpu: Any = None
) -> dict[str, Any]:
    """The float32 inner-product baseline over the continuous vectors (on `gpu` if given)."""
    cpu = faiss.IndexFlatIP(x.shape[1])
    index = cpu if gpu is None else faiss.GpuIndexFlatIP(gpu, x.shape[1])
    build_s, _ = timed(lambda: index.add(x))
    timer.add("float32_flat_ip", lambda b: index.search(b, K), batch, singles)
    out = {"build_s": round(build_s, 4)}
    if gpu is not None:
        cpu.add(x)
        same = index.search(batch, K)[1] == cpu.search(batch, K)[1]
        out["top10_ids_equal_cpu_fraction"] = round(float(same.all(axis=1).mean()), 4)
    return {"bytes": len(faiss.serialize_index(cpu)), **out}


def bench_raw(
    timer: Interleaved,
    codes: np.ndarray,
    batch: np.ndarray,
    singles: np.ndarray,
    everything: np.ndarray,
    gpu: Any = None,
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Raw IndexBinaryFlat (on `gpu` if given): report, exact top-k distances, tie statistics."""
    bits = codes.shape[1] * 8
    cpu = faiss.IndexBinaryFlat(bits)
    index = cpu if gpu is None else faiss.GpuIndexBinaryFlat(gpu, bits)
    build_s, _ = timed(lambda: index.add(codes))
    timer.add("binary_flat_raw_faiss", lambda b: index.search(b, K), batch, singles)
    if gpu is not None:
        cpu.add(codes)
    report: dict[str, Any] = {
        "build_s": round(build_s, 4),
        "bytes": len(faiss.serialize_index_binary(cpu)),
    }
    exact_d, _ = cpu.search(everything, K)
    if gpu is not None:
        gpu_d, _ = index.search(everything, K)
        report["distances_equal_cpu"] = bool(np.array_equal(gpu_d, exact_d))
    wide_d, _ = index.search(batch, 2 * K)
    # IVF and the GPU path ask FAISS for 2k and widen while the k-th distance's ties run past.
    ties = {
        "fraction_of_batch_queries_needing_wider_pass": round(
            float(np.mean(wide_d[:, -1] == wide_d[:, K - 1])), 3
        ),
        "median_exact_10th_distance": float(np.median(exact_d[:, K - 1])),
    }
    return report, exact_d, ties


def bench_wrapper_flat(
    timer: Interleaved,
    codes: np.ndarray,
    batch: np.ndarray,
    singles: np.ndarray,
    everything: np.ndarray,
    exact_d: np.ndarray,
    gpu: bool = False,
) -> dict[str, Any]:
    """FaissHammingIndex(kind="flat"), checked against raw FAISS's distances."""
    index = FaissHammingIndex(codes.shape[1] * 8, "flat", use_gpu=gpu)
    build_s, _ = timed(lambda: index.add(np.arange(len(codes)), codes))
    # Registering warms the search up, which on the GPU builds its mirror outside the timings.
    timer.add("binary_flat_wrapper", lambda b: index.search(b, K), batch, singles)
    return {
        "build_s": round(build_s, 4),
        "bytes": index.memory_bytes(),
        **snapshot_save(index),
        "distances_equal_raw_faiss": bool(
            np.array_equal(index.search(everything, K).distances, exact_d)
        ),
    }


def bench_ivf(
    timer: Interleaved,
    codes: np.ndarray,
    batch: np.ndarray,
    singles: np.ndarray,
    everything: np.ndarray,
    kth: np.ndarray,
    nprobes: list[int],
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """FaissHammingIndex(kind="ivf"): build report and one row per nprobe with recall@10."""
    bits = codes.shape[1] * 8
    index = FaissHammingIndex(bits, "ivf")
    build_s, _ = timed(lambda: index.add(np.arange(len(codes)), codes))
    built = {
        "build_s": round(build_s, 3),
        "nlist": index.nlist,
        "bytes": index.memory_bytes(),
        **snapshot_save(index),
    }
    rows = []
    for nprobe in nprobes:
        search = partial(index.search, k=K, nprobe=nprobe)
        timer.add(f"ivf_nprobe_{nprobe}", search, batch, singles)
        dist = index.search(everything, K, nprobe=nprobe).distances
        hits = (dist >= 0) & (dist <= kth[:, None])
        rows.append({"nprobe": nprobe, "recall_at_10": round(float(hits.mean()), 4)})
    return built, rows


def run_config(
    n: int,
    bits: int,
    nprobes: list[int],
    n_single: int,
    seed: int,
    noise: float,
    rounds: int,
    gpu: Any = None,
) -> dict[str, Any]:
    """All methods at one (n, bits); on the GPU (no IVF) when `gpu` resources are given."""
    log(f"n={n} bits={bits}: generating data")
    x, q = make_data(n, bits, BATCH + n_single, seed, noise)
    codes, qcodes = pack_signs(x), pack_signs(q)
    batch_c, singles_c = qcodes[:BATCH], qcodes[BATCH:]
    result: dict[str, Any] = {"n": n, "bits": bits, "dim_float": bits}
    timer = Interleaved(rounds)

    log(f"n={n} bits={bits}: building float32 IndexFlatIP, IndexBinaryFlat, the wrapper")
    base = bench_float(timer, x, q[:BATCH], q[BATCH:], gpu)
    del x
    raw, exact_d, ties = bench_raw(timer, codes, batch_c, singles_c, qcodes, gpu)
    flat = bench_wrapper_flat(timer, codes, batch_c, singles_c, qcodes, exact_d, gpu is not None)
    built = rows = None
    if gpu is None:
        log(f"n={n} bits={bits}: FaissHammingIndex(kind='ivf') build (k-means)")
        built, rows = bench_ivf(
            timer, codes, batch_c, singles_c, qcodes, exact_d[:, K - 1], nprobes
        )
    log(f"n={n} bits={bits}: {rounds} interleaved rounds of {len(timer.methods)} methods")
    timings = timer.run()
    reports = {name: report_of(t) for name, t in timings.items()}

    base.update(reports["float32_flat_ip"])
    raw.update(reports["binary_flat_raw_faiss"])
    flat.update(reports["binary_flat_wrapper"])
    for report in (raw, flat):
        add_speedups(report, base)
    against_raw = paired_ratio(timings["binary_flat_wrapper"], timings["binary_flat_raw_faiss"])
    flat["overhead_vs_raw_batch"] = against_raw["batch"]["median"]
    flat["overhead_vs_raw_single_median"] = against_raw["single_median"]["median"]
    flat["overhead_vs_raw_by_round"] = against_raw
    raw["speedup_vs_float32_by_round"] = paired_ratio(
        timings["float32_flat_ip"], timings["binary_flat_raw_faiss"]
    )
    result.update(float32_flat_ip=base, binary_flat_raw_faiss=raw, ties=ties)
    result["binary_flat_wrapper"] = flat
    if built is None or rows is None:
        return result
    for row in rows:
        row.update(reports[f"ivf_nprobe_{row['nprobe']}"])
        add_speedups(row, base)
        row["speedup_batch_vs_exact_binary_wrapper"] = ratio(
            flat["batch100"]["median_s"], row["batch100"]["median_s"]
        )
        row["speedup_batch_vs_exact_binary_raw"] = ratio(
            raw["batch100"]["median_s"], row["batch100"]["median_s"]
        )
    built["memory_ratio_float32_over_this"] = ratio(base["bytes"], built["bytes"])
    result["binary_ivf_wrapper"] = {**built, "by_nprobe": rows}
    return result


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per (n, bits) with the headline ratios."""
    out = []
    for r in rows:
        ivf = r.get("binary_ivf_wrapper", {"by_nprobe": []})
        out.append(
            {
                "n": r["n"],
                "bits": r["bits"],
                "float32_batch_ms": ms(r["float32_flat_ip"]["batch100"]["median_s"]),
                "raw_flat_speedup_batch": r["binary_flat_raw_faiss"]["speedup_batch_vs_float32"],
                "wrapper_flat_speedup_batch": r["binary_flat_wrapper"]["speedup_batch_vs_float32"],
                "wrapper_overhead_vs_raw_batch": r["binary_flat_wrapper"]["overhead_vs_raw_batch"],
                "wrapper_overhead_vs_raw_single": r["binary_flat_wrapper"][
                    "overhead_vs_raw_single_median"
                ],
                "raw_flat_speedup_batch_range": [
                    r["binary_flat_raw_faiss"]["speedup_vs_float32_by_round"]["batch"][key]
                    for key in ("min", "max")
                ],
                "memory_ratio_raw_flat": r["binary_flat_raw_faiss"][
                    "memory_ratio_float32_over_this"
                ],
                "memory_ratio_wrapper_flat": r["binary_flat_wrapper"][
                    "memory_ratio_float32_over_this"
                ],
                "wrapper_flat_save_ms": r["binary_flat_wrapper"]["save_ms"],
                "ivf": [
                    {
                        "nprobe": p["nprobe"],
                        "recall_at_10": p["recall_at_10"],
                        "speedup_batch_vs_float32": p["speedup_batch_vs_float32"],
                        "speedup_batch_vs_exact_binary_wrapper": p[
                            "speedup_batch_vs_exact_binary_wrapper"
                        ],
                    }
                    for p in ivf["by_nprobe"]
                ],
            }
        )
    return out


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", help="item counts")
    parser.add_argument("--bits", type=code_bits, nargs="+", help="code widths")
    parser.add_argument(
        "--big-bits",
        type=code_bits,
        nargs="+",
        help="code widths run at sizes >= 10^6 (default: all of --bits; IVF k-means at 10^6 "
        "items takes 1-2 min per width on one thread)",
    )
    parser.add_argument("--nprobe", type=positive_int, nargs="+", help="IVF nprobe values")
    parser.add_argument("--singles", type=positive_int, help="single queries timed per method")
    parser.add_argument(
        "--rounds", type=positive_int, help="interleaved timing rounds (default 9; quick 3)"
    )
    parser.add_argument("--noise", type=float, default=0.5, help="cluster noise scale")
    parser.add_argument(
        "--gpu", action="store_true", help="search on the GPU (faiss-gpu); no IVF rows"
    )
    args = parser.parse_args()
    set_threads(args.threads)
    gpu = gpu_resources() if args.gpu else None
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    bits_list = args.bits or ([64] if args.quick else [32, 64, 128])
    nprobes = args.nprobe or ([1, 16] if args.quick else [1, 4, 16, 64])
    n_single = args.singles or (50 if args.quick else 200)
    plan = [
        (n, b)
        for n in sizes
        for b in bits_list
        if n < 1_000_000 or b in (args.big_bits or bits_list)
    ]
    rounds = args.rounds or (3 if args.quick else 9)
    n_single = max(n_single, rounds)
    env = {**environment(args.threads), **kernels()}
    rows = []
    for n, bits in plan:
        rows.append(run_config(n, bits, nprobes, n_single, args.seed, args.noise, rounds, gpu))
    result = {
        "benchmark": "search",
        "command": command("bench.search"),
        "mode": ("quick" if args.quick else "full") + (" gpu" if gpu is not None else ""),
        "environment": env,
        "settings": {
            "k": K,
            "batch_queries": BATCH,
            "single_queries": n_single,
            "rounds": rounds,
            "seed": args.seed,
            "noise": args.noise,
            "cluster_centres": CENTRES,
            "nprobe": nprobes,
            "plan": [{"n": n, "bits": b} for n, b in plan],
        },
        "notes": {
            "data": DATA_NOTE.format(centres=CENTRES, noise=args.noise),
            "recall": RECALL_NOTE,
            "memory": MEMORY_NOTE,
            "timing": TIMING_NOTE.format(singles=n_single, rounds=rounds),
            "baseline": "float32_flat_ip (exact inner product over the continuous vectors)",
            **({"gpu": GPU_NOTE} if gpu is not None else {}),
        },
        "summary": summary(rows),
        "results": rows,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
