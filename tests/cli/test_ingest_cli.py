"""`hashbridge ingest` against a real server: a folder with bad files, reruns, a server crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from hashbridge.ingest import IngestOptions, ingest
from hashbridge.ingest_sources import Entry
from model.data.synthetic_video import write_clip
from tests.support.service_bundle import API_KEY, AUTH, REPO, ServerProcess, png

N_IMAGES, N_CLIPS, N_CAPTIONS = 60, 10, 20
CORRUPT = ("photos/2/broken.png", "clips/broken.mp4")


@pytest.fixture(scope="session")
def video_bundle(svc_video_bundle_dir: Path) -> Path:
    """The session's image+text+video bundle (tests/conftest.py)."""
    return svc_video_bundle_dir


def make_library(root: Path) -> list[str]:
    """60 images (20 with a caption beside them) and 10 clips, one of each corrupt.

    Returns the client ids of every good item.
    """
    good = []
    for i in range(N_IMAGES - 1):
        rel = f"photos/{i % 3}/pic-{i:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(png(i))
        good.append(rel)
        if i < N_CAPTIONS:
            caption = rel.removesuffix(".png") + ".txt"
            words = ["cat", "dog", "sea", "city", "snow"]
            (root / caption).write_text(f"a {words[i % 5]} and a {words[(i + 2) % 5]}\n")
            good.append(caption)
    rng = np.random.default_rng(0)
    for i in range(N_CLIPS - 1):
        rel = f"clips/clip-{i}.mp4"
        frames = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
        write_clip(root / rel, frames, fps=6)
        good.append(rel)
    (root / CORRUPT[0]).write_bytes(png(99)[:120])  # truncated mid-pixels
    (root / CORRUPT[1]).write_bytes(b"\0\0\0\x18ftypisom\0\0\0\0isomiso2" + b"\x17" * 400)
    (root / ".hidden.png").write_bytes(png(100))  # hidden files are not ingested
    return sorted(good)


def hashbridge_ingest(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real console entry point in a fresh interpreter."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HASHBRIDGE_API_KEY": API_KEY}
    return subprocess.run(
        [sys.executable, "-m", "hashbridge.cli", "ingest", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stored_ids(url: str) -> dict[str, Any]:
    """Stats, and every stored item's client id (listed through search by code)."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as http:
        stats = http.get("/v1/stats").json()
        ids: list[str] = []
        for modality in stats["by_modality"]:
            body = {"code": "0" * 8, "k": 1000, "modalities": [modality]}
            ids += [h["client_id"] for h in http.post("/v1/search", json=body).json()["results"]]
    return {"stats": stats, "client_ids": ids}


def ingest_posts(url: str) -> int:
    """POST /v1/items requests the server has answered (from /metrics)."""
    text = httpx.get(f"{url}/metrics").text
    total = 0
    for line in text.splitlines():
        if line.startswith("hashbridge_request_duration_seconds_count{") and (
            'method="POST"' in line and 'route="/v1/items"' in line
        ):
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


@pytest.fixture
def library(tmp_path: Path) -> tuple[Path, list[str]]:
    root = tmp_path / "library"
    return root, make_library(root)


@pytest.fixture
def server(video_bundle: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(video_bundle, tmp_path / "data", tmp_path / "server.log") as proc:
        proc.wait_ready()
        yield proc


def test_a_folder_is_stored_except_its_corrupt_files_which_are_named(
    library: tuple[Path, list[str]], server: ServerProcess
) -> None:
    root, good = library
    run = hashbridge_ingest(str(root), "--url", server.url, "--batch", "8")
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    total = len(good) + len(CORRUPT)
    assert lines[0].startswith(
        f"{total} items: {len(good)} ingested, 0 skipped (already stored), 2 refused, 0 failed"
    ), run.stdout
    refused = {line.split(":")[0] for line in lines[1:]}
    assert refused == {f"refused {name}" for name in CORRUPT}
    assert "Unreadable media" in run.stdout
    found = stored_ids(server.url)
    assert sorted(found["client_ids"]) == good
    by_modality = found["stats"]["by_modality"]
    assert by_modality == {"image": N_IMAGES - 1, "text": N_CAPTIONS, "video": N_CLIPS - 1}
    with httpx.Client(base_url=server.url, headers=AUTH) as http:
        body = {"client_ids": ["photos/0/pic-00.txt"]}
        (hit,) = http.post("/v1/items/lookup", json=body).json()["found"]
        item = http.get(f"/v1/items/{hit['id']}").json()
    # The caption is stored as a text, linked to its picture.
    assert item["metadata"] == {
        "path": "photos/0/pic-00.txt",
        "caption_of": "photos/0/pic-00.png",
        "text": (root / "photos/0/pic-00.txt").read_text().strip(),
    }

    # The corrupt files fixed (here: removed), a rerun sends nothing and skips everything.
    for name in CORRUPT:
        (root / name).unlink()
    posts = ingest_posts(server.url)
    rerun = hashbridge_ingest(str(root), "--url", server.url)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert rerun.stdout.startswith(
        f"{len(good)} items: 0 ingested, {len(good)} skipped (already stored), 0 refused"
    )
    assert ingest_posts(server.url) == posts
    assert stored_ids(server.url)["stats"]["count"] == len(good)


def test_a_server_killed_mid_ingest_loses_and_duplicates_nothing(
    library: tuple[Path, list[str]], video_bundle: Path, tmp_path: Path
) -> None:
    root, good = library
    for name in CORRUPT:
        (root / name).unlink()
    data, log = tmp_path / "crash-data", tmp_path / "crash.log"
    first = ServerProcess(video_bundle, data, log)
    first.wait_ready()
    env = {**os.environ, "PYTHONPATH": str(REPO), "HASHBRIDGE_API_KEY": API_KEY}
    client = subprocess.Popen(
        [sys.executable, "-m", "hashbridge.cli", "ingest", str(root), "--url", first.url]
        + ["--batch", "1", "--concurrency", "2", "--retries", "12"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        count = 0
        while count < 10 and time.monotonic() < deadline:
            count = httpx.get(f"{first.url}/v1/stats", timeout=5).json()["count"]
            time.sleep(0.02)
        first.stop(signal.SIGKILL)
        assert 10 <= count < len(good), f"killed at {count} of {len(good)}: not mid-ingest"
        # The same port, the same data: the client's retries reach the new server.
        with ServerProcess(video_bundle, data, log, port=first.port) as second:
            second.wait_ready()
            out, err = client.communicate(timeout=240)
            assert client.returncode == 0, out + err
            assert ", 0 refused, 0 failed" in out.splitlines()[0], out
            rerun = hashbridge_ingest(str(root), "--url", second.url)
            assert rerun.returncode == 0, rerun.stdout + rerun.stderr
            assert f"0 ingested, {len(good)} skipped" in rerun.stdout
            found = stored_ids(second.url)
            assert sorted(found["client_ids"]) == good  # none lost, none twice
            stats = found["stats"]
            assert stats["count"] == len(good)
            assert stats["index_sizes"] == stats["by_modality"]
            second.stop()
    finally:
        if client.poll() is None:
            client.kill()
        first.__exit__()


def test_a_manifest_stores_its_extra_columns_as_metadata(
    server: ServerProcess, tmp_path: Path
) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.png").write_bytes(png(1))
    rows = [
        {"id": "1", "image": "a.png", "text": "a cat", "labels": "cat|pet", "album": "home"},
        {"id": "2", "text": "blue sea", "labels": ["sea"], "album": "trip", "year": 2024},
    ]
    manifest = folder / "set.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = hashbridge_ingest(str(manifest), "--url", server.url, "--prefix", "set/")
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("3 items: 3 ingested"), run.stdout
    with httpx.Client(base_url=server.url, headers=AUTH) as http:
        body = {"client_ids": ["set/1/image", "set/1/text", "set/2/text", "set/3/text"]}
        hits = http.post("/v1/items/lookup", json=body).json()["found"]
        found = {h["client_id"]: h for h in hits}
        assert list(found) == ["set/1/image", "set/1/text", "set/2/text"]
        image = http.get(f"/v1/items/{found['set/1/image']['id']}").json()
        text = http.get(f"/v1/items/{found['set/2/text']['id']}").json()
    assert image["modality"] == "image"
    assert image["metadata"] == {
        "row": "1",
        "labels": ["cat", "pet"],
        "album": "home",
        "path": "a.png",
        "filename": "a.png",
    }
    assert text["metadata"] == {
        "row": "2",
        "labels": ["sea"],
        "album": "trip",
        "year": 2024,
        "text": "blue sea",
    }


def test_user_mistakes_are_one_line_and_exit_2(server: ServerProcess, tmp_path: Path) -> None:
    missing = hashbridge_ingest(str(tmp_path / "nope"), "--url", server.url)
    assert missing.returncode == 2
    assert missing.stderr.strip().endswith("nope: no such file or folder")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.png").write_bytes(png(0))
    env_key = hashbridge_ingest(str(tmp_path / "one"), "--url", server.url, "--api-key", "wrong")
    assert env_key.returncode == 2
    assert "the service refused the API key" in env_key.stderr
    assert len(env_key.stderr.strip().splitlines()) == 1
    # Port 9 (discard): nothing listens there.
    nobody = hashbridge_ingest(
        str(tmp_path / "one"), "--url", "http://127.0.0.1:9", "--retries", "0"
    )
    assert nobody.returncode == 2
    assert "cannot reach the service at http://127.0.0.1:9" in nobody.stderr


def test_what_cannot_be_sent_is_refused_here_and_the_rest_is_stored(
    server: ServerProcess, tmp_path: Path
) -> None:
    (tmp_path / "ok.png").write_bytes(png(5))
    entries = [
        Entry("ok.png", path=tmp_path / "ok.png"),
        Entry("gone.png", path=tmp_path / "gone.png"),  # removed since the scan
        Entry("long.txt", text="cat " * 3000),  # over HASHBRIDGE_MAX_TEXT_CHARS (10,000)
        Entry("blank.txt", text="  \n"),
        Entry("fine.txt", text="a dog"),
    ]
    report = ingest(entries, IngestOptions(url=server.url, api_key=API_KEY, progress=False))
    assert (report.total, report.ingested, report.skipped) == (5, 2, 0)
    reasons = {r.name: r.reason for r in report.refused}
    assert sorted(reasons) == ["blank.txt", "gone.png", "long.txt"]
    assert reasons["gone.png"].startswith("cannot read")
    assert "HASHBRIDGE_MAX_TEXT_CHARS" in reasons["long.txt"]
    assert not report.ok
    assert sorted(stored_ids(server.url)["client_ids"]) == ["fine.txt", "ok.png"]
