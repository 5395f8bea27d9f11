"""The real service over loopback HTTP against the same work done in-process; JSON out.

    python -m bench.serving --quick
    python -m bench.serving --out bench/results/serving.json

For each bundle (``lite0``: an untrained model exported by model.export with the real
EfficientNet-Lite0 trunk, see bench/models.py; ``tiny``: the conv+linear bundle of
tests/support/service_bundle.py) it starts ``python -m service`` on a free 127.0.0.1 port and:

* ingests batches of JPEG images and of texts over HTTP, alternating each batch with the
  same items decoded (service.media) and encoded (the bundle's TorchScript, loaded with
  service.encoders) in this process: http_overhead_ratio = (HTTP time per item - bare
  time per item) / bare time per item;
* searches by code and by text with 1, 4 and 16 concurrent clients (threads, one httpx
  client each), against in-process search of the same codes in a FaissHammingIndex.
"""

from __future__ import annotations

import signal
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
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
    ms,
    positive_int,
    ratio,
    set_threads,
    timed,
)
from bench.models import MODEL_NOTE, VOCAB_SIZE, export_untrained, write_untrained_run
from index.codes import codes_from_hex
from index.faiss_index import FaissHammingIndex
from service.encoders import Bundle, load_bundle
from service.media import Upload, decode_image
from service.settings import Settings
from tests.support.service_bundle import AUTH, ServerProcess, build_bundle, grid_image, image_bytes

K = 10
IMAGE_WH = (320, 240)
CAPTION_WORDS = (
    "a dog runs on the beach with two children near blue water while man in red shirt "
    "rides bike down street woman holds small girl playing grass park"
).split()
DEFAULTS = {name: f.default for name, f in Settings.model_fields.items()}


@dataclass(frozen=True)
class Sizes:
    """How much work each bundle's run does."""

    image_batches: int
    image_batch: int
    text_batches: int
    text_batch: int
    index_items: int
    requests: int
    bare_queries: int
    clients: tuple[int, ...]


QUICK = Sizes(2, 8, 2, 32, 300, 40, 40, (1, 4))
NORMAL = Sizes(20, 16, 64, 64, 5000, 400, 200, (1, 4, 16))


def make_bundle(kind: str, root: Path, bits: int, seed: int) -> Path:
    """Write the named bundle under root and return its folder."""
    if kind == "tiny":
        return build_bundle(root / "tiny-bundle", bits=bits, image_size=32, seed=seed)
    sentences = kind == "lite0-minilm"
    run_dir = write_untrained_run(root / f"{kind}-run", bits=bits, seed=seed, sentences=sentences)
    return export_untrained(run_dir, root / f"{kind}-bundle")


def jpegs(n: int, seed: int) -> list[bytes]:
    """Distinct JPEG pictures (random colour blocks, 320x240, quality 90)."""
    return [
        image_bytes(grid_image(seed * 100_000 + i, IMAGE_WH, cells=8), "JPEG", quality=90)
        for i in range(n)
    ]


def texts(bundle: Bundle, n: int, rng: np.random.Generator) -> list[str]:
    """Texts of 8 words from the bundle's vocabulary plus two unknown words.

    A sentence-encoder bundle has no word list; its texts are 10 words drawn from a small
    English caption vocabulary.
    """
    assert bundle.vectorizer is not None
    tokens = getattr(bundle.vectorizer, "tokens", CAPTION_WORDS)
    return [
        " ".join([*(tokens[i] for i in rng.integers(len(tokens), size=8)), "zzqx", "qqzv"])
        for _ in range(n)
    ]


def bare_images(
    bundle: Bundle, pool: ThreadPoolExecutor, files: list[bytes]
) -> tuple[float, float]:
    """What the service does to uploads before storing them; (decode_s, encode_s).

    Files are decoded in a pool as large as the service's, as the service decodes them.
    """
    image = bundle.inputs["image"]
    limit = DEFAULTS["max_image_pixels"]
    decode_s, pixels = timed(
        lambda: list(
            pool.map(
                lambda item: decode_image(
                    Upload(f"{item[0]}.jpg", "image/jpeg", item[1]), image, limit
                ),
                enumerate(files),
            )
        )
    )
    encode_s, _ = timed(lambda: bundle.encoders["image"].encode(np.stack(pixels)))
    return decode_s, encode_s


def bare_texts(bundle: Bundle, batch: list[str]) -> tuple[float, float]:
    """What the service does to texts before storing them; (vectorise_s, encode_s)."""
    assert bundle.vectorizer is not None
    vectorizer = bundle.vectorizer
    prepare_s, (bags, _) = timed(lambda: vectorizer.vectorize(batch))
    encode_s, _ = timed(lambda: bundle.encoders["text"].encode(bags))
    return prepare_s, encode_s


def server_encode_seconds(client: httpx.Client, modality: str) -> tuple[float, int]:
    """The server's own running total of encoder seconds and calls (from /metrics)."""
    total, calls = 0.0, 0
    for line in client.get("/metrics").text.splitlines():
        if f'modality="{modality}"' not in line:
            continue
        if line.startswith("hashbridge_encode_duration_seconds_sum"):
            total = float(line.rsplit(" ", 1)[1])
        elif line.startswith("hashbridge_encode_duration_seconds_count"):
            calls = int(float(line.rsplit(" ", 1)[1]))
    return total, calls


def post_images(client: httpx.Client, files: list[bytes]) -> list[dict[str, Any]]:
    """Ingest image files through multipart."""
    parts = [("files", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
    r = client.post("/v1/items", files=parts, headers=AUTH)
    r.raise_for_status()
    return list(r.json()["items"])


def post_texts(client: httpx.Client, batch: list[str]) -> list[dict[str, Any]]:
    """Ingest texts through the JSON body."""
    r = client.post("/v1/items", json={"items": [{"text": t} for t in batch]}, headers=AUTH)
    r.raise_for_status()
    return list(r.json()["items"])


def ingest_compare(
    batches: list[Any], bare: Any, http: Any, server_encode: Any
) -> tuple[dict[str, Any], list[str]]:
    """Alternate bare and HTTP ingestion batch by batch; return the report and stored codes.

    The first batch only warms both paths up. Which of the two goes first alternates, so
    drifting load on the shared CPU hits both alike.
    """
    bare(batches[0])
    http(batches[0])
    enc0, calls0 = server_encode()
    bare_s, prepare_s, encode_s, http_s = 0.0, 0.0, 0.0, 0.0
    codes: list[str] = []
    per_batch = []
    for i, batch in enumerate(batches[1:]):
        if i % 2:
            http_t, items = timed(lambda b=batch: http(b))
            bare_t, (prep_t, enc_t) = timed(lambda b=batch: bare(b))
        else:
            bare_t, (prep_t, enc_t) = timed(lambda b=batch: bare(b))
            http_t, items = timed(lambda b=batch: http(b))
        bare_s += bare_t
        prepare_s += prep_t
        encode_s += enc_t
        http_s += http_t
        per_batch.append((http_t - bare_t) / bare_t)
        codes += [item["code"] for item in items]
    enc1, calls1 = server_encode()
    n = sum(len(b) for b in batches[1:])
    server_s = enc1 - enc0
    return {
        "items": n,
        "batch_size": len(batches[0]),
        "batches": len(batches) - 1,
        "bare_ms_per_item": ms(bare_s / n),
        "http_ms_per_item": ms(http_s / n),
        "bare_items_per_s": round(n / bare_s, 1),
        "http_items_per_s": round(n / http_s, 1),
        "http_overhead_ratio": round((http_s - bare_s) / bare_s, 3),
        "per_batch_overhead_ratio": {
            "median": round(statistics.median(per_batch), 3),
            "min": round(min(per_batch), 3),
            "max": round(max(per_batch), 3),
        },
        "breakdown_ms_per_item": {
            "bare_prepare": ms(prepare_s / n),
            "bare_encode": ms(encode_s / n),
            "server_encode": ms(server_s / n),
            "server_encoder_calls": calls1 - calls0,
            "http_minus_server_encode": ms((http_s - server_s) / n),
        },
    }, codes


def load_test(url: str, bodies: list[dict[str, Any]], clients: int) -> dict[str, Any]:
    """POST /v1/search bodies from ``clients`` threads at once; latency and throughput."""
    barrier = threading.Barrier(clients + 1)
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[str] = []

    def worker(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            client.get("/healthz")  # connect before the clock starts
            barrier.wait()
            for body in bodies[i::clients]:
                start = time.perf_counter()
                r = client.post("/v1/search", json=body)
                latencies[i].append(time.perf_counter() - start)
                if r.status_code != 200 or len(r.json()["results"]) != body["k"]:
                    failures.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    every = [x for per in latencies for x in per]
    return {
        "clients": clients,
        "requests": len(every),
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "wall_s": round(wall, 3),
        "queries_per_s": round(len(every) / wall, 1),
        "latency": latency_summary(every),
    }


def bare_search(
    bundle: Bundle, codes: np.ndarray, queries: list[str], text_queries: list[str]
) -> dict[str, Any]:
    """In-process single-query latency: index search by code, and vectorise+encode+search."""
    index = FaissHammingIndex(bundle.bits, "flat")
    index.add(np.arange(len(codes)), codes)
    qcodes = codes_from_hex(queries, bundle.bits)
    for i in range(5):
        index.search(qcodes[i : i + 1], K)
    by_code = [timed(lambda i=i: index.search(qcodes[i : i + 1], K))[0] for i in range(len(qcodes))]

    assert bundle.vectorizer is not None
    vectorizer, encoder = bundle.vectorizer, bundle.encoders["text"]

    def by_text(text: str) -> None:
        index.search(encoder.encode(vectorizer.vectorize([text])[0]), K)

    for text in text_queries[:5]:
        by_text(text)
    text_s = [timed(lambda t=t: by_text(t))[0] for t in text_queries]
    return {
        "index_items": len(codes),
        "code": latency_summary(by_code),
        "text": latency_summary(text_s),
    }


def run_bundle(kind: str, root: Path, args: Any, sizes: Sizes) -> dict[str, Any]:
    """Start a server over one bundle and measure ingestion and search."""
    rng = np.random.default_rng(args.seed)
    log(f"{kind}: building the bundle")
    bundle_dir = make_bundle(kind, root, args.bits, args.seed)
    bundle = load_bundle(bundle_dir)
    per = sizes.image_batch
    image_files = jpegs((sizes.image_batches + 1) * per, args.seed)
    image_batches = [image_files[s : s + per] for s in range(0, len(image_files), per)]
    all_texts = texts(bundle, (sizes.text_batches + 1) * sizes.text_batch, rng)
    text_batches = [
        all_texts[s : s + sizes.text_batch] for s in range(0, len(all_texts), sizes.text_batch)
    ]
    server_settings = {
        "workers": DEFAULTS["workers"],
        "batch_window_ms": args.batch_window_ms,
        "thumbnails": args.thumbnails,
        "batch_max_items": DEFAULTS["batch_max_items"],
        "text_batch_max_items": DEFAULTS["text_batch_max_items"],
        "index_kind": "auto",
        "ivf_threshold": DEFAULTS["ivf_threshold"],
        "log_level": DEFAULTS["log_level"],
    }
    log_path = root / f"{kind}-server.log"
    with ServerProcess(
        bundle_dir,
        root / f"{kind}-data",
        log_path,
        HASHBRIDGE_BATCH_WINDOW_MS=str(args.batch_window_ms),
        HASHBRIDGE_INDEX_KIND="auto",
        HASHBRIDGE_THUMBNAILS=str(args.thumbnails).lower(),
    ) as server:
        started, _ = timed(lambda: server.wait_ready(180))
        log(f"{kind}: server ready on {server.url} after {started:.1f}s")
        with (
            httpx.Client(base_url=server.url, timeout=300) as client,
            ThreadPoolExecutor(DEFAULTS["workers"]) as pool,
        ):
            image_report, image_codes = ingest_compare(
                image_batches,
                lambda b: bare_images(bundle, pool, b),
                lambda b: post_images(client, b),
                lambda: server_encode_seconds(client, "image"),
            )
            log(f"{kind}: images {image_report}")
            text_report, text_codes = ingest_compare(
                text_batches,
                lambda b: bare_texts(bundle, b),
                lambda b: post_texts(client, b),
                lambda: server_encode_seconds(client, "text"),
            )
            log(f"{kind}: texts {text_report}")
            stored = image_codes + text_codes
            fill = sizes.index_items - int(client.get("/v1/stats").json()["count"])
            for s in range(0, max(fill, 0), 256):
                batch = texts(bundle, min(256, fill - s), rng)
                stored += [item["code"] for item in post_texts(client, batch)]
            count = int(client.get("/v1/stats").json()["count"])
        log(f"{kind}: {count} items stored; searching")
        n_req = sizes.requests
        code_queries = [stored[i] for i in rng.integers(len(stored), size=n_req)]
        text_queries = texts(bundle, n_req, rng)
        bare = bare_search(
            bundle,
            codes_from_hex(stored, bundle.bits),
            code_queries[: sizes.bare_queries],
            text_queries[: sizes.bare_queries],
        )
        search: dict[str, list[dict[str, Any]]] = {"code": [], "text": []}
        for query_kind, values in (("code", code_queries), ("text", text_queries)):
            load_test(server.url, [{query_kind: v, "k": K} for v in values[:10]], 1)  # warm-up
        for clients in sizes.clients:
            for query_kind, values in (("code", code_queries), ("text", text_queries)):
                bodies = [{query_kind: v, "k": K} for v in values]
                row = load_test(server.url, bodies, clients)
                bare_p50 = bare[query_kind]["median_ms"]
                row["latency_over_bare_median"] = ratio(row["latency"]["median_ms"], bare_p50)
                search[query_kind].append(row)
                log(f"{kind}: search by {query_kind}, {clients} clients: {row['queries_per_s']}/s")
        exit_code = server.stop()
    single = {q: rows[0] for q, rows in search.items() if rows and rows[0]["clients"] == 1}
    return {
        "bundle": kind,
        "bits": bundle.bits,
        "image_size": bundle.inputs["image"].size,
        "vocab_size": len(getattr(bundle.vectorizer, "tokens", ())) or None,
        "server": {
            "settings": server_settings,
            "ready_after_s": round(started, 2),
            "exit_code": exit_code,
            # uvicorn re-raises SIGTERM after a graceful shutdown, hence -15.
            "clean_exit": exit_code in (0, -signal.SIGTERM),
        },
        "ingest": {"image": image_report, "text": text_report},
        "search_in_process": bare,
        "search_http": search,
        "search_http_overhead_ratio_1_client": {
            q: round((row["latency"]["median_ms"] - bare[q]["median_ms"]) / bare[q]["median_ms"], 2)
            for q, row in single.items()
        },
        "stored_items": count,
    }


def _latency_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput and p50/p99 per client count, for the summary."""
    return [
        {
            "clients": r["clients"],
            "queries_per_s": r["queries_per_s"],
            "p50_ms": r["latency"]["median_ms"],
            "p99_ms": r["latency"]["p99_ms"],
        }
        for r in runs
    ]


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bundles", nargs="+", choices=("lite0", "lite0-minilm", "tiny"), default=None
    )
    parser.add_argument("--bits", type=code_bits, default=64)
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=DEFAULTS["batch_window_ms"],
        help="the server's micro-batching window (default: the service's default)",
    )
    parser.add_argument("--clients", type=positive_int, nargs="+", help="concurrent search clients")
    parser.add_argument(
        "--text-batch",
        type=positive_int,
        help="texts per ingest request (default 64; the service takes up to 256): larger "
        "batches spread the per-request cost over more items",
    )
    parser.add_argument(
        "--no-thumbnails",
        dest="thumbnails",
        action="store_false",
        help="run the server with HASHBRIDGE_THUMBNAILS=false: a stored image then costs "
        "exactly what the bare path does, so the ratio is the HTTP path's own overhead",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    env = environment(args.threads)
    sizes = QUICK if args.quick else NORMAL
    if args.clients:
        sizes = replace(sizes, clients=tuple(args.clients))
    if args.text_batch:
        if not 1 <= args.text_batch <= DEFAULTS["max_batch_items"]:
            parser.error(f"--text-batch must be 1 to {DEFAULTS['max_batch_items']}")
        sizes = replace(sizes, text_batch=args.text_batch)
    kinds = args.bundles or ["lite0", "tiny"]
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        rows = [run_bundle(kind, Path(tmp), args, sizes) for kind in kinds]
    result = {
        "benchmark": "http",
        "command": command("bench.serving"),
        "mode": "quick" if args.quick else "normal",
        "environment": env,
        "settings": {"bits": args.bits, "seed": args.seed, "k": K, **asdict(sizes)},
        "notes": {
            "bundles": {
                "lite0": MODEL_NOTE.format(bits=args.bits, size=128, vocab=VOCAB_SIZE, labels=24),
                "lite0-minilm": "as lite0, but texts go through the pretrained all-MiniLM-L6-v2 "
                "sentence encoder (text.encoder = minilm; tokenizer in the bundle, MiniLM + MLP "
                "+ hash traced together), the caption encoder a deployment would use",
                "tiny": "tests/support/service_bundle.build_bundle: seeded conv+linear image "
                "encoder at 32 px and a linear text encoder over a 40-word vocabulary; encoding is "
                "nearly free, so its ratios show the service's fixed per-item cost",
            },
            "ingest": "Each batch is done in-process (service.media.decode_image in a "
            "thread pool as large as the service's (workers), or the bundle's "
            "vocabulary; then the TorchScript encoder via service.encoders.load_bundle, "
            "one torch thread) and POSTed to /v1/items (multipart JPEGs 320x240, or a JSON "
            "body of texts), alternating which goes first, one client, one request at a "
            "time, after one warm-up batch each. HTTP time covers the client, "
            "loopback, parsing, validation, decode, micro-batched encode, the SQLite "
            "write (WAL, synchronous=FULL) and the index update. http_overhead_ratio = "
            "(HTTP time per item - bare time per item) / bare time per item, over all timed "
            "batches; per_batch_overhead_ratio is the same per batch. breakdown_ms_per_item "
            "splits the bare time into prepare (decode or vectorise) and encode, and takes "
            "the server's own encoder seconds from its /metrics "
            "(hashbridge_encode_duration_seconds), so http_minus_server_encode is the "
            "per-item cost of everything in the HTTP path except the encoder, measured "
            "without comparing across processes. On a shared, loaded CPU the encoder's own "
            "time varies by +-20% from batch to batch, so for the EfficientNet bundle "
            "the total-time ratio is within noise of zero; the breakdown is the steadier "
            "figure.",
            "search": "Requests are POST /v1/search JSON bodies with k=10, by `code` (hex "
            "of a stored item) or by `text` (8 known words + 2 unknown), split over N "
            "threads each with its own httpx.Client (keep-alive), started together; "
            "queries_per_s = requests / wall time. search_in_process is the same code "
            "(or text: vectorise + encode + search) searched in a FaissHammingIndex "
            "(flat) holding the same codes, single-threaded, one query per call.",
            "machine": "Client, server and other users' jobs share the same CPUs; the "
            "client's Python threads share one GIL, so at 16 clients the client side is "
            "part of what is measured.",
            "baseline": "in-process (bare) decode/vectorise + TorchScript encode (+ search)",
        },
        "summary": {
            row["bundle"]: {
                "http_overhead_ratio": {
                    m: row["ingest"][m]["http_overhead_ratio"] for m in ("image", "text")
                },
                "http_overhead_ratio_per_batch_median": {
                    m: row["ingest"][m]["per_batch_overhead_ratio"]["median"]
                    for m in ("image", "text")
                },
                "ingest_ms_per_item": {
                    m: {
                        "bare": row["ingest"][m]["bare_ms_per_item"],
                        "http": row["ingest"][m]["http_ms_per_item"],
                        **{
                            k: v
                            for k, v in row["ingest"][m]["breakdown_ms_per_item"].items()
                            if k != "server_encoder_calls"
                        },
                    }
                    for m in ("image", "text")
                },
                "ingest_http_items_per_s": {
                    m: row["ingest"][m]["http_items_per_s"] for m in ("image", "text")
                },
                "ingest_bare_items_per_s": {
                    m: row["ingest"][m]["bare_items_per_s"] for m in ("image", "text")
                },
                "search_by_code": _latency_rows(row["search_http"]["code"]),
                "search_by_text": _latency_rows(row["search_http"]["text"]),
                "in_process_search_median_ms": {
                    q: row["search_in_process"][q]["median_ms"] for q in ("code", "text")
                },
            }
            for row in rows
        },
        "results": rows,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
