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

from bundle.inputs import Clip, InputKind, Pixels
from index.base import SearchParams
from index.codes import codes_from_hex, hamming
from index.errors import CodeError
from index.filters import matches as metadata_matches
from index.rerank import Ranking
from index.store import NewItem, StoredItem
from service.encoders import Bundle
from service.errors import (
    InvalidInput,
    NotFound,
    OutOfRange,
    PayloadTooLarge,
    ServiceError,
    UnsupportedModality,
)
from service.media import (
    Upload,
    check_upload_size,
    clip_limits,
    decode_clip,
    decoded_pixels,
    encoder_pixels,
    open_image,
    sniff_kind,
)
from service.runtime import Runtime
from service.schemas import MAX_CLIENT_ID_CHARS, RESERVED_KEYS
from service.settings import Settings
from service.thumbnails import posters_for, thumbnail_of

Source = str | Upload
#: The rankings a search offers, and the index ranking behind each.
Rerank = Literal["hamming", "asymmetric"]
RANKINGS: dict[Rerank, Ranking] = {"hamming": "hamming", "asymmetric": "asymmetric"}
#: What a text or file query ranks by unless it asks otherwise: the asymmetric score alone
#: has the higher mAP than the score inside Hamming ties in 30 of 32 run/direction pairs
#: measured (one equal, one 0.001 lower) and never below binary (bench/results/rerank-accuracy.md).
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
    #: JPEG thumbnail of an image, made from the decode its code came from (when asked for).
    thumbnail: bytes | None = None
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


async def encode_sources(
    rt: Runtime, sources: Sequence[Source], *, thumbnails: bool = False
) -> list[Encoded]:
    """Validate, decode and encode texts and files; any problem refuses the whole batch.

    With ``thumbnails``, each image's thumbnail is made from its decode too.
    """
    checked = [_precheck(rt, s) for s in sources]
    _raise_all([(i, c) for i, c in enumerate(checked) if isinstance(c, ServiceError)], len(sources))
    modalities = [str(c) for c in checked]
    cover = rt.settings.thumbnail_size if thumbnails else 0
    await rt.run(_check_request_pixels, rt, sources, modalities, cover)
    groups: dict[str, list[int]] = {}
    for i, modality in enumerate(modalities):
        groups.setdefault(modality, []).append(i)
    with ExitStack() as announced:
        # Tell each encoder's batcher these items are coming, so it waits for them while
        # they decode instead of encoding other requests' items alone.
        submit = [announced.enter_context(rt.batchers[m].expect()) for m in groups]
        arrays, thumbs, bags, known = await _prepare(rt, sources, modalities, cover)
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
            thumbnail=thumbs.get(i),
            values=values.get(i),
        )
        for i, s in enumerate(sources)
    ]


async def _prepare(
    rt: Runtime, sources: Sequence[Source], modalities: Sequence[str], cover: int
) -> tuple[list[Any], dict[int, bytes], npt.NDArray[Any] | None, dict[int, int]]:
    """Decode uploads, vectorise texts: (per-item arrays, thumbnails, text bags, known tokens)."""
    prepared: list[Any] = list(sources)
    thumbs: dict[int, bytes] = {}
    uploads = [i for i, s in enumerate(sources) if isinstance(s, Upload)]
    kinds = rt.bundle.inputs
    decoded = await asyncio.gather(
        *(
            rt.run_media(_decode, kinds[modalities[i]], rt.settings, sources[i], cover)
            for i in uploads
        ),
        return_exceptions=True,
    )
    problems: list[tuple[int, ServiceError | None]] = []
    for i, result in zip(uploads, decoded, strict=True):
        if isinstance(result, ServiceError):
            problems.append((i, result))
        elif isinstance(result, BaseException):
            raise result
        else:
            prepared[i], thumbnail = result
            if thumbnail is not None:
                thumbs[i] = thumbnail
    _raise_all(problems, len(sources))
    texts = [i for i, s in enumerate(sources) if isinstance(s, str)]
    if not texts:
        return prepared, thumbs, None, {}
    assert rt.bundle.vectorizer is not None  # _precheck refused text without an encoder
    bags, counts = await rt.run(rt.bundle.vectorizer.vectorize, [sources[i] for i in texts])
    return prepared, thumbs, bags, dict(zip(texts, counts, strict=True))


def _check_request_pixels(
    rt: Runtime, sources: Sequence[Source], modalities: Sequence[str], cover: int
) -> None:
    """Refuse a request whose images would decode to more than ``max_request_pixels`` in all.

    Each image is bounded by max_image_pixels, but forty just under it kept both cores busy
    for 27 s; the sum, read from the headers, bounds one request's decode work.
    """
    limit = rt.settings.max_request_pixels
    total = 0
    for source, modality in zip(sources, modalities, strict=True):
        if isinstance(source, Upload) and modality == "image":
            kind = rt.bundle.inputs[modality]
            assert isinstance(kind, Pixels)  # load_bundle gives images the pixels kind
            total += decoded_pixels(
                source, kind.size, cover, reduce=rt.settings.reduced_jpeg_decode
            )
    if total > limit:
        raise PayloadTooLarge(
            f"the request's images decode to {total} pixels in all; the limit is {limit} "
            "per request (HASHBRIDGE_MAX_REQUEST_PIXELS): send fewer or smaller images per call"
        )


async def ingest(rt: Runtime, items: Sequence[ItemInput]) -> list[Written]:
    """Encode and upsert a batch in one write; re-sent client ids replace their items."""
    check_count(rt.settings, len(items))
    checks = [(i, _check_item(rt.settings, item)) for i, item in enumerate(items)]
    _raise_all(checks, len(items))
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
    encoded = await encode_sources(rt, sources, thumbnails=rt.settings.thumbnails)
    posters = await posters_for(rt, sources, [e.modality for e in encoded])
    new = [
        NewItem(e.modality, e.code, item.client_id, _stored_metadata(item), e.thumbnail or poster)
        for item, e, poster in zip(items, encoded, posters, strict=True)
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
        raise OutOfRange(f"k must be between 1 and {rt.settings.max_k} (HASHBRIDGE_MAX_K), got {k}")
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
    item = await rt.run(rt.collection.get, item_id)
    # Another request may delete it between the two calls: only a delete that found it counts.
    if item is None or not await rt.run(rt.collection.delete, [item_id]):
        raise NotFound(f"no item with id {item_id}")
    rt.metrics.items_deleted.inc(modality=item.modality)
    rt.wrote(1)


async def lookup(rt: Runtime, client_ids: Sequence[str]) -> list[tuple[str, int, str]]:
    """(client id, id, modality) of the given client ids that are stored, in request order."""
    found = await rt.run(rt.collection.lookup_client_ids, list(dict.fromkeys(client_ids)))
    return [(cid, *found[cid]) for cid in dict.fromkeys(client_ids) if cid in found]


def _search(
    rt: Runtime,
    query: Encoded,
    k: int,
    modalities: Sequence[str] | None,
    where: Mapping[str, Any] | None,
    nprobe: int | None,
    ranking: Rerank,
) -> list[Found]:
    """The hits, and their stored items, read in one view of the backend."""
    with rt.collection.reading():
        codes = query.code[None, :]
        params = SearchParams(nprobe=nprobe)
        if ranking == "hamming" or query.values is None:
            hits = rt.collection.search(
                codes, k, modalities=modalities, where=where, params=params
            )[0]
        else:
            hits = rt.collection.search_values(
                query.values[None, :],
                k,
                RANKINGS[ranking],
                modalities=modalities,
                where=where,
                params=params,
                codes=codes,
            )[0]
        stored = rt.collection.get_many([h.id for h in hits])
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


def _decode(
    kind: InputKind, settings: Settings, upload: Upload, cover: int
) -> tuple[npt.NDArray[np.uint8], bytes | None]:
    """Encoder input of one upload, decoded within the service's limits and prepared by its
    input kind, and an image's thumbnail from the same decode when ``cover`` (its side) is set."""
    if isinstance(kind, Clip):
        return decode_clip(upload, kind, clip_limits(settings)), None
    if isinstance(kind, Pixels):
        reduce = settings.reduced_jpeg_decode
        image = open_image(upload, kind.size, settings.max_image_pixels, cover, reduce=reduce)
        pixels = encoder_pixels(image, kind)
        return pixels, thumbnail_of(image, cover) if cover else None
    # load_bundle refuses kinds that take no upload; one that takes another is a bug here.
    raise TypeError(f"no upload decoder for input kind {kind.name!r} ({kind.media} media)")


def _check_item(settings: Settings, item: ItemInput) -> ServiceError | None:
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
    if len(item.metadata) > settings.max_metadata_keys:
        return PayloadTooLarge(
            f"metadata has {len(item.metadata)} keys; the limit is {settings.max_metadata_keys} "
            "per item (HASHBRIDGE_MAX_METADATA_KEYS)"
        )
    try:
        size = len(json.dumps(dict(item.metadata), allow_nan=False, ensure_ascii=False).encode())
    except (TypeError, ValueError) as exc:
        return InvalidInput(f"metadata is not plain JSON: {exc}")
    if size > settings.max_metadata_bytes:
        # Stored metadata comes back in every search that finds the item: unbounded, one
        # item could make every answer megabytes long.
        return PayloadTooLarge(
            f"metadata is {size} bytes as JSON; the limit is {settings.max_metadata_bytes} "
            "per item (HASHBRIDGE_MAX_METADATA_BYTES)"
        )
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
