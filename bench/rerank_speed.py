"""Search latency with and without re-ranking by the asymmetric score, in-process and over HTTP.

    python -m bench.rerank_speed --quick                     # 10^4 items, 32 bits, < 2 min
    python -m bench.rerank_speed --out bench/results/rerank-speed.json   # 10^4..10^6, 16 and 64

Data: bench.search's seeded Gaussian mixture. The stored items are the signs of its vectors,
written through the store's bulk path (``Collection.upsert``); queries are fresh draws from
the mixture, whose real values stand in for an encoder's tanh outputs. At each size and code
width, in-process on one Collection (the service's default index kind: flat, IVF past
100,000 items at nprobe 16): ``search`` by the queries' signs (Hamming; the baseline) and
``search_values`` under ``asymmetric`` (the shipped default) and ``hamming_asymmetric``,
timed in interleaved rounds (bench.search.Interleaved: batches of 100 and single queries),
the ratios taken round by round.

Over HTTP, at the largest size: the real server (``python -m service``, default settings,
the index snapshotted beforehand so start-up loads it) with the ``tiny`` test bundle traced
with real values, answering text->image searches under ``"rerank": "hamming"`` and
``"asymmetric"``: one client in alternating blocks (p50/p99 and their ratio), then each
client count as a load test.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.common import (
    base_parser,
    code_bits,
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
from bench.http_search import fill, snapshot_as
from bench.search import BATCH, Interleaved, make_data, paired_ratio, report_of
from bench.serving import load_test, texts
from index.codes import pack_signs
from index.collection import Collection
from index.factory import IndexConfig
from service.encoders import load_bundle
from tests.support.service_bundle import ServerProcess, build_bundle

K = 10
RANKINGS = ("asymmetric", "hamming_asymmetric")


def in_process(data_dir: Path, codes: np.ndarray, bits: int, args: Any) -> dict[str, Any]:
    """Hamming search against both re-rankings on one filled collection."""
    n = len(codes)
    _, queries = make_data(n, bits, BATCH + args.singles, args.seed + 1, 0.5)
    values = queries.astype(np.float64)
    batch, singles = values[:BATCH], values[BATCH:]
    collection = Collection.open(data_dir, bits, IndexConfig(kind="auto"))
    try:
        opened = collection.open_report["image"]
        timer = Interleaved(args.rounds)
        timer.add(
            "hamming",
            lambda v: collection.search(pack_signs(v), K, modalities=["image"]),
            batch,
            singles,
        )
        for ranking in RANKINGS:
            timer.add(
                ranking,
                lambda v, r=ranking: collection.search_values(v, K, r, modalities=["image"]),
                batch,
                singles,
            )
        timings = timer.run()
    finally:
        collection.close()
    distinct = len(np.unique(codes, axis=0))
    out: dict[str, Any] = {"items": n, "bits": bits, "index": opened, "distinct_codes": distinct}
    out["hamming"] = report_of(timings["hamming"])
    for ranking in RANKINGS:
        out[ranking] = report_of(timings[ranking])
        out[f"{ranking}_over_hamming"] = paired_ratio(timings[ranking], timings["hamming"])
    return out


def over_http(data_dir: Path, root: Path, bits: int, args: Any) -> dict[str, Any]:
    """Text->image searches under both rankings on the real server; one client, then loads."""
    bundle_dir = build_bundle(root / f"tiny-{bits}", bits=bits, seed=args.seed, values=True)
    rng = np.random.default_rng(args.seed)
    queries = texts(load_bundle(bundle_dir), args.requests, rng)
    bodies = {
        mode: [{"text": q, "k": K, "modalities": ["image"], "rerank": mode} for q in queries]
        for mode in ("hamming", "asymmetric")
    }
    out: dict[str, Any] = {"bits": bits}
    env = {"HASHBRIDGE_LOG_LEVEL": "warning"}
    with ServerProcess(bundle_dir, data_dir, root / f"server-{bits}.log", **env) as server:
        server.wait_ready(1800)
        seen: dict[str, list[float]] = {mode: [] for mode in bodies}
        with httpx.Client(base_url=server.url, timeout=120) as client:
            out["items"] = client.get("/v1/stats").json()["index_sizes"]
            answered = client.post("/v1/search", json=bodies["asymmetric"][0]).json()
            assert answered["rerank"] == "asymmetric", answered  # the bundle has real values
            blocks = 6
            per_block = max(1, args.requests // blocks)
            for b in range(blocks):
                order = ("hamming", "asymmetric") if b % 2 == 0 else ("asymmetric", "hamming")
                for mode in order:
                    for body in bodies[mode][b * per_block : (b + 1) * per_block]:
                        t, r = timed(lambda body=body: client.post("/v1/search", json=body))
                        r.raise_for_status()
                        seen[mode].append(t)
        out["one_client"] = {mode: latency_summary(seen[mode]) for mode in seen}
        out["one_client"]["p50_asymmetric_over_hamming"] = ratio(
            float(np.median(seen["asymmetric"])), float(np.median(seen["hamming"]))
        )
        out["one_client"]["p99_asymmetric_over_hamming"] = ratio(
            float(np.quantile(seen["asymmetric"], 0.99)), float(np.quantile(seen["hamming"], 0.99))
        )
        loads = {}
        for clients in args.clients:
            rows = {mode: load_test(server.url, bodies[mode], clients) for mode in bodies}
            loads[str(clients)] = {
                **{
                    m: {"queries_per_s": r["queries_per_s"], **r["latency"]}
                    for m, r in rows.items()
                },
                "queries_per_s_asymmetric_over_hamming": ratio(
                    rows["asymmetric"]["queries_per_s"], rows["hamming"]["queries_per_s"]
                ),
            }
        out["clients"] = loads
        server.stop()
    return out


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=positive_int, nargs="+", help="items per collection")
    parser.add_argument("--bits", type=code_bits, nargs="+", help="code widths")
    parser.add_argument("--singles", type=positive_int, default=300, help="single queries")
    parser.add_argument("--rounds", type=positive_int, default=6)
    parser.add_argument("--requests", type=positive_int, help="HTTP searches per mode")
    parser.add_argument("--clients", type=positive_int, nargs="+", help="HTTP client counts")
    parser.add_argument("--no-http", action="store_true", help="in-process only")
    args = parser.parse_args()
    set_threads(args.threads)
    args.sizes = args.sizes or ([10_000] if args.quick else [10_000, 100_000, 1_000_000])
    args.bits = args.bits or ([32] if args.quick else [16, 64])
    args.requests = args.requests or (60 if args.quick else 600)
    args.clients = args.clients or ([1, 4] if args.quick else [1, 4, 16])
    if args.quick:
        args.singles, args.rounds = min(args.singles, 60), min(args.rounds, 3)
    result: dict[str, Any] = {"benchmark": "rerank_speed", "command": command("bench.rerank_speed")}
    rows, http = [], []
    with tempfile.TemporaryDirectory(prefix="bench-rerank-") as tmp:
        root = Path(tmp)
        for bits in args.bits:
            for n in args.sizes:
                filled = root / f"filled-{bits}-{n}"
                log(f"{bits} bits: filling {n} image codes")
                codes = fill(filled, n, args.seed, bits=bits, modalities=("image",))
                data_dir = root / f"auto-{bits}-{n}"
                snapshot_as(filled, data_dir, "auto", 100_000, bits=bits)
                row = in_process(data_dir, codes, bits, args)
                log(f"{bits} bits, {n} items: {row['asymmetric_over_hamming']['single_median']}")
                rows.append(row)
                if n == max(args.sizes) and not args.no_http:
                    http.append(over_http(data_dir, root, bits, args))
    result.update(
        environment=environment(args.threads),
        settings={
            "sizes": args.sizes,
            "bits": args.bits,
            "k": K,
            "single_queries": args.singles,
            "rounds": args.rounds,
            "http_requests_per_mode": args.requests,
            "clients": args.clients,
        },
        notes={"method": " ".join(__doc__.split("\n\n")[2:4])},
        in_process=rows,
        http=http,
    )
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
