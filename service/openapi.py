"""OpenAPI documentation for endpoints that read JSON or multipart bodies by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.schemas import Problem

_REF = "#/components/schemas/{model}"

PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": _REF.format(model="Problem")}}},
    }
    for status, description in {
        401: "API key missing",
        403: "API key wrong",
        413: "Body, file, batch or image too large",
        415: "Body is neither JSON nor multipart",
        422: "Invalid input; 'detail' says what to fix",
    }.items()
}


def body(json_model: type[BaseModel], form_fields: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``openapi_extra`` for a request body that is either ``json_model`` or a multipart form."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=json_model.__name__)}},
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
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override
