"""Start an embedded Milvus standalone server (PyPI ``milvus``) for tests and benches.

The ``milvus`` package ships a real Milvus 2.3 standalone binary (embedded etcd, local
storage) and starts it on free ports in about 10-20 s. It is a test and bench tool: a
deployment runs the official stack (docker-compose.yml, profile ``milvus``).
"""

from __future__ import annotations

import logging
import socket
import time
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
        import milvus
    except ImportError as exc:
        raise EmbeddedMilvusError(f"the milvus package is not installed ({exc})") from None
    base_dir.mkdir(parents=True, exist_ok=True)
    server: Any = milvus.MilvusServer(config=_config(milvus, base_dir))
    server.set_base_dir(str(base_dir))
    logs = base_dir / "logs" / "milvus-stderr.log"
    try:
        server.start()
        time.sleep(0.5)
        if server.server_proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {server.server_proc.returncode}")
    except Exception as exc:
        server.stop()
        tail = logs.read_text(errors="replace")[-2000:] if logs.exists() else ""
        raise EmbeddedMilvusError(f"embedded Milvus did not start: {exc!r}\n{tail}") from None
    uri = f"http://127.0.0.1:{server.listen_port}"
    log.info("embedded Milvus at %s (pid %d, data %s)", uri, server.server_proc.pid, base_dir)
    try:
        yield uri
    finally:
        # terminate, then kill after 1 s: it ignores SIGTERM for many seconds.
        server.stop()


def _config(milvus: Any, base_dir: Path) -> Any:
    """The package's config, with the embedded etcd on free ports.

    The package picks free ports for Milvus's own services but leaves its embedded etcd on
    2379/2380, so a second server on the machine (a bench beside the tests' server) died at
    start-up. Milvus reads an etcd config file from ``etcd.config.path``; the package's
    template has no such key, so a copy of the template gains one.
    """
    package = Path(milvus.__file__).parent / "data"
    template = (package / "config.yaml.template").read_text(encoding="utf-8")
    client_port, peer_port = _free_port(), _free_port()
    etcd_file = base_dir / "etcd.yaml"
    etcd_file.write_text(
        f"name: default\n"
        f"listen-client-urls: http://127.0.0.1:{client_port}\n"
        f"advertise-client-urls: http://127.0.0.1:{client_port}\n"
        f"listen-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-advertise-peer-urls: http://127.0.0.1:{peer_port}\n"
        f"initial-cluster: default=http://127.0.0.1:{peer_port}\n",
        encoding="utf-8",
    )
    marker = "  use:\n    embed: true"
    if marker not in template:
        raise EmbeddedMilvusError("the milvus package's config template changed: no etcd.use")
    template = template.replace(marker, f"  config:\n    path: {etcd_file}\n{marker}", 1)
    own = base_dir / "config.yaml.template"
    own.write_text(template, encoding="utf-8")
    config = milvus.MilvusServerConfig(template=str(own), etcd_port=client_port)
    config.glog_conf_file = str(package / "glog.conf")  # set only for the default template
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
