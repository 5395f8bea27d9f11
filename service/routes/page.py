"""The search page at ``/`` and its assets under ``/static`` (plain files: no build, no CDN)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
#: The page talks only to this origin; thumbnails arrive as blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def search_page() -> FileResponse:
    """The search page."""
    return FileResponse(
        STATIC_DIR / "index.html",
        headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"},
    )


@router.get("/static/index.html")
async def page_file() -> RedirectResponse:
    """The page's own file, sent to / so that it is served only with the page's headers."""
    return RedirectResponse("/", status_code=308)


def install(app: FastAPI) -> None:
    """Serve the page at / and its scripts and styles under /static."""
    app.include_router(router)  # before the mount, so /static/index.html is ours
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
