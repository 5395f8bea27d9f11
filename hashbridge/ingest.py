"""`hashbridge ingest`: send a folder's or a manifest's items to a running service.

Items go in batches through ``POST /v1/items``, a few requests at a time. The service
stores a batch whole or not at all and names each item it refuses, so a refused batch is
sent again without those items: one bad file never stops the rest. A 503 or a dropped
connection (a server restarting) is retried with exponential backoff. Before anything is
sent, ``POST /v1/items/lookup`` says which client ids are stored already: a rerun skips them,
and since a re-sent client id replaces its item, a batch sent twice (its answer lost to a
crash) is never stored twice.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx
from tqdm import tqdm

from hashbridge.ingest_sources import Entry

log = logging.getLogger(__name__)

MiB = 1 << 20
#: What the server answers while it starts, stops or is overloaded, and proxies in front of it.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
LOOKUP_CHUNK = 1000
#: Used when the server's /v1/stats predates its "limits".
DEFAULT_LIMITS = {"max_batch_items": 256, "max_upload_bytes": 20 * MiB, "max_text_chars": 10_000}


class IngestError(Exception):
    """The run cannot go on (wrong key, no service at the URL): one line for the user."""


@dataclass(frozen=True)
class IngestOptions:
    """How to reach the service and how hard to push it."""

    url: str
    api_key: str | None = None
    batch_items: int = 32
    batch_bytes: int = 32 * MiB
    concurrency: int = 2
    retries: int = 8
    backoff_s: float = 0.5
    max_backoff_s: float = 10.0
    timeout_s: float = 300.0
    progress: bool | None = None  # None: when stderr is a terminal


@dataclass(frozen=True)
class Refusal:
    """An item that was not stored, and why."""

    name: str
    reason: str


@dataclass
class IngestReport:
    """What a run did."""

    total: int = 0
    ingested: int = 0
    skipped: int = 0
    refused: list[Refusal] = field(default_factory=list)
    failed: list[Refusal] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every item is stored (sent now or before)."""
        return not self.refused and not self.failed

    def summary_lines(self) -> list[str]:
        """The summary a user reads: counts, then each item not stored and why."""
        rate = self.ingested / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"{self.total} items: {self.ingested} ingested, {self.skipped} skipped (already "
            f"stored), {len(self.refused)} refused, {len(self.failed)} failed "
            f"({self.seconds:.1f} s, {rate:.1f} items/s)"
        ]
        lines += [f"refused {r.name}: {r.reason}" for r in self.refused]
        lines += [f"failed {r.name}: {r.reason}" for r in self.failed]
        return lines


class _GaveUp(Exception):
    """The server did not answer a request after every retry."""


@dataclass
class _Outcome:
    ingested: int = 0
    refused: list[Refusal] = field(default_factory=list)
    failed: list[Refusal] = field(default_factory=list)


def ingest(entries: Sequence[Entry], options: IngestOptions) -> IngestReport:
    """Send every entry not stored yet; refusals are reported, never raised."""
    start = time.perf_counter()
    report = IngestReport(total=len(entries))
    headers = {"X-API-Key": options.api_key} if options.api_key else {}
    limits = httpx.Limits(max_connections=options.concurrency + 1)
    timeout = httpx.Timeout(options.timeout_s, connect=10.0)
    with httpx.Client(
        base_url=options.url.rstrip("/"), headers=headers, timeout=timeout, limits=limits
    ) as http:
        sender = _Sender(http, options)
        try:
            server_limits = sender.limits()
            stored = sender.stored(entries)
        except _GaveUp as exc:
            raise IngestError(f"cannot reach the service at {options.url}: {exc}") from None
        report.skipped = sum(1 for e in entries if e.client_id in stored)
        pending = []
        for entry in entries:
            if entry.client_id in stored:
                continue
            problem = _local_problem(entry, server_limits)
            if problem:
                report.refused.append(Refusal(entry.name, problem))
            else:
                pending.append(entry)
        max_items = min(options.batch_items, server_limits["max_batch_items"])
        batches = list(_batches(pending, max_items, options.batch_bytes))
        # tqdm's disable=None: shown only on a terminal.
        disable = None if options.progress is None else not options.progress
        with tqdm(total=len(pending), desc="ingest", unit="item", disable=disable) as bar:
            for outcome in _run_all(batches, sender.send, options.concurrency, bar):
                report.ingested += outcome.ingested
                report.refused += outcome.refused
                report.failed += outcome.failed
    report.seconds = time.perf_counter() - start
    return report


def _run_all(
    batches: list[list[Entry]],
    send: Callable[[list[Entry]], _Outcome],
    concurrency: int,
    bar: tqdm[Any],
) -> Iterator[_Outcome]:
    """Send the batches ``concurrency`` at a time; a fatal error stops the rest."""
    lock = threading.Lock()
    not_stored = 0

    def one(batch: list[Entry]) -> _Outcome:
        nonlocal not_stored
        outcome = send(batch)
        with lock:
            bar.update(len(batch))
            if outcome.refused or outcome.failed:
                not_stored += len(outcome.refused) + len(outcome.failed)
                bar.set_postfix(not_stored=not_stored)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures: list[Future[_Outcome]] = [pool.submit(one, b) for b in batches]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            if future.exception() is not None:
                for other in futures:
                    other.cancel()
                raise future.exception()  # type: ignore[misc]
        for future in futures:
            yield future.result()


def _batches(entries: Sequence[Entry], max_items: int, max_bytes: int) -> Iterator[list[Entry]]:
    batch: list[Entry] = []
    size = 0
    for entry in entries:
        item_size = _size(entry)
        if batch and (len(batch) >= max_items or size + item_size > max_bytes):
            yield batch
            batch, size = [], 0
        batch.append(entry)
        size += item_size
    if batch:
        yield batch


def _size(entry: Entry) -> int:
    if entry.path is not None:
        return entry.path.stat().st_size
    return len((entry.text or "").encode())


def _local_problem(entry: Entry, limits: dict[str, int]) -> str | None:
    """What the server would refuse without being asked (or what cannot be read here)."""
    if entry.path is not None:
        try:
            size = entry.path.stat().st_size
        except OSError as exc:
            return f"cannot read {entry.path}: {exc.strerror or exc}"
        if size > limits["max_upload_bytes"]:
            return (
                f"the file is {size} bytes; the service takes files up to "
                f"{limits['max_upload_bytes']} (HASHBRIDGE_MAX_UPLOAD_BYTES)"
            )
        return None
    text = entry.text or ""
    if not text.strip():
        return "the text is empty"
    if len(text) > limits["max_text_chars"]:
        return (
            f"the text has {len(text)} characters; the service takes up to "
            f"{limits['max_text_chars']} (HASHBRIDGE_MAX_TEXT_CHARS)"
        )
    return None


class _Sender:
    """Requests to one service, with retries; safe to share between threads."""

    def __init__(self, http: httpx.Client, options: IngestOptions) -> None:
        self.http = http
        self.options = options

    def limits(self) -> dict[str, int]:
        """The server's limits, from /v1/stats (which also proves the URL and key)."""
        r = self._request("GET", "/v1/stats", name="/v1/stats")
        self._fatal(r)
        if r.status_code != 200:
            raise IngestError(f"{self.options.url}/v1/stats answered {_reason(r)}")
        try:
            given = r.json().get("limits") or {}
        except ValueError:
            raise IngestError(f"{self.options.url} is not a hashbridge service") from None
        return {**DEFAULT_LIMITS, **{k: int(v) for k, v in given.items()}}

    def stored(self, entries: Sequence[Entry]) -> set[str]:
        """The client ids among the entries' that the service holds already."""
        ids = [e.client_id for e in entries]
        found: set[str] = set()
        for start in range(0, len(ids), LOOKUP_CHUNK):
            chunk = ids[start : start + LOOKUP_CHUNK]
            r = self._request("POST", "/v1/items/lookup", name="lookup", json={"client_ids": chunk})
            self._fatal(r)
            if r.status_code != 200:
                raise IngestError(f"looking up stored items failed: {_reason(r)}")
            found.update(hit["client_id"] for hit in r.json()["found"])
        return found

    def send(self, batch: list[Entry]) -> _Outcome:
        """Store what the service takes of a batch; name each item it refuses."""
        outcome = _Outcome()
        work = [batch]
        while work:
            part = work.pop()
            files = [e for e in part if e.path is not None]
            texts = [e for e in part if e.path is None]
            ordered = files + texts  # the order the service numbers items in
            contents, unreadable = _read_files(files)
            if unreadable:
                # A file that went away or became unreadable since the scan.
                outcome.refused += unreadable
                gone = {r.name for r in unreadable}
                rest = [e for e in ordered if e.name not in gone]
                if rest:
                    work.append(rest)
                continue
            body = _form(files, contents, texts)
            try:
                r = self._request("POST", "/v1/items", name=ordered[0].name, **body)
            except _GaveUp as exc:
                outcome.failed += [Refusal(e.name, str(exc)) for e in ordered]
                continue
            self._fatal(r)
            if r.status_code == 200:
                outcome.ingested += len(ordered)
                continue
            problem = _problem(r)
            per_item = {
                e["item"]: f"{e.get('title', 'refused')}: {e.get('detail', '')}"
                for e in problem.get("errors") or []
                if isinstance(e, dict) and isinstance(e.get("item"), int)
            }
            if per_item and all(0 <= i < len(ordered) for i in per_item):
                outcome.refused += [Refusal(ordered[i].name, why) for i, why in per_item.items()]
                rest = [e for i, e in enumerate(ordered) if i not in per_item]
                if rest:
                    work.append(rest)
            elif len(ordered) == 1:
                outcome.refused.append(Refusal(ordered[0].name, _reason(r)))
            else:
                # A refusal of the batch as a whole (too large, say): halve it until the
                # culprit stands alone.
                half = len(ordered) // 2
                work += [ordered[half:], ordered[:half]]
        return outcome

    def _request(self, method: str, path: str, *, name: str, **kwargs: Any) -> httpx.Response:
        """One request, retried on 503-like answers and dropped connections."""
        options = self.options
        last = ""
        for attempt in range(options.retries + 1):
            if attempt:
                delay = min(options.max_backoff_s, options.backoff_s * 2 ** (attempt - 1))
                log.info("retrying %s in %.1f s (%s)", name, delay, last)
                time.sleep(delay)
            try:
                r = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if r.status_code not in RETRY_STATUSES:
                return r
            last = _reason(r)
        raise _GaveUp(f"no answer after {options.retries + 1} tries (last: {last})")

    def _fatal(self, r: httpx.Response) -> None:
        if r.status_code in (401, 403):
            raise IngestError(
                f"the service refused the API key: {_reason(r)} (give it with --api-key or "
                "HASHBRIDGE_API_KEY)"
            )


def _read_files(files: list[Entry]) -> tuple[list[bytes], list[Refusal]]:
    """Each file's bytes, or why it cannot be read."""
    contents, unreadable = [], []
    for entry in files:
        assert entry.path is not None
        try:
            contents.append(entry.path.read_bytes())
        except OSError as exc:
            unreadable.append(Refusal(entry.name, f"cannot read it: {exc.strerror or exc}"))
    return contents, unreadable


def _form(files: list[Entry], contents: list[bytes], texts: list[Entry]) -> dict[str, Any]:
    """The multipart body of POST /v1/items for these files (read) and texts."""
    parts = []
    for entry, data in zip(files, contents, strict=True):
        assert entry.path is not None
        parts.append(("files", (entry.path.name, data)))
    data: dict[str, str] = {}
    if files:
        data["client_ids"] = json.dumps([e.client_id for e in files])
        data["metadata"] = json.dumps([e.metadata for e in files])
    if texts:
        data["items"] = json.dumps(
            [{"text": e.text, "client_id": e.client_id, "metadata": e.metadata} for e in texts]
        )
    if not parts:
        # httpx sends a form without files as urlencoded; the service reads multipart only.
        return {"files": {"items": (None, data["items"])}}
    return {"files": parts, "data": data}


def _problem(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _reason(r: httpx.Response) -> str:
    problem = _problem(r)
    if problem.get("detail"):
        return f"{r.status_code} {problem.get('title', '')}: {problem['detail']}"
    return f"{r.status_code} {r.reason_phrase}"
