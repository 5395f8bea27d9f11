"""Start an embedded Milvus standalone server (PyPI ``milvus``) for tests and benches.

The ``milvus`` package ships a real Milvus 2.3 standalone binary (embedded etcd, local
storage) and starts it on free ports in about 10-20 s. It is a test and bench tool: a
deployment runs the official stack (docker-compose.yml, profile ``milvus``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class EmbeddedMilvusError(RuntimeError):
    """The embedded server could not be started here (package missing, start-up failed)."""


@contextmanager
def embedded_milvus(base_dir: Path) -> Iterator[str]:
    """Run a Milvus server with its data under base_dir; yield its URI; stop it after."""
    try:
        from milvus import MilvusServer
    except ImportError as exc:
        raise EmbeddedMilvusError(f"the milvus package is not installed ({exc})") from None
    base_dir.mkdir(parents=True, exist_ok=True)
    server: Any = MilvusServer()
    server.set_base_dir(str(base_dir))
    try:
        server.start()
    except Exception as exc:
        server.stop()
        logs = base_dir / "logs" / "milvus-stderr.log"
        tail = logs.read_text(errors="replace")[-2000:] if logs.exists() else ""
        raise EmbeddedMilvusError(f"embedded Milvus did not start: {exc!r}\n{tail}") from None
    uri = f"http://127.0.0.1:{server.listen_port}"
    log.info("embedded Milvus at %s (pid %d, data %s)", uri, server.server_proc.pid, base_dir)
    try:
        yield uri
    finally:
        # terminate, then kill after 1 s: it ignores SIGTERM for many seconds.
        server.stop()
