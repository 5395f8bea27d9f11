"""Two service processes on one Milvus collection (embedded server): what one writes the
other serves at once, and a replica killed mid-ingest loses no acknowledged item."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import httpx

from tests.support.service_bundle import AUTH, ServerProcess


def replica(
    bundle_dir: Path, tmp_path: Path, name: str, uri: str, collection: str
) -> ServerProcess:
    return ServerProcess(
        bundle_dir,
        tmp_path / name,
        tmp_path / f"{name}.log",
        HASHBRIDGE_INDEX_BACKEND="milvus",
        HASHBRIDGE_MILVUS_URI=uri,
        HASHBRIDGE_MILVUS_COLLECTION=collection,
        HASHBRIDGE_MILVUS_TIMEOUT_S="30",  # generous: the CPUs here are shared
    )


def search_code(url: str, code: str, k: int = 5) -> list[int]:
    r = httpx.post(f"{url}/v1/search", json={"code": code, "k": k}, timeout=30)
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["results"] if h["distance"] == 0]


def test_two_replicas_share_one_collection_and_survive_a_kill(
    svc_bundle_dir: Path, tmp_path: Path, milvus_server_uri: str, milvus_collection_name: str
) -> None:
    args = (milvus_server_uri, milvus_collection_name)
    with (
        replica(svc_bundle_dir, tmp_path, "a", *args) as a,
        replica(svc_bundle_dir, tmp_path, "b", *args) as b,
    ):
        a.wait_ready(120)
        b.wait_ready(120)
        r = httpx.post(
            f"{a.url}/v1/items", json={"items": [{"text": "a red car"}]}, headers=AUTH, timeout=30
        )
        assert r.status_code == 200, r.text
        (item,) = r.json()["items"]
        # Ingested through a, found through b at once (Strong consistency).
        assert item["id"] in search_code(b.url, item["code"])
        assert httpx.get(f"{b.url}/v1/items/{item['id']}").json()["code"] == item["code"]
        # Deleted through b, gone from a.
        assert httpx.delete(f"{b.url}/v1/items/{item['id']}", headers=AUTH).status_code == 204
        assert item["id"] not in search_code(a.url, item["code"])
        assert httpx.get(f"{a.url}/v1/items/{item['id']}").status_code == 404

        # Ingest through a in a loop and kill -9 it mid-way: every acknowledged item
        # is then served by b.
        acknowledged: list[dict] = []
        stop = threading.Event()

        def ingest() -> None:
            n = 0
            with httpx.Client(timeout=30) as client:
                while not stop.is_set():
                    body = {"items": [{"text": f"item {n} word{n % 7}", "client_id": f"k{n}"}]}
                    try:
                        r = client.post(f"{a.url}/v1/items", json=body, headers=AUTH)
                    except httpx.HTTPError:
                        return
                    if r.status_code == 200:
                        acknowledged.extend(r.json()["items"])
                    n += 1

        writer = threading.Thread(target=ingest)
        writer.start()
        deadline = threading.Event()
        while len(acknowledged) < 10 and writer.is_alive():
            deadline.wait(0.05)
        a.stop(signal.SIGKILL)
        stop.set()
        writer.join(30)
        assert len(acknowledged) >= 10
        for got in acknowledged:
            r = httpx.get(f"{b.url}/v1/items/{got['id']}", timeout=30)
            assert r.status_code == 200, (got, r.text)
            assert r.json()["client_id"] == got["client_id"]
        stats = httpx.get(f"{b.url}/v1/stats", timeout=30).json()
        assert stats["count"] >= len(acknowledged)
        # b keeps serving writes and searches.
        r = httpx.post(
            f"{b.url}/v1/items", json={"items": [{"text": "after"}]}, headers=AUTH, timeout=30
        )
        assert r.status_code == 200, r.text
        (after,) = r.json()["items"]
        # The loop's texts may share its code, and ties rank by id: ask for all of them.
        assert after["id"] in search_code(b.url, after["code"], k=stats["count"] + 1)
