"""Camera-size photos: reduced JPEG decoding's effect on codes, ingest speed, and isolation.

    python -m bench.photos --quick
    python -m bench.photos --out bench/results/photos.json

Photos are generated, never read from a dataset: the project's synthetic scenes
(model.data.synthetic.make_scene) drawn at 512 px, upscaled bicubically to camera size
with mild sensor-like noise (so the JPEG carries real detail to decode), saved as quality 90
JPEGs. Three parts, all through the ``lite0`` bundle (bench.models: the real
EfficientNet-Lite0 trunk at 128 px, untrained) unless ``--bundle`` names another:

* ``agreement``: per photo, the code from the service's reduced decode (Pillow draft mode,
  service.media.open_image) against the code from a full decode + the same resize: bits
  that differ, and decode time both ways;
* ``ingest``: a real server on loopback, batches of 16 photos posted to /v1/items by one
  client, images per second (decode, encode, thumbnail, store), at 4000x3000 and 640x480,
  with reduced decoding on and off in alternating batches of the same photos (two servers);
  then, reduced decoding on, 1, 2 and 4 clients posting at once (``--clients``): one client
  waits for each answer, so the server's stages overlap only across clients;
* ``isolation``: a text search's latency, idle and while one /v1/encode of 40 copies of a
  single-colour 7000x7000 PNG runs (the PNG is small, its decode is not); with the default
  HASHBRIDGE_MAX_REQUEST_PIXELS (the encode is refused with 413) and with the bound raised
  so the encode really runs (what the media pool's lower priority buys).
"""

from __future__ import annotations

import io
import itertools
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

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
from bench.serving import make_bundle, post_images, texts
from bundle.inputs import Pixels
from model.data.synthetic import make_scene
from service.encoders import Bundle, load_bundle
from service.media import Upload, encoder_pixels, open_image
from tests.support.service_bundle import AUTH, ServerProcess

SIZES = {"12mp": (4000, 3000), "3mp": (2048, 1536), "vga": (640, 480)}
PNG_SIDE = 7000
PNG_COPIES = 40
BATCH = 16
WARM_UP_BATCHES = 4


def photo(seed: int, wh: tuple[int, int]) -> bytes:
    """One generated camera-size JPEG: a synthetic scene upscaled, with mild noise."""
    rng = np.random.default_rng(seed)
    scene = make_scene(rng, 512).image.resize(wh, Image.Resampling.BICUBIC)
    pixels = np.asarray(scene, dtype=np.int16) + rng.normal(0, 6, (wh[1], wh[0], 3)).astype(
        np.int16
    )
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def agreement(bundle: Bundle, files: list[bytes]) -> dict[str, Any]:
    """Bits that differ between reduced-decode and full-decode codes, and both decode times."""
    kind = bundle.inputs["image"]
    assert isinstance(kind, Pixels)  # load_bundle gives images the pixels kind
    size = kind.size
    encoder = bundle.encoders["image"]
    reduced_s, full_s, reduced, full = [], [], [], []
    for i, data in enumerate(files):
        upload = Upload(f"{i}.jpg", "image/jpeg", data)
        for out, times, reduce in ((reduced, reduced_s, True), (full, full_s, False)):
            t, image = timed(lambda u=upload, r=reduce: open_image(u, size, 10**9, reduce=r))
            times.append(t)
            out.append(encoder_pixels(image, kind))
    codes_r, codes_f = encoder.encode(np.stack(reduced)), encoder.encode(np.stack(full))
    differ = np.unpackbits(codes_r ^ codes_f, axis=1).sum(axis=1)
    return {
        "photos": len(files),
        "bits": bundle.bits,
        "bits_differing": {
            "mean": round(float(differ.mean()), 3),
            "median": float(np.median(differ)),
            "max": int(differ.max()),
            "share_of_codes_identical": round(float((differ == 0).mean()), 3),
        },
        "decode_ms_reduced": latency_summary(reduced_s),
        "decode_ms_full": latency_summary(full_s),
        "decode_speedup": ratio(statistics.median(full_s), statistics.median(reduced_s)),
    }


def concurrent_rate(url: str, batch: list[bytes], clients: int, batches_each: int) -> float:
    """Images/s of `clients` clients posting `batches_each` batches each, all at once."""
    # A client that fails before the start breaks the barrier (timeout) instead of hanging it.
    start = threading.Barrier(clients + 1, timeout=120)

    def work() -> None:
        with httpx.Client(base_url=url, timeout=600) as client:
            client.get("/healthz").raise_for_status()  # connect before the clock starts
            start.wait()
            for _ in range(batches_each):
                post_images(client, batch)

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(work) for _ in range(clients)]
        start.wait()
        began = time.perf_counter()
        for future in futures:
            future.result()  # a failed post fails the bench
        seconds = time.perf_counter() - began
    return clients * batches_each * len(batch) / seconds


def by_clients(
    url: str, batch: list[bytes], levels: list[int], rounds: int, batches: int
) -> dict[str, Any]:
    """Images/s at each number of concurrent clients: `rounds` rounds of about `batches`
    batches shared among the clients, the levels' order reversed every other round; the
    median round of each level."""
    rates: dict[int, list[float]] = {n: [] for n in levels}
    for r in range(rounds):
        for n in levels if r % 2 == 0 else levels[::-1]:
            rates[n].append(concurrent_rate(url, batch, n, max(1, batches // n)))
    medians = {n: statistics.median(v) for n, v in rates.items()}
    return {
        "images_per_s": {str(n): round(v, 1) for n, v in medians.items()},
        "rounds": {str(n): [round(x, 1) for x in v] for n, v in rates.items()},
        "vs_one_client": {str(n): ratio(v, medians[levels[0]]) for n, v in medians.items()},
    }


def ingest(
    bundle_dir: Path,
    root: Path,
    files: list[bytes],
    batches: int,
    name: str,
    client_counts: list[int],
) -> dict[str, Any]:
    """Images/s over HTTP, reduced decoding on and off, in alternating batches (two servers);
    then the reduced-decode server's rate with several clients posting at once."""
    servers = {
        reduce: ServerProcess(
            bundle_dir,
            root / f"data-{name}-{reduce}",
            root / f"server-{name}-{reduce}.log",
            HASHBRIDGE_REDUCED_JPEG_DECODE=str(reduce).lower(),
            HASHBRIDGE_INDEX_KIND="flat",
        )
        for reduce in (True, False)
    }
    seconds: dict[bool, list[float]] = {True: [], False: []}
    codes: dict[bool, list[str]] = {True: [], False: []}
    try:
        for server in servers.values():
            server.wait_ready(180)
        clients = {r: httpx.Client(base_url=s.url, timeout=600) for r, s in servers.items()}
        batch = [files[i % len(files)] for i in range(BATCH)]
        for client in clients.values():
            # TorchScript's profiling executor re-optimises the encoder for the first few
            # batch shapes it sees (the micro-batcher's merged batches vary): a single warm-up
            # request left the first measured batches ~20% slower than the steady state.
            for _ in range(WARM_UP_BATCHES):
                post_images(client, batch)
        for b in range(batches):
            order = (True, False) if b % 2 == 0 else (False, True)
            for reduce in order:
                t, items = timed(lambda c=clients[reduce]: post_images(c, batch))
                seconds[reduce].append(t)
                codes[reduce] += [item["code"] for item in items]
        for client in clients.values():
            client.close()
        servers[False].stop()  # its idle threads would only blur the next figures
        concurrent = (
            by_clients(servers[True].url, batch, client_counts, rounds=3, batches=batches)
            if client_counts
            else None
        )
    finally:
        for server in servers.values():
            server.stop()
    rate = {r: BATCH * len(s) / sum(s) for r, s in seconds.items()}
    same = [a == b for a, b in zip(codes[True], codes[False], strict=True)]
    return {
        "photo_wh": list(Image.open(io.BytesIO(files[0])).size),
        "mean_file_bytes": int(np.mean([len(f) for f in files])),
        "batch": BATCH,
        "batches_each": batches,
        "images_per_s_reduced_decode": round(rate[True], 1),
        "images_per_s_full_decode": round(rate[False], 1),
        "speedup": ratio(rate[True], rate[False]),
        "share_of_codes_identical_over_http": round(float(np.mean(same)), 3),
        "reduced_decode_by_clients": concurrent,
    }


def search_latencies(url: str, queries: list[str], stop: threading.Event | None) -> list[float]:
    """One client's text-search seconds, sequentially: the queries once, or until ``stop``."""
    out = []
    with httpx.Client(base_url=url, timeout=600) as client:
        for q in queries if stop is None else itertools.cycle(queries):
            if stop is not None and stop.is_set():
                break
            t, r = timed(lambda q=q: client.post("/v1/search", json={"text": q, "k": 10}))
            r.raise_for_status()
            out.append(t)
    return out


def isolation(bundle_dir: Path, bundle: Bundle, root: Path, raised: bool) -> dict[str, Any]:
    """Text-search latency idle and during a 40 x 7000x7000 PNG /v1/encode."""
    env = {"HASHBRIDGE_MAX_REQUEST_PIXELS": str(10**10)} if raised else {}
    tag = "raised" if raised else "default"
    rng = np.random.default_rng(0)
    queries = texts(bundle, 400, rng)
    buf = io.BytesIO()
    Image.new("RGB", (PNG_SIDE, PNG_SIDE), (200, 30, 30)).save(buf, "PNG", optimize=True)
    heavy = buf.getvalue()
    with ServerProcess(bundle_dir, root / f"iso-{tag}", root / f"iso-{tag}.log", **env) as server:
        server.wait_ready(180)
        with httpx.Client(base_url=server.url, timeout=600) as client:
            client.post(
                "/v1/items",
                json={"items": [{"text": t} for t in texts(bundle, 200, rng)]},
                headers=AUTH,
            )
        search_latencies(server.url, queries[:20], None)
        idle = search_latencies(server.url, queries[20:120], None)
        stop = threading.Event()
        answer: dict[str, Any] = {}

        def encode() -> None:
            parts = [("files", (f"{i}.png", heavy, "image/png")) for i in range(PNG_COPIES)]
            with httpx.Client(base_url=server.url, timeout=600) as client:
                t, r = timed(lambda: client.post("/v1/encode", files=parts))
            answer.update(status=r.status_code, seconds=round(t, 2))
            stop.set()

        worker = threading.Thread(target=encode)
        worker.start()
        time.sleep(0.5)  # the upload is parsed and its decodes queued
        during = search_latencies(server.url, queries[120:], stop)
        worker.join()
    idle_p50 = statistics.median(idle)
    return {
        "max_request_pixels": "10^10 (raised)" if raised else "default",
        "png_bytes": len(heavy),
        "encode": answer,
        "search_idle": latency_summary(idle),
        "search_during_encode": latency_summary(during) if during else None,
        "during_p50_over_idle_p50": ratio(statistics.median(during), idle_p50) if during else None,
        "during_p99_over_idle_p50": (
            ratio(float(np.quantile(during, 0.99)), idle_p50) if during else None
        ),
    }


def main() -> int:
    parser = base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, help="a bundle folder (default: untrained lite0)")
    parser.add_argument("--photos", type=positive_int, help="distinct photos per size")
    parser.add_argument("--batches", type=positive_int, help="ingest batches per setting")
    parser.add_argument(
        "--parts", nargs="+", choices=("agreement", "ingest", "isolation"), default=None
    )
    parser.add_argument(
        "--clients",
        type=positive_int,
        nargs="*",
        default=[1, 2, 4],
        help="concurrent client counts for the ingest part's last figures (none: skip them)",
    )
    args = parser.parse_args()
    set_threads(args.threads)
    parts = args.parts or ["agreement", "ingest", "isolation"]
    n_photos = args.photos or (4 if args.quick else 16)
    batches = args.batches or (2 if args.quick else 6)
    env = environment(args.threads)
    result: dict[str, Any] = {"benchmark": "photos", "command": command("bench.photos")}
    with tempfile.TemporaryDirectory(prefix="bench-photos-") as tmp:
        root = Path(tmp)
        bundle_dir = args.bundle or make_bundle("lite0", root, 64, args.seed)
        bundle = load_bundle(bundle_dir)
        sizes = ["vga", "12mp"] if args.quick else list(SIZES)
        log(f"generating {n_photos} photos at {', '.join(sizes)}")
        files = {s: [photo(args.seed * 1000 + i, SIZES[s]) for i in range(n_photos)] for s in sizes}
        if "agreement" in parts:
            result["agreement"] = {s: agreement(bundle, f) for s, f in files.items()}
            log(f"agreement: {result['agreement']}")
        if "ingest" in parts:
            result["ingest"] = {
                s: ingest(bundle_dir, root, files[s], batches, s, args.clients)
                for s in ("12mp", "vga")
            }
            log(f"ingest: {result['ingest']}")
        if "isolation" in parts:
            result["isolation"] = [isolation(bundle_dir, bundle, root, r) for r in (False, True)]
    result.update(
        environment=env,
        settings={
            "photos_per_size": n_photos,
            "batches": batches,
            "batch": BATCH,
            "parts": parts,
            "clients": args.clients,
        },
        notes={"photos": __doc__.split("\n\n")[2], "decode_ms": "open_image alone, one thread"},
    )
    emit(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
