"""Service settings, read from ``HASHBRIDGE_*`` environment variables once at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20
MAX_THREADS = 1024
MAX_K = 1_000_000


class Settings(BaseSettings):
    """Everything the service can be configured with; build once and pass it in."""

    # hide_input_in_errors: an error about the API key must not print the key.
    model_config = SettingsConfigDict(
        env_prefix="HASHBRIDGE_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    bundle_dir: Path = Field(description="Folder holding manifest.json and the encoders")
    data_dir: Path = Field(description="Folder of the collection (SQLite store + index snapshots)")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    api_key: SecretStr | None = Field(
        None,
        description="Key required on write endpoints (X-API-Key or Authorization: Bearer); "
        "printable ASCII",
    )
    protect_reads: bool = Field(False, description="Require the API key on read endpoints too")
    allowed_hosts: str | None = Field(
        None,
        description="Comma-separated host names requests may name in Host (*.example.com: its "
        "subdomains; *: any); the loopback names are always allowed. Unset: only those when "
        "bound to a loopback address, else any",
    )

    max_upload_bytes: int = Field(20 * MiB, gt=0, description="Largest single uploaded file")
    max_request_bytes: int = Field(256 * MiB, gt=0, description="Largest request body")
    max_text_chars: int = Field(10_000, gt=0)
    max_batch_items: int = Field(256, gt=0, description="Most items in one ingest/encode call")
    max_metadata_keys: int = Field(64, gt=0, description="Most metadata keys per item")
    max_metadata_bytes: int = Field(
        16 * 1024, gt=0, description="Largest metadata of one item, in bytes as JSON (UTF-8)"
    )
    max_image_pixels: int = Field(50_000_000, gt=0, description="Decompression-bomb limit")
    max_clip_seconds: float = Field(600.0, gt=0, description="Longest video clip, in seconds")
    max_clip_pixels: int = Field(3840 * 2160, gt=0, description="Most pixels per video frame")
    max_clip_frames: int = Field(
        36_000,
        gt=0,
        description="Most frames in a clip (a clip is decoded whole: this bounds the work)",
    )
    # FAISS allocates k results per query whatever the collection's size: a huge k is a 500.
    max_k: int = Field(
        1000, ge=1, le=MAX_K, description=f"Largest k a search may ask for (at most {MAX_K})"
    )

    index_kind: Literal["flat", "ivf", "auto"] = "auto"
    ivf_threshold: int = Field(100_000, gt=0)
    # 64 of the ~4,000 lists at 10^6 items: text->image recall@10 0.982 of exact over HTTP
    # (16: 0.859) at a one-client p99 of 14 ms (bench.http_search --nprobes, docs/results.md).
    default_nprobe: int = Field(64, gt=0)
    index_gpu: bool = Field(
        False, description="Search flat indexes on the GPU (faiss-gpu); CPU when none is found"
    )

    # The index backend (docs/deployment.md). faiss: this process's SQLite store and in-process
    # indexes under data_dir. milvus: a Milvus collection that several replicas share.
    index_backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="faiss: local SQLite + FAISS; milvus: a shared Milvus collection"
    )
    milvus_uri: str = Field(
        "",
        description="Milvus server (http://host:19530) or milvus-lite file; needed by "
        "index_backend=milvus",
    )
    milvus_token: SecretStr | None = Field(None, description="Milvus user:password or token")
    milvus_collection: str = Field(
        "hashbridge",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
        description="Milvus collection holding the items (letters, digits, _)",
    )
    milvus_index: Literal["BIN_FLAT", "BIN_IVF_FLAT"] = Field(
        "BIN_FLAT",
        description="BIN_FLAT: exact; BIN_IVF_FLAT: milvus_nlist lists, nprobe per query",
    )
    milvus_nlist: int = Field(1024, gt=0, le=65536, description="BIN_IVF_FLAT list count")
    milvus_timeout_s: float = Field(
        10.0, gt=0, le=600, description="Longest a Milvus call may take before a 503"
    )

    encoder_device: Literal["cpu", "cuda"] = Field(
        "cpu", description="Where the encoders run; cuda needs a GPU that torch sees"
    )
    workers: int = Field(2, gt=0, description="Threads for searches, texts, reads and writes")
    media_workers: int = Field(
        2, gt=0, description="Threads decoding and encoding images and clips (a pool of their own)"
    )
    media_nice: int = Field(
        10,
        ge=0,
        le=19,
        description="Niceness added to the media threads': heavy uploads yield the CPU to searches",
    )
    reduced_jpeg_decode: bool = Field(
        True,
        description="Decode JPEGs at 1/2..1/8 scale when the encoder's input size allows "
        "(codes then differ from a full decode in a few bits)",
    )
    max_request_pixels: int = Field(
        400_000_000,
        gt=0,
        description="Most pixels one request may decode, summed over its images (413 past it)",
    )
    worker_threads: int = Field(
        0,
        ge=0,
        # Each worker starts this many torch and OpenMP threads: far more fails at start-up.
        le=MAX_THREADS,
        description=f"CPU threads of each encode or search call (at most {MAX_THREADS}); "
        "0: usable CPUs / workers",
    )
    batch_window_ms: float = Field(
        5.0,
        ge=0,
        description="Longest an encoder call waits for items other requests are still preparing",
    )
    batch_max_items: int = Field(
        64, gt=0, description="Most images or clips per encoder call (bounds its memory)"
    )
    text_batch_max_items: int = Field(
        256, gt=0, description="Most texts per encoder call (texts are cheap in bulk)"
    )
    snapshot_every: int = Field(
        1000,
        gt=0,
        description="Snapshot indexes after this many writes (or a tenth of the items, if more)",
    )

    thumbnails: bool = Field(True, description="Store a small JPEG of each ingested image")
    thumbnail_size: int = Field(160, ge=16, le=1024, description="Longest side of a thumbnail")

    @field_validator("bundle_dir", "data_dir", "host", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # An unset compose variable arrives as "": as a path that is the working folder, as a
        # host every interface; neither is what the user asked for.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("api_key", "allowed_hosts", mode="before")
    @classmethod
    def _empty_key_is_no_key(cls, value: object) -> object:
        # docker-compose passes an unset variable as "": that means no key, not the key "".
        return None if value == "" else value

    @field_validator("api_key")
    @classmethod
    def _key_fits_a_header(cls, value: SecretStr | None) -> SecretStr | None:
        # Clients send the key in an HTTP header, which drops surrounding spaces, refuses
        # control characters (a CRLF .env file's \r) and reads bytes as latin-1 (curl's UTF-8
        # then arrives as other characters): such a key would refuse every request.
        key = value.get_secret_value() if value is not None else ""
        if key != key.strip() or not all(" " <= char <= "~" for char in key):
            raise ValueError(
                "must be printable ASCII with no leading or trailing spaces "
                "(it is sent in an HTTP header)"
            )
        return value

    @model_validator(mode="after")
    def _milvus_needs_a_uri(self) -> Self:
        if self.index_backend == "milvus" and not self.milvus_uri.strip():
            raise ValueError(
                "index_backend=milvus needs milvus_uri (HASHBRIDGE_MILVUS_URI), e.g. "
                "http://milvus:19530"
            )
        return self

    @model_validator(mode="after")
    def _reads_need_a_key(self) -> Self:
        if self.protect_reads and self.api_key is None:
            raise ValueError("protect_reads=true needs api_key (HASHBRIDGE_API_KEY) to be set")
        return self


#: Host names that only this machine can put in a request's Host: a DNS-rebinding page's
#: requests carry its own domain, so these are safe to answer whatever the allow-list says.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def allowed_host_names(settings: Settings) -> frozenset[str] | None:
    """The Host names the service answers for (patterns allowed), or None for any."""
    if settings.allowed_hosts is None:
        loopback = settings.host in LOOPBACK_NAMES or settings.host.startswith("127.")
        return LOOPBACK_NAMES | {settings.host} if loopback else None
    names = {n.strip().lower().rstrip(".") for n in settings.allowed_hosts.split(",")}
    names.discard("")
    return None if "*" in names else LOOPBACK_NAMES | names


#: Settings that `python -m service` and `hashbridge serve` also take as flags.
SERVE_FLAGS = {"bundle_dir": "--bundle", "data_dir": "--data", "host": "--host", "port": "--port"}


def describe_invalid(exc: ValidationError, flags: Mapping[str, str] = SERVE_FLAGS) -> str:
    """One line naming each bad setting and where it is set (flags: field -> its flag)."""
    problems = []
    for error in exc.errors():
        if not error["loc"]:  # a rule across settings names them in its message
            problems.append(error["msg"])
            continue
        field = str(error["loc"][0])
        env = f"HASHBRIDGE_{field.upper()}"
        where = f"{flags[field]} or {env}" if field in flags else env
        problems.append(f"{field}: {error['msg']} (set {where})")
    return "invalid settings: " + "; ".join(problems)
