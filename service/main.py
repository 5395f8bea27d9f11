"""``serve(settings)``: run the service under uvicorn (the CLI's ``serve`` calls this)."""

from __future__ import annotations

import logging

import uvicorn

from service.app import create_app
from service.encoders import load_bundle
from service.runtime import check_data_dir
from service.settings import Settings

log = logging.getLogger(__name__)


def serve(settings: Settings) -> None:
    """Load and verify the bundle, then serve until SIGINT/SIGTERM (which snapshot the index).

    The bundle is loaded and the data dir checked before the port is bound, so a bad
    bundle or data dir fails with its own message (BundleError, DataDirError) instead of
    a failed uvicorn start-up.
    """
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # FAISS logs each CPU-specific build it tries and cannot find (with the import error)
    # at INFO: noise before the service's own start-up lines.
    logging.getLogger("faiss.loader").setLevel(max(logging.WARNING, logging.root.level))
    bundle = load_bundle(settings.bundle_dir, settings.encoder_device)
    check_data_dir(settings.data_dir, bundle, settings.index_backend)
    app = create_app(settings, bundle=bundle)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )
