"""Pydantic models of the HTTP API (the boundary only; domain code uses dataclasses)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CODE_DOC = "Packed code as lowercase hex, MSB-first (np.packbits order), bits/4 characters"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextItem(Strict):
    """A text to ingest."""

    text: str = Field(description="The text; it must hold at least one non-space character")
    client_id: str | None = Field(
        None, description="Your id for the item; re-sending it replaces the item"
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict,
        description="JSON object stored with the item; keys 'text' and 'filename' are reserved",
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

    text: str | None = None
    code: str | None = Field(None, description=CODE_DOC)
    k: int = Field(10, ge=1, description="Number of results (at most max_k, 1000 by default)")
    modalities: list[str] | None = Field(
        None, description="Modalities to return, e.g. ['image']; all when omitted"
    )
    where: dict[str, Any] | None = Field(
        None, description="Keep only items whose metadata has exactly these key/value pairs"
    )
    nprobe: int | None = Field(None, ge=1, description="IVF lists to probe (exactness vs speed)")
    rerank: Literal["hamming", "asymmetric"] | None = Field(
        None,
        description=(
            "How results are ranked: 'hamming' by Hamming distance alone; 'asymmetric' by "
            "the score -<q, b> of each item's bits b against the query's real-valued code q "
            "(lower is nearer; ties by write order). Default: 'asymmetric' for a text or "
            "file, 'hamming' for a hex code (which has no real-valued code)"
        ),
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
    score: float | None = Field(
        None, description="The asymmetric score -<q, b> (lower is nearer); null under 'hamming'"
    )
    metadata: dict[str, Any]


class SearchResponse(BaseModel):
    query: QueryInfo
    rerank: Literal["hamming", "asymmetric"] = Field(description="The ranking the results follow")
    results: list[SearchHit]


class EncodeRequest(Strict):
    """JSON body of POST /v1/encode. Files go as multipart/form-data instead."""

    texts: list[str] = Field(min_length=1)


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


class Stats(BaseModel):
    count: int
    by_modality: dict[str, int]
    index_sizes: dict[str, int]
    bits: int
    method: str
    modalities: list[str] = Field(description="Modalities the loaded bundle can encode")
    label_names: list[str]
    seq: int = Field(description="Store write counter")


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
