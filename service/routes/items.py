"""POST /v1/items (batch ingest), GET and DELETE /v1/items/{id}, its thumbnail, GET /v1/stats."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BeforeValidator, Field

from service import forms, pipeline, thumbnails
from service.deps import RuntimeDep, require_read, require_write
from service.errors import InvalidInput
from service.openapi import (
    ITEM_PROBLEM_RESPONSES,
    PROBLEM_RESPONSES,
    body,
    files_field,
    json_body,
    problems,
    text_field,
)
from service.pipeline import ItemInput
from service.runtime import Runtime
from service.schemas import (
    IngestRequest,
    IngestResponse,
    Item,
    Limits,
    LookupRequest,
    LookupResponse,
    Stats,
    TextItem,
)

router = APIRouter(prefix="/v1", tags=["items"])


def _digits_only(value: object) -> object:
    # int() reads "1_0" as 10 and pydantic's lax mode "1.0" as 1: a path that is not the
    # id as written must not reach (or delete) another item.
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("an item id is written in decimal digits only, e.g. /v1/items/42")
    return value


#: Ids are SQLite integers: a larger number cannot name an item, so it is refused up front.
# The bounds as a Field after Path: given to Path next to a validator, FastAPI wrote them
# into the schema as "ge"/"le", which no client reads.
ItemId = Annotated[
    int,
    Path(description="The item's id (decimal digits)"),
    Field(ge=0, le=2**63 - 1),
    BeforeValidator(_digits_only),
]

FORM_FIELDS = ("files", "client_ids", "metadata", "items")
_FORM_DOC = {
    "files": files_field("Images (or clips, with a video bundle) to ingest"),
    "client_ids": text_field(
        'JSON array aligned with files, e.g. ["a", null]; null leaves an item without one'
    ),
    "metadata": text_field('JSON array of objects aligned with files, e.g. [{"tag": "cat"}, {}]'),
    "items": text_field("JSON array of text items, as in the JSON body, stored after the files"),
}


@router.post(
    "/items",
    response_model=IngestResponse,
    summary="Ingest a batch of texts and/or files (all or nothing)",
    description=(
        'Send **application/json** `{"items": [{"text", "client_id", "metadata"}]}` '
        "for texts, or **multipart/form-data** with `files` (plus optional JSON-array fields "
        "`client_ids` and `metadata` aligned with them, and `items` for texts). The whole "
        "batch is validated and encoded before one write; any problem refuses all of it. "
        "Re-sending a client_id replaces that item and keeps its id. Results are in request "
        "order: files first, then texts."
    ),
    dependencies=[Depends(require_write)],
    openapi_extra=body(
        IngestRequest,
        _FORM_DOC,
        {"items": [{"text": "a dog on the beach", "client_id": "cap-1", "metadata": {}}]},
        form_rule={"anyOf": [{"required": ["files"]}, {"required": ["items"]}]},
    ),
    responses=PROBLEM_RESPONSES,
)
async def ingest_items(request: Request, rt: RuntimeDep) -> Response:
    """Ingest a batch."""
    if forms.body_kind(request) == "json":
        texts = (await forms.read_json(request, IngestRequest)).items
        items = [_text_input(t) for t in texts]
    else:
        items = await _form_items(request, rt)
    written = await pipeline.ingest(rt, items)
    # Plain dicts with IngestedItem's fields, serialised once: building and re-validating a
    # pydantic model per item cost more than bag-of-words encoding itself (bench.serving).
    return JSONResponse(
        {
            "items": [
                {
                    "id": w.id,
                    "client_id": w.client_id,
                    "modality": w.encoded.modality,
                    "code": w.encoded.hex,
                    "filename": w.encoded.filename,
                    "known_tokens": w.encoded.known_tokens,
                }
                for w in written
            ]
        }
    )


@router.post(
    "/items/lookup",
    response_model=LookupResponse,
    summary="Which of these client ids are stored (and under which id)",
    description="A client that ingests a folder asks this first, so a rerun skips what is in.",
    dependencies=[Depends(require_read)],
    openapi_extra=json_body(LookupRequest, {"client_ids": ["photos/beach.jpg"]}),
    responses=PROBLEM_RESPONSES,
)
async def lookup_items(request: Request, rt: RuntimeDep) -> Response:
    """Look up stored items by client id."""
    forms.body_kind(request, accept=("json",))
    wanted = (await forms.read_json(request, LookupRequest)).client_ids
    found = await pipeline.lookup(rt, wanted)
    return JSONResponse({"found": [{"client_id": c, "id": i, "modality": m} for c, i, m in found]})


@router.get(
    "/items/{item_id}",
    response_model=Item,
    dependencies=[Depends(require_read)],
    responses=ITEM_PROBLEM_RESPONSES,
)
async def get_item(item_id: ItemId, rt: RuntimeDep) -> Item:
    """Return one stored item."""
    item = await pipeline.get_item(rt, item_id)
    return Item(
        id=item.id,
        client_id=item.client_id,
        modality=item.modality,
        code=item.code.hex(),
        metadata=item.metadata,
        created_at=item.created_at,
    )


@router.get(
    "/items/{item_id}/thumbnail",
    response_class=Response,
    dependencies=[Depends(require_read)],
    responses={
        200: {"content": {thumbnails.MEDIA_TYPE: {}}, "description": "A small JPEG"},
        304: {"description": "Not modified: If-None-Match holds the current ETag"},
        **ITEM_PROBLEM_RESPONSES,
    },
)
async def get_thumbnail(item_id: ItemId, request: Request, rt: RuntimeDep) -> Response:
    """The small JPEG stored with an image item (404 for texts and items without one)."""
    data = await thumbnails.get_thumbnail(rt, item_id)
    # Re-ingesting a client id keeps the item id but changes the picture: revalidate by ETag.
    etag = '"' + hashlib.sha1(data, usedforsecurity=False).hexdigest() + '"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=thumbnails.MEDIA_TYPE, headers=headers)


# HEAD too, left out of the API docs: caches and link checkers ask whether an item or its
# thumbnail is there (and its ETag) without fetching it.
for _path, _read in (("/items/{item_id}", get_item), ("/items/{item_id}/thumbnail", get_thumbnail)):
    router.add_api_route(
        _path,
        _read,
        methods=["HEAD"],
        dependencies=[Depends(require_read)],
        include_in_schema=False,
    )


@router.delete(
    "/items/{item_id}",
    status_code=204,
    dependencies=[Depends(require_write)],
    responses=ITEM_PROBLEM_RESPONSES,
)
async def delete_item(item_id: ItemId, rt: RuntimeDep) -> Response:
    """Delete one item."""
    await pipeline.delete_item(rt, item_id)
    return Response(status_code=204)


@router.get(
    "/stats",
    response_model=Stats,
    dependencies=[Depends(require_read)],
    responses=problems(401, 403, 503),
)
async def stats(rt: RuntimeDep) -> Stats:
    """Item counts per modality and what the loaded bundle is."""
    raw: dict[str, Any] = await rt.run(rt.collection.stats)
    return Stats(
        count=raw["count"],
        by_modality=raw["by_modality"],
        index_sizes=raw["index_sizes"],
        bits=rt.bundle.bits,
        method=rt.bundle.method,
        modalities=rt.bundle.modalities,
        label_names=rt.bundle.label_names,
        seq=raw["seq"],
        limits=Limits(
            **{name: getattr(rt.settings, name) for name in Limits.model_fields},
        ),
    )


def _text_input(item: TextItem) -> ItemInput:
    return ItemInput(item.text, item.client_id, item.metadata)


async def _form_items(request: Request, rt: Runtime) -> list[ItemInput]:
    form = await forms.read_form(request, rt.settings, FORM_FIELDS)
    uploads = await forms.form_uploads(form, "files")
    n = len(uploads)
    client_ids = forms.form_json(form, "client_ids")
    metadata = forms.form_json(form, "metadata")
    if client_ids is not None:
        client_ids = forms.validate(list[str | None], client_ids, ("form", "client_ids"))
    if metadata is not None:
        metadata = forms.validate(list[dict[str, Any] | None], metadata, ("form", "metadata"))
    for name, values in (("client_ids", client_ids), ("metadata", metadata)):
        if values is not None and len(values) != n:
            raise InvalidInput(
                f"form field {name!r} has {len(values)} entries for {n} files; "
                "it must be a JSON array aligned with the files"
            )
    items = [
        ItemInput(
            u, client_ids[i] if client_ids else None, (metadata[i] if metadata else None) or {}
        )
        for i, u in enumerate(uploads)
    ]
    texts = forms.form_json(form, "items")
    if texts is not None:
        items += [_text_input(t) for t in forms.validate(list[TextItem], texts, ("form", "items"))]
    return items
