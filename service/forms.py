"""Reading request bodies that may be JSON or multipart/form-data into validated values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, TypeVar

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import from_json
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.errors import InvalidInput, MalformedBody, PayloadTooLarge, UnsupportedMediaType
from service.media import Upload
from service.settings import Settings

M = TypeVar("M", bound=BaseModel)
BodyKind = Literal["json", "multipart"]


_MEDIA_TYPES: dict[BodyKind, str] = {
    "json": "application/json",
    "multipart": "multipart/form-data",
}


def body_kind(request: Request, accept: Sequence[BodyKind] = ("json", "multipart")) -> BodyKind:
    """Whether the request carries JSON or multipart/form-data; refuse anything else."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    for kind in accept:
        if ctype == _MEDIA_TYPES[kind]:
            return kind
    raise UnsupportedMediaType(
        f"content type {ctype or '(none)'!r} is not accepted here; "
        f"send {' or '.join(_MEDIA_TYPES[kind] for kind in accept)}"
    )


async def read_json(request: Request, model: type[M]) -> M:
    """Parse and validate a JSON body (UTF-8, as RFC 8259 requires; a leading BOM is ignored)."""
    charset = _content_type_param(request, "charset")
    if charset not in (None, "utf-8", "utf8"):
        raise UnsupportedMediaType(f"JSON bodies must be UTF-8; this one says charset={charset}")
    body = await request.body()
    body = body.removeprefix(b"\xef\xbb\xbf")
    try:
        # Parsing and validating in one pass (pydantic-core) is several times faster than
        # json.loads + model_validate on large ingest batches.
        return model.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] == "json_invalid":
            raise MalformedBody(f"request body is not valid JSON: {first['msg']}") from None
        raise _located(exc, ("body",)) from None


def _content_type_param(request: Request, name: str) -> str | None:
    """A parameter of the Content-Type header (e.g. charset), lower-cased, or None."""
    for part in request.headers.get("content-type", "").split(";")[1:]:
        key, _, value = part.partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"').lower()
    return None


def validate(model: Any, data: Any, loc: tuple[str | int, ...]) -> Any:
    """Validate data against a model or type; errors point at ``loc`` in the request."""
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return model.model_validate(data)
        return TypeAdapter(model).validate_python(data)
    except ValidationError as exc:
        raise _located(exc, loc) from None


def _located(exc: ValidationError, loc: tuple[str | int, ...]) -> RequestValidationError:
    """The validation errors as FastAPI reports them, located at ``loc`` in the request."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return RequestValidationError([{**e, "loc": (*loc, *e["loc"])} for e in errors])


async def read_form(request: Request, settings: Settings, fields: Sequence[str]) -> FormData:
    """Parse a multipart body, refusing fields other than ``fields``."""
    try:
        form = await request.form(
            max_files=settings.max_batch_items,
            max_fields=len(fields) * 4,
            max_part_size=settings.max_request_bytes,
        )
    except StarletteHTTPException as exc:
        # Starlette reports multipart limits and syntax errors as a 400 HTTPException. Too
        # many files is the batch limit, answered 413 as for a JSON batch; should Starlette
        # reword its message, this falls back to the generic 422.
        if str(exc.detail).startswith("Too many files"):
            raise PayloadTooLarge(
                f"the request holds more than {settings.max_batch_items} files; the limit is "
                f"{settings.max_batch_items} per call (HASHBRIDGE_MAX_BATCH_ITEMS): split it"
            ) from None
        raise MalformedBody(f"the multipart body could not be read: {exc.detail}") from None
    unknown = sorted(set(form.keys()) - set(fields))
    if unknown:
        raise InvalidInput(
            f"unknown form field {unknown[0]!r}; this endpoint reads {', '.join(fields)}"
        )
    return form


def form_text(form: FormData, name: str) -> str | None:
    """The single text value of a form field, or None."""
    values = form.getlist(name)
    if not values:
        return None
    if len(values) > 1:
        raise InvalidInput(f"form field {name!r} appears {len(values)} times; send it once")
    value = values[0]
    if not isinstance(value, str):
        raise InvalidInput(f"form field {name!r} must be a text field, not a file")
    return _unicode_text(value, f"form field {name!r}")


def form_json(form: FormData, name: str) -> Any:
    """The JSON value of a form field, or None when absent."""
    text = form_text(form, name)
    if text is None:
        return None
    try:
        # The JSON body's parser, with its limits: lone surrogates, numbers past what can be
        # stored and nesting past what responses can serialise are refused, as in a body.
        return from_json(text)
    except ValueError as exc:
        raise InvalidInput(f"form field {name!r} is not valid JSON: {exc}") from None


async def form_uploads(form: FormData, name: str) -> list[Upload]:
    """All files sent under a field name, read into memory (the body size is bounded)."""
    uploads = []
    for i, value in enumerate(form.getlist(name)):
        if not isinstance(value, UploadFile):
            # Starlette reads a part without a file name (or an empty one) as text.
            raise InvalidInput(
                f"form field {name!r} #{i} must be a file, not a text value; send it as a "
                "file part with a non-empty filename"
            )
        data = await value.read()
        filename = _unicode_text(value.filename or f"{name}#{i}", f"the file name of {name!r} #{i}")
        uploads.append(Upload(filename, value.content_type, data))
    return uploads


def _unicode_text(value: str, what: str) -> str:
    """Refuse text that is not valid Unicode (a multipart charset can decode to lone surrogates).

    Such text could be stored but never sent back as UTF-8 JSON, so every read of it would fail.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInput(
            f"{what} is not valid Unicode text (it holds a lone surrogate); send UTF-8"
        ) from None
    return value
