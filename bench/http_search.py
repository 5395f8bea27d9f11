"""Search over HTTP at collection scale, against a bare FastAPI route; JSON out.

    python -m bench.http_search --quick                  # 10^4 codes per modality
    python -m bench.http_search --items 1000000 --out bench/results/http-search-1e6.json

A data dir is filled with ``--items`` codes per modality (image and text) through the
store's bulk path (``Collection.upsert`` of 50,000 items at a time, no encoder involved):
seeded clustered 64-bit codes (bench.search's Gaussian mixture, signs packed). Each index
kind is opened once in-process and snapshotted, so the server loads the index instead of
rebuilding (IVF k-means) at start-up. Then, per kind (``auto``: IVF past
HASHBRIDGE_IVF_THRESHOLD, nprobe 16; ``flat``: exact), the real server (``python -m service``
with the ``tiny`` bundle of tests/support/service_bundle.py: a bag-of-words text encoder) answers:

* text->image searches (``{"text": ..., "k": 10, "modalities": ["image"]}``) and searches
  by code (``{"code": ..., "k": 10}``), with 1, 4 and 16 concurrent clients (threads with
  an httpx client each): p50/p99 latency and queries/s;
* recall@10 of the text->image answers against exact search over the same image codes
  in-process (a hit is a returned item within the exact 10th distance: ties make ids
  ambiguous);
* under ``auto``, text->image at each ``--nprobes`` value (the request's ``nprobe``):
  recall@10 and one client's p50/p99, to choose HASHBRIDGE_DEFAULT_NPROBE.

The floor: a FastAPI route on uvicorn in its own process that parses the same JSON body
with pydantic and answers 10 fixed hits, posted by the same client code. One client's
by-code latency on the service and on the floor are measured in alternating blocks.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

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
from bench.ingest_floor import start_floor_server
from bench.search import make_data
from bench.serving import load_test, make_bundle, texts
from index.codes import codes_from_hex, pack_signs
from index.collection import STORE_FILE, Collection
from index.factory import IndexConfig
from index.faiss_index import FaissHammingIndex
from index.store import NewItem
from service.encoders import load_bundle
from tests.support.service_bundle import ServerProcess

BITS = 64
K = 10
CHUNK = 50_000
FLOOR_HIT = {"id": 1, "client_id": None, "modality": "image", "distance": 3, "metadata": {}}


class FloorQuery(BaseModel):
    """The fields a search body carries, validated as the service's model would."""

    code: str | None = None
    text: str | None = None
    k: int = 10
    modalities: list[str] | None = None


def floor_app() -> FastAPI:
    """The cheapest FastAPI search route: validate the body, answer k fixed hits."""
    app = FastAPI()
    body = json.dumps({"query": {"modality": "code"}, "results": [FLOOR_HIT] * K}).encode()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/search")
    async def search(query: FloorQuery) -> Response:
        return Response(body, media_type="application/json")

    return app


def fill(
    data_dir: Path,
    n: int,
    seed: int,
    *,
    bits: int = BITS,
    modalities: tuple[str, ...] = ("image", "text"),
) -> np.ndarray:
    """n codes per modality into a fresh store through the bulk path; the first one's codes."""
    collection = Collection.open(data_dir, bits, IndexConfig(kind="flat"))
    first = None
    try:
        for m, modality in enumerate(modalities):
            x, _ = make_data(n, bits, 1, seed + m, 0.5)
            codes = pack_signs(x)
            del x
            for s in range(0, n, CHUNK):
                collection.upsert([NewItem(modality, c) for c in codes[s : s + CHUNK]])
            if first is None:
                first = codes
    finally:
        collection.close()
    assert first is not None
    return first


def snapshot_as(
    source: Path, target: Path, kind: str, ivf_threshold: int, *, bits: int = BITS
) -> float:
    """Copy the store, open it with this index kind (one build) and snapshot; build seconds."""
    target.mkdir(parents=True)
    shutil.copy(source / STORE_FILE, target / STORE_FILE)
    config = IndexConfig(kind=kind, ivf_threshold=ivf_threshold)  # type: ignore[arg-type]
    seconds, collection = timed(lambda: Collection.open(target, bits, config))
    collection.snapshot()
    collection.close()
    return seconds


def recall(answers: list[dict[str, Any]], exact: FaissHammingIndex) -> float:
    """Tie-aware recall@10 of the service's text->image answers against exact search."""
    codes = codes_from_hex([a["query"]["code"] for a in answers], BITS)
    kth = exact.search(codes, K).distances[:, K - 1]
    hits = [sum(1 for r in a["results"] if r["distance"] <= kth[i]) for i, a in enumerate(answers)]
    return round(sum(hits) / (K * len(answers)), 4)


def one_client_vs_floor(
    url: str, floor_url: str, bodies: list[dict[str, Any]], blocks: int
) -> dict[str, Any]:
    """One client's latency on the service and on the floor, in alternating blocks."""
    service: list[float] = []
    floor: list[float] = []
    per_block = max(1, len(bodies) // blocks)
    with httpx.Client(base_url=url) as a, httpx.Client(base_url=floor_url) as b:
        for client in (a, b):
            for body in bodies[:20]:
                client.post("/v1/search", json=body).raise_for_status()
        for i in range(blocks):
            part = bodies[i * per_block : (i + 1) * per_block]
            pairs = ((a, service), (b, floor))
            for client, out in pairs if i % 2 == 0 else pairs[::-1]:
                for body in part:
                    t, r = timed(lambda c=client, body=body: c.post("/v1/search", json=body))
                    r.raise_for_status()
                    out.append(t)
    return {
        "service": latency_summary(service),
        "floor": latency_summary(floor),
        "p50_over_floor_p50": ratio(float(np.median(service)), float(np.median(floor))),
    }


def run_kind(
    kind: str,
    data_dir: Path,
    root: Path,
    args: Any,
    image_codes: np.ndarray,
    exact: FaissHammingIndex,
    bundle_dir: Path,
) -> dict[str, Any]:
    """Start the server on a filled data dir and measure text->image and by-code search."""
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(args.seed)
    env = {
        "HASHBRIDGE_INDEX_KIND": kind,
        "HASHBRIDGE_IVF_THRESHOLD": str(args.ivf_threshold),
        "HASHBRIDGE_LOG_LEVEL": "warning",
    }
    out: dict[str, Any] = {"kind": kind}
    with ServerProcess(bundle_dir, data_dir, root / f"server-{kind}.log", **env) as server:
        out["ready_after_s"] = round(timed(lambda: server.wait_ready(1800))[0], 1)
        with httpx.Client(base_url=server.url, timeout=120) as client:
            out["index_sizes"] = client.get("/v1/stats").json()["index_sizes"]
            queries = texts(bundle, args.requests, rng)
            answers = [
                client.post("/v1/search", json={"text": q, "k": K, "modalities": ["image"]}).json()
                for q in queries[:200]
            ]
        out["text_to_image_recall_at_10"] = recall(answers, exact)
        if kind == "auto":
            out["text_to_image_by_nprobe"] = [
                by_nprobe(server.url, queries, nprobe, exact) for nprobe in args.nprobes
            ]
        codes = _near_codes(image_codes, rng, args.requests)
        bodies = {
            "text_to_image": [{"text": q, "k": K, "modalities": ["image"]} for q in queries],
            "code": [{"code": c, "k": K} for c in codes],
        }
        out["search"] = {
            name: [_row(load_test(server.url, b, clients)) for clients in args.clients]
            for name, b in bodies.items()
        }
        if args.floor_url:
            out["one_client_code_vs_floor"] = one_client_vs_floor(
                server.url, args.floor_url, bodies["code"], blocks=6
            )
        server.stop()
    return out


def by_nprobe(
    url: str, queries: list[str], nprobe: int, exact: FaissHammingIndex
) -> dict[str, Any]:
    """Text->image at one nprobe: recall@10 of 200 answers, then one client's latency."""
    bodies = [{"text": q, "k": K, "modalities": ["image"], "nprobe": nprobe} for q in queries]
    with httpx.Client(base_url=url, timeout=120) as client:
        answers = [client.post("/v1/search", json=b).json() for b in bodies[:200]]
    return {
        "nprobe": nprobe,
        "recall_at_10": recall(answers, exact),
        **_row(load_test(url, bodies, 1)),
    }


def _near_codes(image_codes: np.ndarray, rng: np.random.Generator, n: int) -> list[str]:
    """Query codes as hex: stored image codes with 4 random bits flipped (near, not equal)."""
    picked = image_codes[rng.integers(len(image_codes), size=n)]
    flips = np.packbits(rng.permuted(np.arange(BITS)[None].repeat(n, 0) < 4, axis=1), axis=1)
    return [c.tobytes().hex() for c in picked ^ flips]


def _row(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "clients": r["clients"],
        "requests": r["requests"],
        "failures": r["failures"],
        "queries_per_s": r["queries_per_s"],
        "p50_ms": r["latency"]["median_ms"],
        "p99_ms": r["latency"]["p99_ms"],
    }


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        uvicorn.run(floor_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
        return 0
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=positive_int, help="codes per modality")
    parser.add_argument("--requests", type=positive_int, help="searches per load test")
    parser.add_argument("--clients", type=positive_int, nargs="+", help="client counts")
    parser.add_argument("--kinds", nargs="+", choices=("auto", "flat"), default=["auto", "flat"])
    parser.add_argument("--ivf-threshold", type=positive_int, default=100_000)
    parser.add_argument(
        "--nprobes",
        type=positive_int,
        nargs="+",
        default=[16, 32, 64, 128],
        help="under auto, also text->image recall and one client's latency at each nprobe",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    args.items = args.items or (10_000 if args.quick else 1_000_000)
    args.requests = args.requests or (100 if args.quick else 800)
    args.clients = args.clients or ([1, 4] if args.quick else [1, 4, 16])
    env = environment(args.threads)
    result: dict[str, Any] = {"benchmark": "http_search", "command": command("bench.http_search")}
    floor, args.floor_url = start_floor_server("bench.http_search")
    try:
        with tempfile.TemporaryDirectory(prefix="bench-http-search-") as tmp:
            root = Path(tmp)
            bundle_dir = make_bundle("tiny", root, BITS, args.seed)
            log(f"filling {args.items} codes per modality through Collection.upsert")
            fill_s, image_codes = timed(lambda: fill(root / "filled", args.items, args.seed))
            exact = FaissHammingIndex(BITS, "flat")
            exact.add(np.arange(len(image_codes)), image_codes)
            runs = []
            for kind in args.kinds:
                log(f"{kind}: building and snapshotting the index")
                build_s = snapshot_as(root / "filled", root / kind, kind, args.ivf_threshold)
                log(f"{kind}: serving")
                row = run_kind(kind, root / kind, root, args, image_codes, exact, bundle_dir)
                row["index_build_s"] = round(build_s, 1)
                runs.append(row)
                log(f"{kind}: {json.dumps(row)}")
    finally:
        floor.terminate()
        floor.wait(30)
    result.update(
        environment=env,
        settings={
            "items_per_modality": args.items,
            "bits": BITS,
            "k": K,
            "requests": args.requests,
            "clients": args.clients,
            "ivf_threshold": args.ivf_threshold,
            "nprobes": args.nprobes,
            "fill_s": round(fill_s, 1),
        },
        notes={"method": __doc__.split("\n\n")[1] + " " + __doc__.split("\n\n")[2]},
        results=runs,
    )
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
