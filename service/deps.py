"""FastAPI dependencies: the loaded runtime and API-key checks.

They are coroutines because they never block: FastAPI runs a plain ``def`` dependency in
its thread pool, a hop that cost more than ingesting a few texts.
"""

from __future__ import annotations

import hmac
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import BadCredentials, CrossSiteWrite, MissingCredentials, NotReady
from service.runtime import Runtime
from service.settings import Settings

# auto_error=False: a missing key is answered by our own problem+json, not FastAPI's.
_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)
_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_runtime(request: Request) -> Runtime:
    """The loaded runtime, or 503 while the service starts or stops."""
    runtime: Runtime | None = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise NotReady("the service is starting or stopping; retry shortly")
    return runtime


#: Sec-Fetch-Site values of a request that another site's page made the browser send.
FOREIGN_FETCH_SITES = frozenset({"cross-site", "same-site"})


def _refuse_cross_site(request: Request) -> None:
    """Refuse a write that a browser sent on behalf of another site's page.

    A multipart POST is a CORS "simple" request: any web page could make a visitor's browser
    send one to a keyless service on 127.0.0.1 and plant or replace items (it cannot read the
    answer, so no legitimate page does this). Sec-Fetch-Site is set by the browser, not the
    page; older browsers are judged by Origin against Host.
    """
    fetch_site = request.headers.get("sec-fetch-site", "").lower()
    origin = request.headers.get("origin")
    if fetch_site:
        foreign = fetch_site in FOREIGN_FETCH_SITES
    else:
        foreign = origin is not None and urlsplit(origin).netloc != request.headers.get("host")
    if foreign:
        raise CrossSiteWrite(
            f"writes from another site's page are refused (Origin: {origin or 'unknown'}); "
            "send them from this service's own origin or from a non-browser client"
        )


def _check_key(settings: Settings, header: str | None, bearer: str | None) -> None:
    if settings.api_key is None:
        return
    presented = header or bearer
    if not presented:
        raise MissingCredentials(
            "this endpoint needs an API key: send it in the X-API-Key header "
            "or as 'Authorization: Bearer <key>'"
        )
    expected = settings.api_key.get_secret_value().encode()
    if not hmac.compare_digest(presented.encode(), expected):
        raise BadCredentials("the API key is not valid; check HASHBRIDGE_API_KEY on the server")


async def require_write(
    request: Request,
    header: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Guard a write endpoint from other sites' pages and with the API key (when one is set)."""
    _refuse_cross_site(request)
    _check_key(get_settings(request), header, bearer.credentials if bearer else None)


async def require_read(
    request: Request,
    header: Annotated[str | None, Security(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> None:
    """Guard a read endpoint when ``protect_reads`` is set."""
    settings = get_settings(request)
    if settings.protect_reads:
        _check_key(settings, header, bearer.credentials if bearer else None)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
