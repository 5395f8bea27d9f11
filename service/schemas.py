"""Pydantic models of the HTTP API (the boundary only; domain code uses dataclasses)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

CODE_DOC = "Packed code as lowercase hex, MSB-first (np.packbits order), bits/4 characters"
#: Metadata keys the service fills in itself so results can show what an item was.
RESERVED_KEYS = ("text", "filename")
MAX_CLIENT_ID_CHARS = 256
MAX_LOOKUP_IDS = 4096

#: A text the encoders take: at least one character that is not a space (JSON Schema's
#: pattern is a search, so this says "holds a non-space"). Stated in the schema only: the
#: pipeline's own check says what to fix in words ("text is empty").
NonBlank = Annotated[str, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]


def _json_integer(value: object) -> object:
    # JSON Schema's integer is any number without a fraction (2.0 too), never true or "2".
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number, e.g. 10 (not a string, a fraction or true)")
    return value


#: An integer as JSON Schema means it.
JsonInt = Annotated[int, BeforeValidator(_json_integer)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _one_query(schema: dict[str, Any]) -> None:
    """Schema of a search body: exactly one of text and code, neither of them null."""
    for name in ("text", "code"):
        prop = schema["properties"][name]
        branches = [b for b in prop.pop("anyOf") if b.get("type") != "null"]
        prop.update(branches[0])
        prop.pop("default", None)
    schema["oneOf"] = [{"required": ["text"]}, {"required": ["code"]}]


class TextItem(Strict):
    """A text to ingest."""

    text: NonBlank = Field(description="The text; it must hold at least one non-space character")
    client_id: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CLIENT_ID_CHARS,
        description="Your id for the item; re-sending it replaces the item",
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object stored with the item; keys 'text' and 'filename' are reserved; "
        "at most max_metadata_keys keys and max_metadata_bytes bytes as JSON",
        json_schema_extra={"propertyNames": {"not": {"enum": list(RESERVED_KEYS)}}},
    )


class IngestRequest(Strict):
    """JSON body of POST /v1/items (texts). Files go as multipart/form-data instead."""

    items: list[TextItem] = Field(min_length=1)


class IngestedItem(BaseModel):
    id: int
    client_id: str | None
    modality: str
    code: str = Field(description=CODE_DOC)
    filename: str | None = None
    known_tokens: int | None = Field(
        None, description="Vocabulary tokens found in a text; 0 means its code carries no signal"
    )


class IngestResponse(BaseModel):
    items: list[IngestedItem]


class SearchRequest(Strict):
    """JSON body of POST /v1/search; give exactly one of text or code (or upload a file)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_query)

    text: NonBlank | None = None
    code: str | None = Field(
        None, json_schema_extra={"pattern": "^[0-9a-fA-F]+$"}, description=CODE_DOC
    )
    k: JsonInt = Field(10, ge=1, description="Number of results (at most max_k, 1000 by default)")
    modalities: list[str] | None = Field(
        None,
        json_schema_extra={"minItems": 1},
        description="Modalities to return, e.g. ['image']; all when omitted",
    )
    where: dict[str, Any] | None = Field(
        None, description="Keep only items whose metadata has exactly these key/value pairs"
    )
    nprobe: JsonInt | None = Field(
        None, ge=1, description="IVF lists to probe (exactness vs speed)"
    )


class QueryInfo(BaseModel):
    modality: str = Field(description="'text', 'image', 'video' or 'code'")
    code: str = Field(description=CODE_DOC)
    known_tokens: int | None = None
    filename: str | None = None


class SearchHit(BaseModel):
    id: int
    client_id: str | None
    modality: str
    distance: int = Field(description="Hamming distance to the query code")
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    query: QueryInfo
    results: list[SearchHit]


class EncodeRequest(Strict):
    """JSON body of POST /v1/encode. Files go as multipart/form-data instead."""

    texts: list[NonBlank] = Field(min_length=1)


class EncodedCode(BaseModel):
    modality: str
    code: str = Field(description=CODE_DOC)
    known_tokens: int | None = None
    filename: str | None = None


class EncodeResponse(BaseModel):
    bits: int
    codes: list[EncodedCode]


class Item(BaseModel):
    id: int
    client_id: str | None
    modality: str
    code: str = Field(description=CODE_DOC)
    metadata: dict[str, Any]
    created_at: float = Field(description="Unix time of the first write")


class Limits(BaseModel):
    max_k: int
    max_batch_items: int
    max_text_chars: int
    max_upload_bytes: int
    max_metadata_keys: int
    max_metadata_bytes: int


class Stats(BaseModel):
    count: int
    by_modality: dict[str, int]
    index_sizes: dict[str, int]
    bits: int
    method: str
    modalities: list[str] = Field(description="Modalities the loaded bundle can encode")
    label_names: list[str]
    seq: int = Field(description="Store write counter")
    limits: Limits = Field(description="What one request may hold (the server's settings)")


class LookupRequest(Strict):
    """JSON body of POST /v1/items/lookup."""

    client_ids: list[Annotated[str, Field(min_length=1, max_length=MAX_CLIENT_ID_CHARS)]] = Field(
        min_length=1,
        max_length=MAX_LOOKUP_IDS,
        description=f"Client ids to look up, at most {MAX_LOOKUP_IDS} per call",
    )


class LookupHit(BaseModel):
    client_id: str
    id: int
    modality: str


class LookupResponse(BaseModel):
    found: list[LookupHit] = Field(description="The stored ones, in request order; others absent")


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class Health(BaseModel):
    status: str
