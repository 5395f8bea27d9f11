"""POST /v1/encode: hash codes for texts or uploaded files, without storing anything."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from service import forms, pipeline
from service.deps import RuntimeDep, require_read
from service.media import Upload
from service.openapi import PROBLEM_RESPONSES, body, files_field
from service.schemas import EncodedCode, EncodeRequest, EncodeResponse

router = APIRouter(prefix="/v1", tags=["encode"])

FORM_FIELDS = ("files",)


@router.post(
    "/encode",
    response_model=EncodeResponse,
    summary="Encode texts or files into hex codes",
    description=(
        'Send **application/json** `{"texts": [...]}` or **multipart/form-data** with '
        "`files`. Codes come back in request order."
    ),
    dependencies=[Depends(require_read)],
    openapi_extra=body(
        EncodeRequest,
        {"files": files_field("Images (or clips) to encode")},
        {"texts": ["a dog on the beach"]},
        form_rule={"required": ["files"]},
    ),
    responses=PROBLEM_RESPONSES,
)
async def encode(request: Request, rt: RuntimeDep) -> EncodeResponse:
    """Encode without storing."""
    sources: list[str | Upload]
    if forms.body_kind(request) == "json":
        sources = list((await forms.read_json(request, EncodeRequest)).texts)
    else:
        form = await forms.read_form(request, rt.settings, FORM_FIELDS)
        sources = list(await forms.form_uploads(form, "files"))
    pipeline.check_count(rt.settings, len(sources))
    encoded = await pipeline.encode_sources(rt, sources)
    return EncodeResponse(
        bits=rt.bundle.bits,
        codes=[
            EncodedCode(
                modality=e.modality, code=e.hex, known_tokens=e.known_tokens, filename=e.filename
            )
            for e in encoded
        ],
    )
