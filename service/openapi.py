"""OpenAPI documentation for endpoints that read JSON or multipart bodies by hand."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.errors import PROBLEM_TYPE, problem_types
from service.schemas import Problem
from service.settings import Settings

_REF = "#/components/schemas/{model}"

_PROBLEM_DESCRIPTIONS = {
    400: "Body not parseable (not JSON, broken multipart), or a Host this service does not serve",
    401: "API key missing",
    403: "API key wrong",
    404: "No item with that id (or no thumbnail for it)",
    413: "Body, file, batch or image too large",
    415: "Body is neither JSON nor multipart",
    422: "Invalid input; 'detail' says what to fix",
    503: "The service is starting or stopping; retry shortly",
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
PROBLEM_RESPONSES = problems(400, 401, 403, 413, 415, 422, 503)
#: What an endpoint on one item (by id in the path) can answer besides 200.
ITEM_PROBLEM_RESPONSES = problems(400, 401, 403, 404, 422, 503)


def body(
    json_model: type[BaseModel],
    form_fields: dict[str, dict[str, Any]],
    example: dict[str, Any],
    *,
    form_rule: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``openapi_extra`` for a request body that is either ``json_model`` or a multipart form.

    ``example`` is what the docs page's "Try it out" sends: without one it fills every field
    with a placeholder, which the endpoints' cross-field rules (one query only) refuse.
    ``form_rule`` is such a rule for the form (e.g. ``oneOf`` of required fields).
    """
    form_schema = {
        "type": "object",
        "properties": form_fields,
        "additionalProperties": False,
        **(form_rule or {}),
    }
    extra = json_body(json_model, example)
    extra["requestBody"]["content"]["multipart/form-data"] = {"schema": form_schema}
    return extra


def json_body(json_model: type[BaseModel], example: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a request body that is ``json_model`` only."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"$ref": _REF.format(model=json_model.__name__)},
                    "example": example,
                }
            },
        }
    }


def files_field(description: str) -> dict[str, Any]:
    """A multipart field carrying one or more files."""
    return {
        "type": "array",
        "minItems": 1,
        "items": {"type": "string", "format": "binary"},
        "description": description,
    }


def text_field(description: str, **constraints: Any) -> dict[str, Any]:
    """A multipart text field."""
    return {"type": "string", "description": description, **constraints}


def one_of_required(*names: str) -> dict[str, Any]:
    """A schema rule: exactly one of these fields is given."""
    return {"oneOf": [{"required": [name]} for name in names]}


def install(app: FastAPI, models: Sequence[type[BaseModel]], settings: Settings) -> None:
    """Make the app's OpenAPI schema include ``models``, which hand-read bodies refer to.

    Limits that are settings are written in as this server's values, so a client generated
    from the schema never sends what this server refuses.
    """

    def openapi() -> dict[str, Any]:
        runtime = getattr(app.state, "runtime", None)
        # Built again once the bundle is loaded: its code width and modalities go in then.
        stale = app.openapi_schema is not None and "x-bundle" not in app.openapi_schema
        if app.openapi_schema is None or (stale and runtime is not None):
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
            _state_limits(schema, settings)
            if runtime is not None:
                _state_bundle(schema, runtime.bundle.bits, runtime.bundle.modalities)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override


def _form(schema: dict[str, Any], path: str) -> dict[str, Any]:
    properties: dict[str, Any] = schema["paths"][path]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]["schema"]["properties"]
    return properties


def _state_bundle(schema: dict[str, Any], bits: int, modalities: list[str]) -> None:
    """What the loaded bundle takes: codes of its width, its modalities."""
    code = f"^[0-9a-fA-F]{{{bits // 4}}}$"
    components = schema["components"]["schemas"]
    search = components["SearchRequest"]["properties"]
    search["code"]["pattern"] = code
    search["modalities"]["anyOf"][0]["items"]["enum"] = list(modalities)
    _form(schema, "/v1/search")["code"]["pattern"] = code
    schema["x-bundle"] = {"bits": bits, "modalities": list(modalities)}


def _state_limits(schema: dict[str, Any], settings: Settings) -> None:
    components = schema["components"]["schemas"]
    components["SearchRequest"]["properties"]["k"]["maximum"] = settings.max_k
    _form(schema, "/v1/search")["k"]["maximum"] = settings.max_k
    for path in ("/v1/items", "/v1/encode"):
        _form(schema, path)["files"]["maxItems"] = settings.max_batch_items
    metadata = components["TextItem"]["properties"]["metadata"]
    metadata["maxProperties"] = settings.max_metadata_keys
    text = components["TextItem"]["properties"]["text"]
    text["maxLength"] = settings.max_text_chars
    components["SearchRequest"]["properties"]["text"]["maxLength"] = settings.max_text_chars
    components["EncodeRequest"]["properties"]["texts"]["items"]["maxLength"] = (
        settings.max_text_chars
    )
    for model in ("IngestRequest", "EncodeRequest"):
        field = "items" if model == "IngestRequest" else "texts"
        components[model]["properties"][field]["maxItems"] = settings.max_batch_items
