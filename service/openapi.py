"""OpenAPI documentation for endpoints that read JSON or multipart bodies by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.errors import PROBLEM_TYPE, problem_types
from service.schemas import Problem

_REF = "#/components/schemas/{model}"

_PROBLEM_DESCRIPTIONS = {
    401: "API key missing",
    403: "API key wrong",
    404: "No item with that id (or no thumbnail for it)",
    413: "Body, file, batch or image too large",
    415: "Body is neither JSON nor multipart",
    422: "Invalid input; 'detail' says what to fix",
    503: "The service is starting or stopping, or its Milvus index is unreachable; retry shortly",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` entries for the problem+json answers a route can give."""
    return {
        status: {
            "description": _PROBLEM_DESCRIPTIONS[status],
            "content": {PROBLEM_TYPE: {"schema": {"$ref": _REF.format(model="Problem")}}},
        }
        for status in statuses
    }


#: What an endpoint that reads a JSON or multipart body can answer besides 200.
PROBLEM_RESPONSES = problems(401, 403, 413, 415, 422, 503)
#: What an endpoint on one item (by id in the path) can answer besides 200.
ITEM_PROBLEM_RESPONSES = problems(401, 403, 404, 422, 503)


def body(
    json_model: type[BaseModel], form_fields: dict[str, dict[str, Any]], example: dict[str, Any]
) -> dict[str, Any]:
    """``openapi_extra`` for a request body that is either ``json_model`` or a multipart form.

    ``example`` is what the docs page's "Try it out" sends: without one it fills every field
    with a placeholder, which the endpoints' cross-field rules (one query only) refuse.
    """
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model=json_model.__name__)},
                    "example": example,
                },
                "multipart/form-data": {"schema": {"type": "object", "properties": form_fields}},
            },
        }
    }


def files_field(description: str) -> dict[str, Any]:
    """A multipart field carrying one or more files."""
    return {
        "type": "array",
        "items": {"type": "string", "format": "binary"},
        "description": description,
    }


def text_field(description: str) -> dict[str, Any]:
    """A multipart text field."""
    return {"type": "string", "description": description}


def install(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Make the app's OpenAPI schema include ``models``, which hand-read bodies refer to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            all_models: list[type[BaseModel]] = [*models, Problem]
            for model in all_models:
                model_schema = model.model_json_schema(ref_template=_REF)
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            # The type URNs dereference to nothing; this is where a client looks them up.
            components["Problem"]["properties"]["type"]["description"] = (
                "What went wrong, one of: "
                + "; ".join(f"`{urn}` ({when})" for urn, when in problem_types().items())
            )
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
