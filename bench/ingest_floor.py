"""What ingesting texts over HTTP costs before the service does any work of its own; JSON out.

    python -m bench.ingest_floor --quick
    python -m bench.ingest_floor --out bench/results/ingest-floor.json

The service's HTTP overhead on bag-of-words texts (bench.serving) is compared with an
encoder that needs only ~30 us per text. This measures two floors under that overhead, at
several texts per request, against the same bare encoder (vectorise + TorchScript, one
thread) that bench.serving uses:

* ``http``: a FastAPI route on uvicorn, in its own process on loopback, that parses the
  JSON body and answers an id and a code per text without doing anything else, posted
  by one httpx client one request at a time, as bench.serving's client does;
* ``store``: ``Collection.upsert`` of the batch (SQLite, WAL, synchronous=FULL, plus the
  flat index), the durable write every acknowledged item needs, in-process.

floor_ratio = (http + store) / bare is a lower bound of the service's overhead ratio.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.common import (
    base_parser,
    code_bits,
    command,
    emit,
    environment,
    log,
    ms,
    ratio,
    set_threads,
    timed,
)
from bench.serving import bare_texts, make_bundle, texts
from index.collection import Collection
from index.factory import IndexConfig
from index.store import NewItem
from service.encoders import Bundle, load_bundle
from tests.support.service_bundle import free_port

BATCH_SIZES = (64, 256, 1024)
FAKE_CODE = "00" * 8


def floor_app() -> FastAPI:
    """The cheapest FastAPI ingest route: parse the texts, answer ids, do nothing else."""
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/items")
    async def ingest(request: Request) -> JSONResponse:
        items = json.loads(await request.body())["items"]
        return JSONResponse({"items": [{"id": i, "code": FAKE_CODE} for i, _ in enumerate(items)]})

    return app


def serve(port: int) -> None:
    """Run the floor app (the child process's job)."""
    uvicorn.run(floor_app(), host="127.0.0.1", port=port, log_level="warning")


def start_floor_server(module: str = "bench.ingest_floor") -> tuple[subprocess.Popen[bytes], str]:
    """Start ``python -m module --serve PORT`` (a floor app) and wait until it answers."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, "--serve", str(port)])
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the floor server did not start within 60 s")


def post(client: httpx.Client, batch: list[str]) -> list[dict[str, Any]]:
    """POST texts as bench.serving's client does; return the answered items."""
    r = client.post("/v1/items", json={"items": [{"text": t} for t in batch]})
    r.raise_for_status()
    return list(r.json()["items"])


def measure(
    bundle: Bundle, client: httpx.Client, data_dir: Path, n: int, batches: int, seed: int
) -> dict[str, Any]:
    """Bare encoder, HTTP floor and store floor per text, for requests of n texts."""
    rng = np.random.default_rng(seed)
    collection = Collection.open(data_dir, bundle.bits, IndexConfig(kind="flat"))
    width = bundle.bits // 8
    bare_s = http_s = store_s = 0.0
    try:
        for i in range(batches + 1):
            batch = texts(bundle, n, rng)
            rows = [
                NewItem("text", rng.integers(0, 256, width, dtype=np.uint8), None, {"text": t})
                for t in batch
            ]
            prepare, encode = bare_texts(bundle, batch)
            http_t, answer = timed(lambda b=batch: post(client, b))
            store_t, _ = timed(lambda r=rows: collection.upsert(r))
            if len(answer) != n:
                raise RuntimeError("the floor server answered the wrong number of items")
            if i == 0:
                continue  # warm-up
            bare_s += prepare + encode
            http_s += http_t
            store_s += store_t
    finally:
        collection.close()
    items = batches * n
    return {
        "texts_per_request": n,
        "requests": batches,
        "bare_ms_per_item": ms(bare_s / items),
        "http_floor_ms_per_item": ms(http_s / items),
        "store_floor_ms_per_item": ms(store_s / items),
        "http_floor_ratio": ratio(http_s, bare_s),
        "floor_ratio": ratio(http_s + store_s, bare_s),
    }


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--bits", type=code_bits, default=64)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    set_threads(args.threads)
    env = environment(args.threads)
    batches = 5 if args.quick else 60
    proc, url = start_floor_server()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
            root = Path(tmp)
            kind = "tiny" if args.quick else "lite0"
            bundle = load_bundle(make_bundle(kind, root, args.bits, args.seed))
            rows = []
            with httpx.Client(base_url=url, timeout=120) as client:
                for n in BATCH_SIZES:
                    rows.append(measure(bundle, client, root / f"data-{n}", n, batches, args.seed))
                    log(f"{n} texts per request: {rows[-1]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result = {
        "benchmark": "ingest_floor",
        "command": command("bench.ingest_floor"),
        "mode": "quick" if args.quick else "normal",
        "environment": env,
        "settings": {"bits": args.bits, "seed": args.seed, "bundle": kind},
        "notes": {
            "baseline": "bare: the bundle's vocabulary + TorchScript text encoder in this "
            "process, one thread (bench.serving's bare text path)",
            "http_floor": "a FastAPI route on uvicorn (own process, loopback) that json-parses "
            "the body and answers an id and a fixed code per text; one httpx client, one "
            "request at a time; client, loopback and server included",
            "store_floor": "index.collection.Collection.upsert of the batch in this process: "
            "SQLite (WAL, synchronous=FULL) rows with the text as metadata, plus the flat "
            "index",
            "floor_ratio": "(http floor + store floor) / bare: a lower bound of the "
            "service's ingest overhead ratio (bench.serving), which does both and more",
        },
        "summary": {
            str(row["texts_per_request"]): {
                "http_floor_ratio": row["http_floor_ratio"],
                "floor_ratio": row["floor_ratio"],
            }
            for row in rows
        },
        "results": rows,
    }
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
