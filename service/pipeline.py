"""Domain operations behind the routes: validate a whole batch, decode, encode, write, search.

Every check runs before anything is written, so a batch is stored whole or not at all.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from index.codes import codes_from_hex, hamming
from index.errors import CodeError
from index.filters import matches as metadata_matches
from index.rerank import Ranking
from index.store import NewItem, StoredItem
from service.encoders import Bundle
from service.errors import (
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    ServiceError,
    UnsupportedModality,
)
from service.media import (
    Upload,
    check_upload_size,
    clip_limits,
    decode_clip,
    decode_image,
    sniff_kind,
)
from service.runtime import Runtime
from service.settings import Settings
from service.thumbnails import thumbnails_for

#: Metadata keys the service fills in itself so results can show what an item was.
RESERVED_KEYS = ("text", "filename")
MAX_CLIENT_ID_CHARS = 256

Source = str | Upload
#: The rankings a search offers, and the index ranking behind each.
Rerank = Literal["hamming", "asymmetric"]
RANKINGS: dict[Rerank, Ranking] = {"hamming": "hamming", "asymmetric": "asymmetric"}
#: What a text or file query ranks by unless it asks otherwise (docs/results.md: the
#: asymmetric score gains mAP at every code length measured, at a small cost in latency).
DEFAULT_RERANK: Rerank = "asymmetric"


@dataclass(frozen=True)
class ItemInput:
    """One item to ingest: a text or an uploaded file, with optional client id and metadata."""

    source: Source
    client_id: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Encoded:
    """The code of one text or file."""

    modality: str
    code: npt.NDArray[np.uint8]
    known_tokens: int | None = None
    filename: str | None = None
    #: The real values behind the code (bits,), when the encoder gives them; a hex code has none.
    values: npt.NDArray[np.float32] | None = None

    @property
    def hex(self) -> str:
        """The code as lowercase hex."""
        return self.code.tobytes().hex()


@dataclass(frozen=True)
class Written:
    """An ingested item."""

    id: int
    client_id: str | None
    encoded: Encoded


@dataclass(frozen=True)
class Found:
    """A search result joined with its stored item."""

    id: int
    client_id: str | None
    modality: str
    distance: int
    metadata: dict[str, Any]
    score: float | None = None


def check_count(settings: Settings, n: int) -> None:
    """Refuse an empty batch or one over ``max_batch_items``."""
    if n == 0:
        raise InvalidInput("the request holds no items; send at least one file or text")
    if n > settings.max_batch_items:
        raise PayloadTooLarge(
            f"the request holds {n} items; the limit is {settings.max_batch_items} per call "
            "(HASHBRIDGE_MAX_BATCH_ITEMS): split it"
        )


async def encode_sources(rt: Runtime, sources: Sequence[Source]) -> list[Encoded]:
    """Validate, decode and encode texts and files; any problem refuses the whole batch."""
    checked = [_precheck(rt, s) for s in sources]
    _raise_all([(i, c) for i, c in enumerate(checked) if isinstance(c, ServiceError)], len(sources))
    modalities = [str(c) for c in checked]
    groups: dict[str, list[int]] = {}
    for i, modality in enumerate(modalities):
        groups.setdefault(modality, []).append(i)
    with ExitStack() as announced:
        # Tell each encoder's batcher these items are coming, so it waits for them while
        # they decode instead of encoding other requests' items alone.
        submit = [announced.enter_context(rt.batchers[m].expect()) for m in groups]
        arrays, bags, known = await _prepare(rt, sources, modalities)
        # The text group is exactly the texts, in order: their bags are already one batch.
        batches = {
            m: bags if m == "text" and bags is not None else np.stack([arrays[i] for i in members])
            for m, members in groups.items()
        }
        for submitted in submit:
            submitted()
        results = await asyncio.gather(
            *(rt.batchers[m].encode_with_values(batches[m]) for m in groups)
        )
    codes: dict[int, npt.NDArray[np.uint8]] = {}
    values: dict[int, npt.NDArray[np.float32]] = {}
    for members, (group_codes, group_values) in zip(groups.values(), results, strict=True):
        codes.update(zip(members, group_codes, strict=True))
        if group_values is not None:
            values.update(zip(members, group_values, strict=True))
    return [
        Encoded(
            modalities[i],
            codes[i],
            known_tokens=known.get(i),
            filename=s.filename if isinstance(s, Upload) else None,
            values=values.get(i),
        )
        for i, s in enumerate(sources)
    ]


async def _prepare(
    rt: Runtime, sources: Sequence[Source], modalities: Sequence[str]
) -> tuple[list[Any], npt.NDArray[Any] | None, dict[int, int]]:
    """Decode the uploads and vectorise the texts: (per-item arrays, text bags, known tokens)."""
    prepared: list[Any] = list(sources)
    uploads = [i for i, s in enumerate(sources) if isinstance(s, Upload)]
    specs = rt.bundle.inputs
    decoded = await asyncio.gather(
        *(rt.run(_decode, specs[modalities[i]], rt.settings, sources[i]) for i in uploads),
        return_exceptions=True,
    )
    problems: list[tuple[int, ServiceError | None]] = []
    for i, result in zip(uploads, decoded, strict=True):
        if isinstance(result, ServiceError):
            problems.append((i, result))
        elif isinstance(result, BaseException):
            raise result
        else:
            prepared[i] = result
    _raise_all(problems, len(sources))
    texts = [i for i, s in enumerate(sources) if isinstance(s, str)]
    if not texts:
        return prepared, None, {}
    assert rt.bundle.vectorizer is not None  # _precheck refused text without an encoder
    bags, counts = await rt.run(rt.bundle.vectorizer.vectorize, [sources[i] for i in texts])
    return prepared, bags, dict(zip(texts, counts, strict=True))


async def ingest(rt: Runtime, items: Sequence[ItemInput]) -> list[Written]:
    """Encode and upsert a batch in one write; re-sent client ids replace their items."""
    check_count(rt.settings, len(items))
    _raise_all([(i, _check_item(item)) for i, item in enumerate(items)], len(items))
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        if item.client_id is not None and item.client_id in seen:
            raise InvalidInput(
                f"client_id {item.client_id!r} appears twice (items #{seen[item.client_id]} "
                f"and #{i}); client ids must be unique within a batch"
            )
        if item.client_id is not None:
            seen[item.client_id] = i
    sources = [item.source for item in items]
    encoded = await encode_sources(rt, sources)
    thumbs = await thumbnails_for(rt, sources, [e.modality for e in encoded])
    new = [
        NewItem(e.modality, e.code, item.client_id, _stored_metadata(item), thumbnail)
        for item, e, thumbnail in zip(items, encoded, thumbs, strict=True)
    ]
    ids = await rt.run(rt.collection.upsert, new)
    for modality, count in Counter(e.modality for e in encoded).items():
        rt.metrics.items_written.inc(count, modality=modality)
    rt.wrote(len(ids))
    return [Written(i, item.client_id, e) for i, item, e in zip(ids, items, encoded, strict=True)]


def parse_code(bundle: Bundle, code: str) -> Encoded:
    """Parse a hex query code of the bundle's width."""
    width = bundle.bits // 4
    if len(code) != width:
        raise InvalidInput(
            f"code must be {width} hex characters for this bundle's {bundle.bits}-bit codes, "
            f"got {len(code)}"
        )
    try:
        packed = codes_from_hex([code], bundle.bits)[0]
    except CodeError:
        raise InvalidInput(f"code {code!r} is not valid hex (0-9, a-f)") from None
    return Encoded("code", packed)


async def search(
    rt: Runtime,
    query: Encoded,
    k: int,
    *,
    modalities: Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
    nprobe: int | None = None,
    rerank: Rerank | None = None,
) -> tuple[list[Found], Rerank]:
    """Up to k stored items nearest to the query, with their metadata, and the ranking used.

    ``rerank`` None is the default: the asymmetric ranking where the query has real values
    (a text or a file), Hamming for a hex code.
    """
    if not 1 <= k <= rt.settings.max_k:
        raise InvalidInput(f"k must be between 1 and {rt.settings.max_k}, got {k}")
    if modalities is not None:
        if not modalities:
            raise InvalidInput("modalities is empty; omit it to search every modality")
        modalities = list(dict.fromkeys(modalities))
        for m in modalities:
            if m not in rt.bundle.encoders:
                raise UnsupportedModality(
                    f"unknown modality {m!r}; this bundle has {', '.join(rt.bundle.modalities)}"
                )
    ranking = _ranking(rerank, query)
    start = time.perf_counter()
    found = await rt.run(_search, rt, query, k, modalities, where, nprobe, ranking)
    rt.metrics.search.observe(time.perf_counter() - start, query=query.modality)
    return found, ranking


def _ranking(rerank: Rerank | None, query: Encoded) -> Rerank:
    if rerank is None:
        return DEFAULT_RERANK if query.values is not None else "hamming"
    if rerank == "asymmetric" and query.values is None:
        raise InvalidInput(
            "rerank 'asymmetric' scores items against the query's real-valued code, which "
            + (
                "a hex code query does not have"
                if query.modality == "code"
                else "this bundle's encoders do not give (exported before re-ranking: export "
                "it again)"
            )
            + "; send rerank 'hamming' or omit it"
        )
    return rerank


async def get_item(rt: Runtime, item_id: int) -> StoredItem:
    """Return a stored item or raise NotFound."""
    item = await rt.run(rt.collection.get, item_id)
    if item is None:
        raise NotFound(f"no item with id {item_id}")
    return item


async def delete_item(rt: Runtime, item_id: int) -> None:
    """Delete a stored item or raise NotFound."""
    if not await rt.run(rt.collection.delete, [item_id]):
        raise NotFound(f"no item with id {item_id}")
    rt.metrics.items_deleted.inc()
    rt.wrote(1)


def _search(
    rt: Runtime,
    query: Encoded,
    k: int,
    modalities: Sequence[str] | None,
    where: Mapping[str, Any] | None,
    nprobe: int | None,
    ranking: Rerank,
) -> list[Found]:
    codes = query.code[None, :]
    if ranking == "hamming" or query.values is None:
        hits = rt.collection.search(codes, k, modalities=modalities, where=where, nprobe=nprobe)[0]
    else:
        hits = rt.collection.search_values(
            query.values[None, :],
            k,
            RANKINGS[ranking],
            modalities=modalities,
            where=where,
            nprobe=nprobe,
            codes=codes,
        )[0]
    stored = rt.collection.store.get_many([h.id for h in hits])
    # Writers run again between the search and this lookup: an item deleted, or replaced by
    # one the search would not have found (another modality, code or metadata), is left out
    # rather than answered with a distance or metadata that contradict the query.
    pairs = [(h, stored[h.id]) for h in hits if h.id in stored]
    if not pairs:
        return []
    width = len(pairs[0][1].code)
    found = np.frombuffer(b"".join(item.code for _, item in pairs), np.uint8).reshape(-1, width)
    distances = hamming(found, codes[0])
    return [
        Found(h.id, item.client_id, h.modality, h.distance, item.metadata, h.score)
        for (h, item), distance in zip(pairs, distances.tolist(), strict=True)
        if item.modality == h.modality
        and distance == h.distance
        and metadata_matches(item.metadata, where)
    ]


def _precheck(rt: Runtime, source: Source) -> str | ServiceError:
    """The source's modality, or what is wrong with it."""
    settings = rt.settings
    try:
        if isinstance(source, Upload):
            check_upload_size(source, settings.max_upload_bytes)
        elif not source.strip():
            return InvalidInput("text is empty; send at least one word")
        elif len(source) > settings.max_text_chars:
            return PayloadTooLarge(
                f"text has {len(source)} characters; the limit is {settings.max_text_chars} "
                "(HASHBRIDGE_MAX_TEXT_CHARS)"
            )
        return _modality_of(rt.bundle, source)
    except ServiceError as exc:
        return exc


def _modality_of(bundle: Bundle, source: Source) -> str:
    if isinstance(source, Upload):
        modality: str = sniff_kind(source)
        what = f"file {source.filename!r} is a {'video clip' if modality == 'video' else 'image'}"
    else:
        modality, what = "text", "this is a text"
    if modality not in bundle.encoders:
        raise UnsupportedModality(
            f"{what}, but this bundle has no {modality} encoder "
            f"(it encodes {', '.join(bundle.modalities)})"
        )
    return modality


def _decode(spec: Mapping[str, Any], settings: Settings, upload: Upload) -> npt.NDArray[np.uint8]:
    if "frames" in spec:
        limits = clip_limits(settings)
        return decode_clip(upload, spec["frames"], spec["size"], spec["clips"], limits)
    return decode_image(upload, spec["size"], settings.max_image_pixels)


def _check_item(item: ItemInput) -> ServiceError | None:
    cid = item.client_id
    if cid is not None and not (0 < len(cid) <= MAX_CLIENT_ID_CHARS):
        return InvalidInput(f"client_id must be 1 to {MAX_CLIENT_ID_CHARS} characters")
    if not isinstance(item.metadata, Mapping):
        return InvalidInput("metadata must be a JSON object")
    if not item.metadata:
        return None
    taken = [k for k in RESERVED_KEYS if k in item.metadata]
    if taken:
        return InvalidInput(
            f"metadata key {taken[0]!r} is reserved (the service stores the item's "
            f"{' and '.join(RESERVED_KEYS)} there); rename it"
        )
    try:
        json.dumps(dict(item.metadata), allow_nan=False)
    except (TypeError, ValueError) as exc:
        return InvalidInput(f"metadata is not plain JSON: {exc}")
    return None


def _stored_metadata(item: ItemInput) -> dict[str, Any]:
    extra = (
        {"filename": item.source.filename}
        if isinstance(item.source, Upload)
        else {"text": item.source}
    )
    return {**item.metadata, **extra}


def _raise_all(problems: Sequence[tuple[int, ServiceError | None]], n: int) -> None:
    """Raise the first problem, listing all of them in ``errors``; prefix item numbers."""
    found = [(i, p) for i, p in problems if p is not None]
    if not found:
        return
    index, first = found[0]
    detail = first.detail if n == 1 else f"item #{index}: {first.detail}"
    if len(found) > 1:
        detail += f" (and {len(found) - 1} more problems, listed in errors)"
    errors = [{"item": i, "title": p.title, "detail": p.detail} for i, p in found]
    raise type(first)(detail, errors=errors)
