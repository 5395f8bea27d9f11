"""The real server: uvicorn in a fresh subprocess on loopback, including a kill -9 mid-ingest."""

import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from index.reference import NumpyHammingIndex
from tests.support.service_bundle import AUTH, VOCAB, ServerProcess, png

pytestmark = pytest.mark.slow


def test_real_server_round_trip_and_clean_shutdown(svc_bundle_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(svc_bundle_dir, data, tmp_path / "server.log") as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/healthz").json() == {"status": "ok"}
            r = http.post("/v1/items", json={"items": [{"text": "a cat on a red car"}]})
            assert r.status_code == 401
            assert r.headers["content-type"] == "application/problem+json"
            texts = http.post(
                "/v1/items",
                json={"items": [{"text": "a cat on a red car", "client_id": "t"}]},
                headers=AUTH,
            ).json()["items"]
            files = [("files", (f"{i}.png", png(i), "image/png")) for i in range(3)]
            images = http.post("/v1/items", files=files, headers=AUTH).json()["items"]
            q = http.post("/v1/search", files=[("file", ("q.png", png(1), "image/png"))]).json()
            assert q["results"][0]["id"] == images[1]["id"]
            assert q["results"][0]["distance"] == 0
            q = http.post("/v1/search", json={"text": "red car cat", "modalities": ["text"]})
            assert q.json()["results"][0]["id"] == texts[0]["id"]
            assert "hashbridge_request_duration_seconds_bucket" in http.get("/metrics").text
        # uvicorn re-raises the signal after a graceful shutdown, so -SIGTERM is a clean exit.
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in server.output()
    # A graceful stop snapshots every index.
    assert {p.name for p in data.glob("index-*.hbix")} == {"index-image.hbix", "index-text.hbix"}


def test_bad_bundle_stops_startup_with_its_message(svc_bundle_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "bundle"
    broken.mkdir()
    for f in svc_bundle_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["files"]["image.pt"] = "0" * 64
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with ServerProcess(broken, tmp_path / "data", tmp_path / "server.log") as server:
        code = server.proc.wait(60)
        assert code != 0
        assert "cannot start: sha256 mismatch for image.pt" in server.output()


def _data_dir_is_a_file(data: Path) -> None:
    data.write_text("not a folder")


def _store_is_not_sqlite(data: Path) -> None:
    data.mkdir()
    (data / "store.sqlite3").write_bytes(b"garbage, not a database" * 100)


def _bundle_record_is_not_json(data: Path) -> None:
    data.mkdir()
    (data / "bundle.json").write_text("{oops")


@pytest.mark.parametrize(
    ("break_it", "fragment"),
    [
        (_data_dir_is_a_file, "cannot open the collection in"),
        (_store_is_not_sqlite, "(store.sqlite3): file is not a database"),
        (_bundle_record_is_not_json, "bundle.json is unreadable"),
    ],
)
def test_unusable_data_dir_stops_startup_with_one_line(
    svc_bundle_dir: Path, tmp_path: Path, break_it: Callable[[Path], None], fragment: str
) -> None:
    data = tmp_path / "data"
    break_it(data)
    with ServerProcess(svc_bundle_dir, data, tmp_path / "server.log") as server:
        assert server.proc.wait(60) == 2
        output = server.output()
    assert "Traceback" not in output
    last = output.strip().splitlines()[-1]
    assert last.startswith("hashbridge: cannot start: ") and fragment in last, last


class Ingester(threading.Thread):
    """Sends batches until the server dies; remembers what was acknowledged, in order."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acked: list[dict[str, Any]] = []  # response items, in write order
        self.inflight: list[dict[str, Any]] | None = None  # the batch that got no answer
        self.error: BaseException | None = None
        self.rng = np.random.default_rng(42)

    def batch(self, b: int) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
        if b % 4 == 3:
            # Every fourth batch is images; some re-send earlier client ids with new pixels.
            cids = [f"img-{b}-0", f"img-{b}-1", f"img-{b - 4}-0" if b > 4 else f"img-{b}-2"]
            metas = [{"cid": c, "v": b} for c in cids]
            files = [
                ("files", (f"{c}.png", png(1000 + 3 * b + j), "image/png"))
                for j, c in enumerate(cids)
            ]
            form = {"client_ids": json.dumps(cids), "metadata": json.dumps(metas)}
            return "multipart", {"files": files, "data": form}, metas
        words = [" ".join(self.rng.choice(VOCAB, 3)) for _ in range(6)]
        cids = [f"txt-{b}-{j}" for j in range(5)] + [f"txt-{b - 2}-0" if b >= 2 else "txt-x"]
        items = [
            {"text": w, "client_id": c, "metadata": {"cid": c, "v": b}}
            for w, c in zip(words, cids, strict=True)
        ]
        return "json", {"json": {"items": items}}, [i["metadata"] for i in items]

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30, headers=AUTH) as http:
            for b in range(10_000):
                _, kwargs, metas = self.batch(b)
                self.inflight = metas
                try:
                    r = http.post("/v1/items", **kwargs)
                except httpx.HTTPError:
                    return
                if r.status_code != 200:
                    self.error = AssertionError(r.text)
                    return
                for item, meta in zip(r.json()["items"], metas, strict=True):
                    self.acked.append({**item, **meta})
                self.inflight = None


def expected_state(writes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Apply writes in order: a re-sent client id replaces (and moves to the end)."""
    state: dict[str, dict[str, Any]] = {}
    for w in writes:
        state.pop(w["cid"], None)
        state[w["cid"]] = w
    return state


def test_kill_9_mid_ingest_loses_no_acknowledged_item(svc_bundle_dir: Path, tmp_path: Path) -> None:
    data, log = tmp_path / "data", tmp_path / "server.log"
    env = {"HASHBRIDGE_SNAPSHOT_EVERY": "25", "HASHBRIDGE_INDEX_KIND": "flat"}
    with ServerProcess(svc_bundle_dir, data, log, **env) as server:
        server.wait_ready()
        ingester = Ingester(server.url)
        ingester.start()
        deadline = time.monotonic() + 60
        while len(ingester.acked) < 150 and ingester.is_alive():
            assert time.monotonic() < deadline, "ingest too slow"
            time.sleep(0.005)
        assert ingester.error is None, ingester.error
        server.stop(signal.SIGKILL)
        ingester.join(30)
    assert ingester.error is None, ingester.error
    assert any(data.glob("index-*.hbix")), "no snapshot was taken before the kill"

    with ServerProcess(svc_bundle_dir, data, log, **env) as server:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=30) as http:

            def find(code: str, modality: str, k: int, where: dict | None = None) -> list[dict]:
                body = {"code": code, "k": k, "modalities": [modality], "where": where}
                r = http.post("/v1/search", json=body)
                assert r.status_code == 200, r.text
                return r.json()["results"]

            writes = list(ingester.acked)
            # The unanswered batch was committed whole or not at all.
            if ingester.inflight:
                present = []
                for meta in ingester.inflight:
                    hits = find(
                        "00000000", "text" if meta["cid"].startswith("txt") else "image", 1, meta
                    )
                    present.append(bool(hits))
                assert all(present) or not any(present), present
                if all(present):
                    for meta in ingester.inflight:
                        m = "text" if meta["cid"].startswith("txt") else "image"
                        hit = find("00000000", m, 1, meta)[0]
                        item = http.get(f"/v1/items/{hit['id']}").json()
                        writes.append(
                            {**meta, "id": item["id"], "code": item["code"], "modality": m}
                        )

            state = expected_state(writes)
            stats = http.get("/v1/stats").json()
            assert stats["count"] == len(state)  # nothing lost, nothing duplicated
            for w in state.values():
                hits = find(w["code"], w["modality"], 1, {"cid": w["cid"]})
                assert hits and hits[0]["id"] == w["id"] and hits[0]["distance"] == 0, w
                assert hits[0]["metadata"]["v"] == w["v"]

            # The recovered collection answers exactly like the reference built from the acks.
            rng = np.random.default_rng(7)
            for modality in ("text", "image"):
                items = [w for w in state.values() if w["modality"] == modality]
                ref = NumpyHammingIndex(32)
                ref.add(
                    [w["id"] for w in items],
                    np.array([list(bytes.fromhex(w["code"])) for w in items], np.uint8),
                )
                queries = rng.integers(0, 256, (8, 4), dtype=np.uint8)
                want = ref.search(queries, 20)
                for q, ids, dists in zip(queries, want.ids, want.distances, strict=True):
                    got = find(q.tobytes().hex(), modality, 20)
                    assert [h["distance"] for h in got] == dists[ids >= 0].tolist()
                    assert [h["id"] for h in got] == ids[ids >= 0].tolist()

            # Re-sending an acknowledged batch after the crash creates no duplicates.
            again = [{"text": "a cat", "client_id": w["cid"]} for w in list(state.values())[:5]]
            r = http.post("/v1/items", json={"items": again}, headers=AUTH)
            assert r.status_code == 200
            assert http.get("/v1/stats").json()["count"] == len(state)
        assert server.stop() in (0, -signal.SIGTERM)
