"""The demo's side of the service: run it in-process on a reserved port, ingest, query.

Everything here talks to the service over real HTTP, as any client would.
"""

from __future__ import annotations

import csv
import json
import logging
import signal
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from tqdm import tqdm

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)

#: Media kinds in the demo and the content type their files are uploaded with.
MEDIA_TYPES = {"image": "image/png", "video": "video/mp4"}
#: Text queries the demo shows for each media kind, with the labels a relevant result must
#: carry: a still shows colour and shape, only a clip shows which way its object moves.
TEXT_QUERIES = {
    "image": (
        ("a red circle", {"red", "circle"}),
        ("blue square", {"blue", "square"}),
        ("a white star", {"white", "star"}),
        ("green triangle on a grey background", {"green", "triangle"}),
    ),
    "video": (
        ("a red circle moves to the right", {"circle_rightwards"}),
        ("a red circle moves to the left", {"circle_leftwards"}),
        ("a blue square falls", {"square_falls"}),
        ("a green triangle grows quickly", {"triangle_grows"}),
    ),
}
#: Next to the demo manifest: trained label -> the labels the collection's items carry.
SHOWN_LABELS_FILE = "shown-labels.json"
#: The example media query is a held-out item of this class, looking for its captions.
MEDIA_QUERY_CLASS = "circle_rightwards"
TOP_K = 5
#: An example query passes when its first result and this many of the top K are relevant.
MIN_RELEVANT = 3


class DemoError(RuntimeError):
    """A demo run that cannot go on; the message says what to do."""


@dataclass(frozen=True)
class Row:
    """One demo item as the manifest lists it."""

    id: str
    files: dict[str, Path]
    text: str
    labels: list[str]
    split: str


@dataclass(frozen=True)
class Hit:
    """One search result as the demo shows it."""

    id: int
    item: str
    modality: str
    distance: int
    # The asymmetric score the service ranked by (lower is nearer); None when it ranked by
    # Hamming distance alone.
    score: float | None
    labels: list[str]
    text: str | None


@dataclass(frozen=True)
class ExampleQuery:
    """An example query, its results, and which of them carry the expected labels."""

    query: str
    kind: str
    expected: set[str]
    hits: list[Hit]

    def relevant(self, hit: Hit) -> bool:
        """Whether a result carries every expected label."""
        return self.expected <= set(hit.labels)

    def problem(self) -> str | None:
        """Why the results are not good enough, or None when they are."""
        good = [self.relevant(h) for h in self.hits]
        if len(good) < TOP_K:
            return f"{self.query!r} returned {len(good)} results, expected {TOP_K}"
        if not good[0] or sum(good) < MIN_RELEVANT:
            return (
                f"{self.query!r}: {sum(good)} of the top {TOP_K} results carry "
                f"{sorted(self.expected)} (the first {'does' if good[0] else 'does not'})"
            )
        return None


def read_rows(manifest: Path, media: tuple[str, ...]) -> list[Row]:
    """The demo manifest's rows (plain csv: a reused demo never imports model/).

    Each trained label is widened to the labels the collection shows for it (colour, shape
    and class), listed in `SHOWN_LABELS_FILE` next to the manifest.
    """
    shown = json.loads((manifest.parent / SHOWN_LABELS_FILE).read_text(encoding="utf-8"))
    with manifest.open(newline="", encoding="utf-8") as f:
        return [
            Row(
                id=r["id"],
                files={m: manifest.parent / r[m] for m in media},
                text=r["text"],
                labels=[s for label in r["labels"].split("|") for s in shown.get(label, [label])],
                split=r.get("split") or "train",
            )
            for r in csv.DictReader(f)
        ]


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind the service's socket now, so a busy port fails before minutes of training."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise DemoError(
            f"cannot listen on {host}:{port} ({exc.strerror}); another program (maybe an "
            "earlier demo) uses it: stop it or pick another port with --port"
        ) from None
    return sock


class Server:
    """The service app under uvicorn in a background thread, on a reserved socket."""

    def __init__(self, settings: Settings, sock: socket.socket) -> None:
        import uvicorn

        from service.app import create_app
        from service.encoders import load_bundle

        app = create_app(settings, bundle=load_bundle(settings.bundle_dir, settings.encoder_device))
        config = uvicorn.Config(app, log_level="warning", access_log=False)
        self._server = uvicorn.Server(config)
        self._sock = sock
        host, port = sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        # Waiting on an Event, not Thread.join: a Ctrl-C that interrupts join() can leave the
        # thread marked as finished while uvicorn still runs (CPython bpo-45274's fix).
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-server", daemon=True)

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._finished.set()

    def start(self, timeout: float = 120.0) -> None:
        """Start serving and wait until /readyz answers."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._finished.is_set():
                raise DemoError("the service stopped during start-up; its log above says why")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise DemoError(f"the service did not become ready within {timeout:.0f} s")

    def wait(self) -> None:
        """Block until the server stops; Ctrl-C or SIGTERM stop it gracefully (snapshots)."""

        def stop_serving(signum: int, frame: object) -> None:
            self._server.should_exit = True

        previous = signal.signal(signal.SIGTERM, stop_serving)
        try:
            while not self._finished.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            self.stop()

    def stop(self) -> None:
        """Shut down gracefully and wait."""
        self._server.should_exit = True
        if self._thread.is_alive() and self._finished.wait(60):
            self._thread.join(5)
        self._sock.close()


def ingest(http: httpx.Client, rows: list[Row], media: tuple[str, ...], batch_rows: int) -> None:
    """Send every row's media files and caption through POST /v1/items, in batches."""
    with tqdm(total=len(rows) * (len(media) + 1), desc="ingest", unit="item") as bar:
        for start in range(0, len(rows), batch_rows):
            batch = rows[start : start + batch_rows]
            files, client_ids, metadata = [], [], []
            for row in batch:
                for m in media:
                    path = row.files[m]
                    files.append(("files", (path.name, path.read_bytes(), MEDIA_TYPES[m])))
                    client_ids.append(f"{row.id}/{m}")
                    metadata.append(_meta(row))
            texts = [
                {"text": r.text, "client_id": f"{r.id}/text", "metadata": _meta(r)} for r in batch
            ]
            form = {
                "client_ids": json.dumps(client_ids),
                "metadata": json.dumps(metadata),
                "items": json.dumps(texts),
            }
            r = http.post("/v1/items", files=files, data=form)
            if r.status_code != 200:
                raise DemoError(f"ingest failed with {r.status_code}: {_detail(r)}")
            bar.update(len(files) + len(texts))


def example_queries(
    http: httpx.Client, rows: list[Row], media: tuple[str, ...]
) -> list[ExampleQuery]:
    """Text queries for each media kind, and a held-out picture and clip looking for captions."""
    out = []
    for m in media:
        for text, expected in TEXT_QUERIES[m]:
            body = {"text": text, "k": TOP_K, "modalities": [m]}
            out.append(ExampleQuery(text, "text", expected, _search(http, json=body)))
    # An item the model never saw; its still can only be judged by colour and shape.
    held_out = [r for r in rows if r.split == "query"] or rows
    row = next((r for r in held_out if MEDIA_QUERY_CLASS in r.labels), held_out[0])
    colour_shape, cls = set(row.labels[:2]), row.labels[-1]
    for m in media:
        path = row.files[m]
        files = {"file": (path.name, path.read_bytes(), MEDIA_TYPES[m])}
        hits = _search(http, files=files, data={"k": str(TOP_K), "modalities": "text"})
        expected = colour_shape if m == "image" else {cls}
        out.append(ExampleQuery(f"{path.name} ({', '.join(sorted(expected))})", m, expected, hits))
    return out


def _search(http: httpx.Client, **request: Any) -> list[Hit]:
    r = http.post("/v1/search", **request)
    if r.status_code != 200:
        raise DemoError(f"search failed with {r.status_code}: {_detail(r)}")
    return [
        Hit(
            id=h["id"],
            item=h["metadata"].get("item", ""),
            modality=h["modality"],
            distance=h["distance"],
            score=h.get("score"),
            labels=h["metadata"].get("labels", []),
            text=h["metadata"].get("text"),
        )
        for h in r.json()["results"]
    ]


def _meta(row: Row) -> dict[str, Any]:
    return {"item": row.id, "labels": row.labels}


def _detail(r: httpx.Response) -> str:
    try:
        return str(r.json().get("detail", r.text))
    except ValueError:
        return r.text
