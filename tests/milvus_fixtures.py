"""Fixtures that provide Milvus to tests: milvus-lite in-process, and an embedded server.

Test modules load them with ``pytest_plugins = ["tests.milvus_fixtures"]``. A test that
needs the embedded server skips, saying why, where it cannot start here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.milvus_server import EmbeddedMilvusError, embedded_milvus


def lite_available() -> str | None:
    """None if milvus-lite can run here, else why not."""
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError as exc:
        return f"pymilvus/milvus-lite not installed ({exc}); pip install -e '.[dev]'"
    return None


@pytest.fixture(scope="session")
def milvus_server_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URI of one embedded Milvus server shared by the session's tests."""
    why = lite_available()
    if why:
        pytest.skip(why)
    try:
        with embedded_milvus(tmp_path_factory.mktemp("milvus-server")) as uri:
            yield uri
    except EmbeddedMilvusError as exc:
        pytest.skip(f"embedded Milvus server cannot start here: {exc}")


@pytest.fixture
def milvus_lite_uri(tmp_path: Path) -> str:
    """A milvus-lite database file under tmp_path."""
    why = lite_available()
    if why:
        pytest.skip(why)
    return str(tmp_path / "milvus-lite.db")


@pytest.fixture
def milvus_collection_name() -> str:
    """A collection name no other test uses (tests share the embedded server)."""
    return f"t_{uuid.uuid4().hex[:12]}"
