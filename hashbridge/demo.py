"""`hashbridge demo`: synthetic data, a small DSMHN model, its bundle, and the service, searchable.

Stages run in order inside one work folder: generate captioned clips with a still of each
(hashbridge/demo_data.py), train one model over pictures, clips and text, evaluate
on the held-out split, export the bundle, start the service on localhost and ingest the
database items through its REST API. Each finished stage records a fingerprint of its inputs
in ``demo-state.json``; a later run skips every stage whose fingerprint still matches, so it
only starts the server. `model/` is imported only by stages that actually run.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hashbridge.demo_service import (
    MEDIA_TYPES,
    TOP_K,
    DemoError,
    ExampleQuery,
    Row,
    Server,
    example_queries,
    ingest,
    read_rows,
    reserve_port,
)
from hashbridge.demo_stages import Stages, State, fingerprint

log = logging.getLogger(__name__)

__all__ = ["DemoError", "DemoOptions", "DemoReport", "default_workdir", "format_report", "run_demo"]


def default_workdir() -> Path:
    """Where the demo keeps its data, model, bundle and collection between runs."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hashbridge" / "demo"


@dataclass(frozen=True)
class DemoOptions:
    """Sizes and places of one demo run (the defaults fit 5 minutes on 2 CPU cores)."""

    workdir: Path = field(default_factory=default_workdir)
    host: str = "127.0.0.1"
    port: int = 8000
    items: int = 1200
    #: Side of the clips and their stills (112: 4x4 frozen feature maps per frame).
    image_size: int = 112
    query_fraction: float = 0.2
    epochs: int = 20
    bits: int = 32
    hidden: int = 512
    seed: int = 0
    #: Torch threads for features and training: on 2 busy cores, more threads spin (7x slower).
    threads: int = 1
    batch_rows: int = 64
    #: Media streams trained and ingested next to the captions (the data has both).
    media: tuple[str, ...] = ("image", "video")


@dataclass
class DemoReport:
    """What a demo run built and found."""

    url: str
    api_key: str
    bits: int
    items: int
    collection: dict[str, int]
    map: dict[str, float]
    num_queries: int
    num_database: int
    queries: list[ExampleQuery]
    reused: list[str]
    built: list[str]
    seconds: dict[str, float] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Example queries whose results are not relevant enough."""
        return [p for q in self.queries if (p := q.problem()) is not None]


# ---------------------------------------------------------------- data, model, bundle


def _generate(options: DemoOptions, out: Path) -> dict[str, Any]:
    from hashbridge.demo_data import write_demo_items

    shutil.rmtree(out, ignore_errors=True)
    log.info("generating %d clips of moving shapes with captions and stills", options.items)
    manifest = write_demo_items(
        out,
        options.items,
        seed=options.seed,
        size=options.image_size,
        query_fraction=options.query_fraction,
    )
    return {"items": len(read_rows(manifest, options.media))}


def train_config(options: DemoOptions, manifest: Path) -> dict[str, Any]:
    """The demo model: every stream with one hidden layer, a few epochs of Adam.

    The video stream is configs/synthetic-video.toml's, a little narrower.
    """
    from hashbridge.demo_data import FRAMES_PER_CLIP

    return {
        "bits": options.bits,
        "seed": options.seed,
        "split_seed": options.seed,
        "data": {"kind": "manifest", "path": str(manifest), "modalities": [*options.media, "text"]},
        "image": {
            "size": options.image_size,
            "hidden": [options.hidden],
            "cache_dir": str(options.workdir / "features"),
        },
        "video": {
            "size": options.image_size,
            "frames": FRAMES_PER_CLIP,
            "temporal": "conv3d",
            "width": 64,
            "hidden": [options.hidden],
            "cache_dir": str(options.workdir / "video-features"),
            # Decoding in this process: the encoder already keeps the other core busy.
            "workers": 1,
        },
        "text": {"hidden": [options.hidden]},
        "dsmhn": {"similarity_params": {"balance": True}},
        "train": {
            "epochs": options.epochs,
            "batch_size": 64,
            "lr": 1e-3,
            "eval_every": 0,
            "threads": options.threads,
        },
        "eval": {"top_r": 1000, "ks": [1, 5, 10, 50]},
    }


def _train(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    from model.config import config_from_dict
    from model.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    result = train(config_from_dict(config), run_dir)
    return {"seconds": round(result.seconds, 1)}


def _evaluate(run_dir: Path, out: Path) -> dict[str, Any]:
    from model.evaluate import evaluate_run

    log.info("evaluating on the held-out split")
    report = evaluate_run(run_dir, out)
    return {
        "map": report["map"],
        "num_queries": report["num_queries"],
        "num_database": report["num_database"],
    }


def _export(run_dir: Path, bundle: Path) -> dict[str, Any]:
    from model.export import export_bundle

    log.info("exporting the bundle (TorchScript encoders, checked against the eager model)")
    export_bundle(run_dir, bundle, overwrite=True)
    return {}


# ---------------------------------------------------------------- the whole demo


@dataclass(frozen=True)
class Built:
    """What the build stages made: the data, the bundle and the held-out evaluation."""

    manifest: Path
    bundle_dir: Path
    evaluation: dict[str, Any]
    #: Digest of the bundle and the data: a collection ingested under another one is stale.
    collection_key: str


def build(options: DemoOptions, stages: Stages) -> Built:
    """Generate the data, train, evaluate and export (each reused when unchanged)."""
    workdir = options.workdir
    data_dir, run_dir, bundle_dir = workdir / "data", workdir / "run", workdir / "bundle"
    manifest = data_dir / "manifest.csv"
    data_inputs = {
        "generator": "clips",
        "items": options.items,
        "seed": options.seed,
        "size": options.image_size,
        "query_fraction": options.query_fraction,
        "media": options.media,
    }
    data = stages.run("data", data_inputs, manifest, lambda: _generate(options, data_dir))
    config = train_config(options, manifest)
    checkpoint = stages.run(
        "train",
        {"data": data["sha256"], "config": config},
        run_dir / "checkpoint.pt",
        lambda: _train(config, run_dir),
    )["sha256"]
    evaluation = stages.run(
        "evaluate",
        {"checkpoint": checkpoint},
        run_dir / "eval.json",
        lambda: _evaluate(run_dir, run_dir / "eval.json"),
    )
    bundle = stages.run(
        "export",
        {"checkpoint": checkpoint},
        bundle_dir / "manifest.json",
        lambda: _export(run_dir, bundle_dir),
    )
    key = fingerprint({"bundle": bundle["sha256"], "data": data["sha256"]})
    return Built(manifest, bundle_dir, evaluation, key)


def fill_collection(
    http: httpx.Client, stages: Stages, key: str, rows: list[Row], options: DemoOptions
) -> dict[str, int]:
    """Ingest the rows unless this bundle's collection already holds them; return its counts."""
    expected = {m: len(rows) for m in (*options.media, "text")}
    counts: dict[str, int] = http.get("/v1/stats").json()["by_modality"]
    if stages.state.done("ingest", key) and all(counts.get(m, 0) >= n for m, n in expected.items()):
        log.info("ingest: reusing the collection (%d items)", sum(counts.values()))
        stages.reused.append("ingest")
        return counts
    start = time.perf_counter()
    ingest(http, rows, options.media, options.batch_rows)
    stages.seconds["ingest"] = round(time.perf_counter() - start, 1)
    stages.state.record("ingest", key)
    stages.built.append("ingest")
    counts = http.get("/v1/stats").json()["by_modality"]
    return counts


def check_options(options: DemoOptions) -> None:
    """Refuse sizes the demo cannot work with."""
    if not 20 <= options.items <= 100_000:
        raise DemoError(f"--items must be between 20 and 100000, got {options.items}")
    if not 32 <= options.image_size <= 512:
        raise DemoError(f"--image-size must be between 32 and 512, got {options.image_size}")
    if options.epochs < 1:
        raise DemoError(f"--epochs must be at least 1, got {options.epochs}")
    if not 0 <= options.port <= 65535:
        raise DemoError(f"--port must be between 0 and 65535, got {options.port}")
    unknown = sorted(set(options.media) - set(MEDIA_TYPES))
    if unknown:
        raise DemoError(f"unknown media {unknown}; the demo has {sorted(MEDIA_TYPES)}")


@contextmanager
def run_demo(options: DemoOptions) -> Iterator[tuple[DemoReport, Server]]:
    """Build (or reuse) everything, serve, ingest, query; yields the report and the server.

    The server runs until the context exits (callers that keep serving call
    ``server.wait()`` inside it).
    """
    from service.settings import Settings

    check_options(options)
    sock = reserve_port(options.host, options.port)
    server: Server | None = None
    try:
        State.claim(options.workdir)
        stages = Stages(State(options.workdir))
        built = build(options, stages)
        collection_dir = options.workdir / "collection"
        if stages.state.done("ingest", built.collection_key) is None:
            # Codes of another model are not comparable: start that collection afresh.
            stages.state.forget("ingest")
            shutil.rmtree(collection_dir, ignore_errors=True)
        api_key = secrets.token_urlsafe(16)
        settings = Settings(
            bundle_dir=built.bundle_dir,
            data_dir=collection_dir,
            host=options.host,
            port=sock.getsockname()[1],
            api_key=api_key,
        )
        start = time.perf_counter()
        server = Server(settings, sock)
        server.start()
        log.info("service ready at %s in %.1f s", server.url, time.perf_counter() - start)
    except BaseException:
        if server is not None:
            server.stop()
        sock.close()
        raise
    try:
        rows = read_rows(built.manifest, options.media)
        # Held-out items stay out of the collection: the example image query is one of them.
        database = [r for r in rows if r.split != "query"]
        with httpx.Client(base_url=server.url, timeout=120, headers={"X-API-Key": api_key}) as http:
            counts = fill_collection(http, stages, built.collection_key, database, options)
            queries = example_queries(http, rows, options.media)
        yield (
            DemoReport(
                url=server.url + "/",
                api_key=api_key,
                bits=options.bits,
                items=len(rows),
                collection=counts,
                map=built.evaluation["map"],
                num_queries=built.evaluation["num_queries"],
                num_database=built.evaluation["num_database"],
                queries=queries,
                reused=stages.reused,
                built=stages.built,
                seconds=stages.seconds,
            ),
            server,
        )
    finally:
        server.stop()


#: The mAPs the report prints (evaluation has every direction in eval.json).
SHOWN_DIRECTIONS = ("text->image", "image->text", "text->video", "video->text")


def format_report(report: DemoReport, *, serving: bool = True) -> str:
    """The report as the demo prints it; how to reach the service only while it serves."""
    maps = report.map
    lines = [
        f"hashbridge demo: built {', '.join(report.built) or 'nothing'}"
        + (f"; reused {', '.join(report.reused)}" if report.reused else ""),
        f"  model: DSMHN, {report.bits}-bit codes, on {report.items} synthetic clips "
        "of moving shapes with captions and a still of each",
        f"  held-out mAP ({report.num_queries} queries against {report.num_database} items): "
        + ", ".join(f"{d} {maps[d]:.3f}" for d in SHOWN_DIRECTIONS if d in maps),
        "  collection: " + ", ".join(f"{n} {m}" for m, n in sorted(report.collection.items())),
        "",
        f"example queries (top {TOP_K} in the service's order, by the asymmetric score "
        "where it has one: Hamming distance, item, labels; '+' = carries every label asked for)",
    ]
    for q in report.queries:
        target = sorted({h.modality for h in q.hits})
        lines.append(f"  {q.kind} {q.query!r} -> {', '.join(target) or 'nothing'}")
        for h in q.hits:
            mark = "+" if q.relevant(h) else " "
            shown = f"{h.text!r}" if h.text else " ".join(h.labels)
            lines.append(f"    {mark} {h.distance:3d}  {h.item:10s} {shown}")
    if not serving:  # --check stops the service once the queries are answered
        return "\n".join(lines)
    lines += [
        "",
        f"search page: {report.url}",
        "API, e.g.: curl -H 'Content-Type: application/json' "
        f'-d \'{{"text": "a red circle", "k": 5}}\' {report.url}v1/search',
        f"writes (POST/DELETE /v1/items) need the header X-API-Key: {report.api_key}",
    ]
    return "\n".join(lines)
