"""Fixtures that provide Milvus to tests: milvus-lite in-process, and an embedded server.

tests/conftest.py loads them for every folder (its ``pytest_plugins``). A test that
needs the embedded server skips, saying why, where it cannot start here.
"""

from __future__ import annotations

import socket
import threading
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


class TcpRelay:
    """A loopback TCP relay to target: stands for the network between service and Milvus.

    ``cut()`` drops every connection and refuses new ones, as a Milvus that went down would.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                return
            with self._lock:
                self._sockets += [client, upstream]
                if not self._open:
                    self._close_all()
                    return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        """Close the listener and every relayed connection."""
        with self._lock:
            self._open = False
            # close() alone does not wake a thread blocked in accept(), which would go on
            # accepting; shutdown() does.
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._close_all()

    def _close_all(self) -> None:
        for s in self._sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()
