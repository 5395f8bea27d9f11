"""ASGI middleware: request-body size limit and request latency metrics."""

from __future__ import annotations

import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import HostNotAllowed, PayloadTooLarge, problem
from service.metrics import Metrics

#: No endpoint reads a body of these: the only receive() there is a file response's
#: disconnect listener, and refusing that one broke off the page mid-response.
BODILESS_METHODS = frozenset({"GET", "HEAD"})


class BodyLimit:
    """Refuse bodies over ``limit`` bytes: by Content-Length before any is read, else as read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS_METHODS:
            await self.app(scope, receive, send)
            return
        detail = (
            f"the request body exceeds {self.limit} bytes (HASHBRIDGE_MAX_REQUEST_BYTES); "
            "send fewer or smaller files per call"
        )
        length = dict(scope["headers"]).get(b"content-length")
        declared_too_large = length is not None and length.isdigit() and int(length) > self.limit
        received = 0

        async def limited() -> Message:
            nonlocal received
            if declared_too_large:
                # Refused before any of it is read, but from inside the endpoint's body read as
                # in the streamed case: answered before routing, it was counted under no route.
                raise PayloadTooLarge(detail)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the endpoint's body read, so the error mapping answers it.
                    raise PayloadTooLarge(detail)
            return message

        await self.app(scope, limited, send)


#: Methods counted under their own label; any other (clients may send any token) is "other",
#: so that no client can grow the metrics without bound.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestMetrics:
    """Observe each request's latency by method, route template and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route: Any = scope.get("route")
            self.metrics.requests.observe(
                time.perf_counter() - start,
                method=scope["method"] if scope["method"] in KNOWN_METHODS else "other",
                route=getattr(route, "path", "unmatched"),
                status=str(status),
            )


class AllowedHosts:
    """Answer only requests whose Host is allowed: 400 for any other, before any route runs.

    A page on another site can rebind its own domain to 127.0.0.1 and then send requests
    that carry its Host and Origin, which the cross-site guard cannot tell from ours.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str] | None) -> None:
        self.app = app
        self.allowed = allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.allowed is None:
            await self.app(scope, receive, send)
            return
        raw = dict(scope["headers"]).get(b"host")
        name = host_name(raw.decode("latin-1")) if raw is not None else None
        # No Host at all (HTTP/1.0) is no browser's request: rebinding needs one.
        if name is None or _allowed(name, self.allowed):
            await self.app(scope, receive, send)
            return
        response = problem(
            HostNotAllowed.status,
            HostNotAllowed.title,
            f"this service does not answer for host {name!r}; add it to "
            "HASHBRIDGE_ALLOWED_HOSTS if it is really this service's name",
            slug=HostNotAllowed.slug,
            instance=scope.get("path"),
        )
        await response(scope, receive, send)


def host_name(host: str) -> str:
    """The name part of a Host header value, lower-cased: no port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


def _allowed(name: str, allowed: frozenset[str]) -> bool:
    if name in allowed:
        return True
    return any(p.startswith("*.") and name.endswith(p[1:]) for p in allowed)
