"""The interactive API docs at ``/docs``, which say so where their scripts cannot load.

FastAPI's Swagger UI page loads its scripts and styles from cdn.jsdelivr.net; a browser
without internet access (a common place for a service over one's own media) got a blank
page. The page now holds a note that Swagger UI replaces once it loads. No offline copy of
Swagger UI on PyPI renders OpenAPI 3.1, which FastAPI writes.
"""

from __future__ import annotations

import re

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

OFFLINE_NOTE = (
    '<div id="swagger-ui"><p style="font-family: sans-serif; margin: 2em">'
    "This API explorer loads Swagger UI from cdn.jsdelivr.net, which this browser cannot "
    'reach. The API description it shows is at <a href="/openapi.json">/openapi.json</a> '
    '(any OpenAPI viewer reads it), and the search page at <a href="/">/</a> needs no '
    "internet.</p></div>"
)
_EMPTY_MOUNT = re.compile(r'<div id="swagger-ui">\s*</div>')


@router.get("/docs")
async def docs() -> HTMLResponse:
    """Swagger UI over /openapi.json, with a note for browsers that cannot load it."""
    page = get_swagger_ui_html(openapi_url="/openapi.json", title="hashbridge API")
    html = _EMPTY_MOUNT.sub(OFFLINE_NOTE, bytes(page.body).decode(), count=1)
    return HTMLResponse(html)
