"""``create_app(settings)``: the FastAPI application and its lifespan."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from service import openapi
from service.encoders import Bundle
from service.errors import install_error_handlers
from service.metrics import Metrics
from service.middleware import AllowedHosts, BodyLimit, RequestMetrics
from service.routes import docs, encode, health, items, page, search
from service.runtime import open_runtime
from service.schemas import EncodeRequest, IngestRequest, LookupRequest, SearchRequest
from service.settings import Settings, allowed_host_names

log = logging.getLogger(__name__)

DESCRIPTION = """Cross-modal retrieval over binary hash codes.

Texts, images (and video clips, with a video bundle) are encoded into {bits}-bit codes by
the encoders of a model bundle and stored in a Hamming index; a text finds images and an
image finds texts. Errors are RFC 9457 `application/problem+json`; `detail` says what to fix.
Write endpoints need the API key (`X-API-Key` or `Authorization: Bearer`) when one is set.
"""


def create_app(settings: Settings, *, bundle: Bundle | None = None) -> FastAPI:
    """Build the app; the lifespan loads the bundle (unless given) and opens the collection."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await open_runtime(settings, bundle, metrics)
        app.state.runtime = runtime
        for modality in runtime.bundle.modalities:
            # Each series exists at 0 from the start, so its first increment shows in rate().
            metrics.items_written.inc(0, modality=modality)
            metrics.items_deleted.inc(0, modality=modality)
        # The bundle, torch and FAISS leave millions of long-lived objects that every full
        # garbage collection would traverse again: 80-130 ms pauses in the middle of
        # requests. Frozen, collections only walk what requests allocate.
        gc.collect()
        gc.freeze()
        log.info(
            "ready: %s bundle (%d bits, %s), %d items in %s",
            runtime.bundle.method,
            runtime.bundle.bits,
            ", ".join(runtime.bundle.modalities),
            len(runtime.collection),
            settings.data_dir,
        )
        try:
            yield
        finally:
            app.state.runtime = None
            gc.unfreeze()
            await runtime.close()
            log.info("stopped; indexes snapshotted")

    app = FastAPI(
        title="hashbridge",
        version="0.1.0",
        description=DESCRIPTION.format(bits="16-128"),
        lifespan=lifespan,
        # /docs is service.routes.docs; ReDoc, CDN-only like it, is left out.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.runtime = None
    install_error_handlers(app)
    app.add_middleware(BodyLimit, limit=settings.max_request_bytes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    # Outermost: a refused Host reaches nothing else (it is not counted under any route).
    app.add_middleware(AllowedHosts, allowed=allowed_host_names(settings))
    for module in (items, search, encode, health, docs):
        app.include_router(module.router)
    page.install(app)
    openapi.install(app, [IngestRequest, SearchRequest, EncodeRequest, LookupRequest], settings)
    if settings.api_key is None:
        log.warning("no HASHBRIDGE_API_KEY set: write endpoints are open to anyone who can connect")
    return app
