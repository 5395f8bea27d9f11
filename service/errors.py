"""Typed service errors and the one place that maps every error to RFC 9457 problem+json."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from index.errors import CodeError, ItemError

log = logging.getLogger(__name__)

PROBLEM_TYPE = "application/problem+json"


class ServiceError(Exception):
    """Base of errors a request can end in; ``status`` and ``title`` say how to answer."""

    status = 500
    title = "Internal Server Error"
    slug = "internal"

    def __init__(self, detail: str, *, errors: Sequence[dict[str, Any]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors) if errors else None


class InvalidInput(ServiceError):
    """The request is well-formed HTTP but its content cannot be used."""

    status = 422
    title = "Invalid input"
    slug = "invalid-input"


class OutOfRange(InvalidInput):
    """A number (k, nprobe, an id) is outside what the parameter takes."""

    title = "Out of range"
    slug = "out-of-range"


class MalformedBody(ServiceError):
    """The body cannot be parsed at all (not JSON, or a broken multipart body)."""

    status = 400
    title = "Malformed body"
    slug = "malformed-body"


class HostNotAllowed(ServiceError):
    """The Host header names a host this service does not answer for (DNS rebinding)."""

    status = 400
    title = "Host not allowed"
    slug = "host-not-allowed"


class MediaError(InvalidInput):
    """An uploaded file is not a readable image or clip."""

    title = "Unreadable media"
    slug = "unreadable-media"


class UnsupportedModality(InvalidInput):
    """The bundle has no encoder for the requested modality."""

    title = "Unsupported modality"
    slug = "unsupported-modality"


class PayloadTooLarge(ServiceError):
    """A request, a file, or an image's declared size exceeds a limit."""

    status = 413
    title = "Content too large"
    slug = "too-large"


class UnsupportedMediaType(ServiceError):
    """The request body has a content type the endpoint does not read."""

    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class NotFound(ServiceError):
    status = 404
    title = "Not found"
    slug = "not-found"


class MissingCredentials(ServiceError):
    status = 401
    title = "Unauthorized"
    slug = "missing-api-key"


class BadCredentials(ServiceError):
    status = 403
    title = "Forbidden"
    slug = "bad-api-key"


class CrossSiteWrite(ServiceError):
    """A browser sent a write for another site's page."""

    status = 403
    title = "Forbidden"
    slug = "cross-site-write"


class NotReady(ServiceError):
    status = 503
    title = "Service unavailable"
    slug = "not-ready"


class BundleError(RuntimeError):
    """A model bundle is missing, inconsistent or incompatible; raised at start-up."""


class DataDirError(RuntimeError):
    """The data dir cannot hold the collection (not a folder, a broken store); at start-up."""


PROBLEM_TYPE_PREFIX = "urn:hashbridge:problem:"


def problem_types() -> dict[str, str]:
    """Every problem ``type`` the service answers with, and when: documented in /openapi.json."""
    found: dict[str, str] = {}
    pending: list[type[ServiceError]] = [ServiceError]
    while pending:
        cls = pending.pop(0)
        found.setdefault(f"{PROBLEM_TYPE_PREFIX}{cls.slug}", f"{cls.status} {cls.title}")
        pending += cls.__subclasses__()
    found[f"{PROBLEM_TYPE_PREFIX}invalid-request"] = (
        "422 Invalid request: the body or a parameter does not fit its schema; 'errors' lists each"
    )
    found[f"{PROBLEM_TYPE_PREFIX}http-<status>"] = (
        "<status> refused by HTTP routing: http-404 for an unknown path, http-405 a wrong method"
    )
    return found


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str,
    instance: str | None = None,
    errors: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """Build a problem+json response."""
    body: dict[str, Any] = {
        "type": f"{PROBLEM_TYPE_PREFIX}{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = list(errors)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.detail)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, MissingCredentials) else None
    return problem(
        exc.status,
        exc.title,
        exc.detail,
        slug=exc.slug,
        instance=request.url.path,
        errors=exc.errors,
        headers=headers,
    )


async def _index_error(request: Request, exc: Exception) -> JSONResponse:
    # CodeError / ItemError come from index/ validating what a client sent.
    return problem(422, "Invalid input", str(exc), slug="invalid-input", instance=request.url.path)


#: pydantic's error types for a number outside its bounds: answered as OutOfRange, the
#: problem type the service's own range checks (k past max_k) use, so a client reads one.
RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type")}
        for e in exc.errors()
    ]
    summary = "; ".join(f"{'.'.join(e['loc']) or 'body'}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    out_of_range = all(e["type"] in RANGE_ERRORS for e in errors)
    return problem(
        422,
        OutOfRange.title if out_of_range else "Invalid request",
        f"{summary}{more}",
        slug=OutOfRange.slug if out_of_range else "invalid-request",
        instance=request.url.path,
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = {404: "Not found", 405: "Method not allowed"}.get(exc.status_code, "HTTP error")
    detail = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else {}
    # Routing's own words ("Not Found") say nothing of what to send instead.
    if exc.status_code == 404 and detail == "Not Found":
        detail += f": nothing is served at {request.url.path}; /docs lists the endpoints"
    elif exc.status_code == 405 and "Allow" in headers:
        headers["Allow"] = _allowed_methods(request) or headers["Allow"]
        detail += f": {request.url.path} does not take {request.method}; use {headers['Allow']}"
    return problem(
        exc.status_code,
        title,
        detail,
        slug=f"http-{exc.status_code}",
        instance=request.url.path,
        headers=headers or None,
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path.

    Starlette's 405 names only the first route matching the path, so GET /v1/items/{id}
    hid DELETE on the same path (a route per method).
    """
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        probe = {**request.scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return ", ".join(allowed)


#: nginx's "client closed request": no answer reached the client, and the server did no wrong.
CLIENT_CLOSED = 499


async def _client_disconnected(request: Request, exc: Exception) -> Response:
    # A client that hangs up while sending its body (an aborted upload, a proxy timeout)
    # is no bug: without this it was logged as one and counted as a 500 in /metrics.
    log.info(
        "%s %s: the client disconnected before sending its whole body",
        request.method,
        request.url.path,
    )
    return Response(status_code=CLIENT_CLOSED)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(
        500,
        "Internal Server Error",
        "the server hit a bug; the error has been logged",
        slug="internal",
        instance=request.url.path,
    )


def install_error_handlers(app: FastAPI) -> None:
    """Route every error a request can raise through problem+json."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(CodeError, _index_error)
    app.add_exception_handler(ItemError, _index_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnected)
    app.add_exception_handler(Exception, _unexpected)
