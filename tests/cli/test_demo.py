"""`hashbridge demo` end to end at a small scale: real data, training, export, server, HTTP.

The first run builds everything in a fresh work folder and checks what the example queries
find; later runs in the same folder must reuse every stage (and rebuild only what changed).
"""

from __future__ import annotations

import io
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import torch
from PIL import Image

from hashbridge.cli import main as cli_main
from hashbridge.demo import DemoError, DemoOptions, DemoReport, run_demo
from hashbridge.demo_service import TEXT_QUERIES, TOP_K

pytestmark = pytest.mark.e2e

#: Small enough for ~100 s; meant to be large enough for every example query to pass the check.
SMALL = {"items": 600, "image_size": 64, "epochs": 60}
SMALL_ARGS = ["--items", "600", "--image-size", "64", "--epochs", "60"]
STAGES = ["data", "train", "evaluate", "export", "ingest"]
#: Held-out items are 20%, database items 30% (the rest, 50%, trains).
NUM_DATABASE = 180
#: A clip's poster is a square of the service's default thumbnail size.
POSTER_SIZE = (160, 160)


@dataclass
class FirstRun:
    options: DemoOptions
    report: DemoReport
    page: httpx.Response
    thumbnail: httpx.Response
    poster: httpx.Response
    stats: dict


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    threads = torch.get_num_threads()  # training sets one thread for the process
    options = DemoOptions(workdir=tmp_path_factory.mktemp("demo"), port=0, **SMALL)
    try:
        with run_demo(options) as (report, _server):
            # The first result of the first text query for pictures and for clips.
            top = {q.hits[0].modality: q.hits[0].id for q in report.queries[::-1] if q.hits}
            with httpx.Client(base_url=report.url, timeout=30) as http:
                run = FirstRun(
                    options,
                    report,
                    http.get("/"),
                    http.get(f"/v1/items/{top['image']}/thumbnail"),
                    http.get(f"/v1/items/{top['video']}/thumbnail"),
                    http.get("/v1/stats").json(),
                )
        yield run
    finally:
        torch.set_num_threads(threads)


def results(report: DemoReport) -> list[list[tuple[int, int]]]:
    return [[(h.id, h.distance) for h in q.hits] for q in report.queries]


def test_first_run_builds_every_stage_and_serves_the_collection(first: FirstRun) -> None:
    report = first.report
    assert report.built == STAGES and report.reused == []
    # 20% of the 600 items are held out: the rest, still, clip and caption, are in the collection.
    assert report.collection == {"image": 480, "video": 480, "text": 480}
    assert first.stats["count"] == 1440
    assert first.stats["modalities"] == ["image", "text", "video"]
    assert (report.num_queries, report.num_database) == (120, NUM_DATABASE)
    assert report.url.startswith("http://127.0.0.1:") and report.url.endswith("/")
    assert first.page.status_code == 200 and "hashbridge search" in first.page.text
    thumb = Image.open(io.BytesIO(first.thumbnail.content))
    assert (thumb.format, thumb.size) == ("JPEG", (64, 64))
    poster = Image.open(io.BytesIO(first.poster.content))
    assert (poster.format, poster.size) == ("JPEG", POSTER_SIZE)


def test_printed_map_is_the_held_out_evaluation(first: FirstRun) -> None:
    on_disk = json.loads((first.options.workdir / "run" / "eval.json").read_text())
    assert first.report.map == on_disk["map"]
    assert on_disk["num_queries"] == 120
    maps = first.report.map
    assert set(maps) >= {"text->image", "image->text", "text->video", "video->text"}
    # At this small size (64 px: 2x2 feature maps per frame, 300 training items) clips reach
    # ~0.78 (the default demo 0.97). A still cannot tell the two classes of an order pair
    # (10 of the 15) apart; a clip can.
    assert maps["text->video"] > 0.7 and maps["video->text"] > 0.7
    assert 0.55 < maps["text->image"] < maps["text->video"]
    assert 0.55 < maps["image->text"] < maps["video->text"]


def test_example_queries_return_the_items_they_ask_for(first: FirstRun) -> None:
    report = first.report
    assert report.problems() == []
    text_queries = [q for q in report.queries if q.kind == "text"]
    asked = [(text, labels, m) for m in ("image", "video") for text, labels in TEXT_QUERIES[m]]
    assert [(q.query, q.expected) for q in text_queries] == [a[:2] for a in asked]
    for q, (_, _, media) in zip(text_queries, asked, strict=True):
        assert len(q.hits) == TOP_K and {h.modality for h in q.hits} == {media}
        assert q.expected <= set(q.hits[0].labels), (q.query, q.hits[0])
        assert sum(q.expected <= set(h.labels) for h in q.hits) >= 3
        # Text queries rank by the asymmetric score (the demo bundle has real values), so
        # their Hamming distances need not be in order; the scores must be.
        scores = [h.score for h in q.hits]
        assert None not in scores and scores == sorted(scores), q.hits  # type: ignore[type-var]
    # A held-out still and its clip (a red circle moving right) look for captions: the
    # still's name its colour and shape, the clip's also the direction it moves in.
    (still,) = [q for q in report.queries if q.kind == "image"]
    (clip,) = [q for q in report.queries if q.kind == "video"]
    assert (still.expected, clip.expected) == ({"red", "circle"}, {"circle_rightwards"})
    for q in (still, clip):
        assert {h.modality for h in q.hits} == {"text"}
        words = q.hits[0].text.split()
        assert "red" in words and "circle" in words, q.hits[0].text
    assert "right" in clip.hits[0].text, clip.hits[0].text  # "to the right", "rightwards"


def test_second_run_reuses_everything(first: FirstRun) -> None:
    workdir = first.options.workdir
    watched = [workdir / "run" / "checkpoint.pt", workdir / "bundle" / "manifest.json"]
    before = [p.stat().st_mtime_ns for p in watched]
    with run_demo(first.options) as (report, _server):
        pass
    assert report.built == [] and report.reused == STAGES
    assert [p.stat().st_mtime_ns for p in watched] == before
    assert report.collection == first.report.collection
    assert results(report) == results(first.report)


def test_a_changed_output_is_rebuilt_and_the_cli_check_passes(
    first: FirstRun, capsys: pytest.CaptureFixture[str]
) -> None:
    eval_json = first.options.workdir / "run" / "eval.json"
    eval_json.write_text("{}")
    argv = ["demo", "--workdir", str(first.options.workdir), "--port", "0", "--check", *SMALL_ARGS]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "built evaluate; reused data, train, export, ingest" in out
    assert "text->image" in out and "text->video" in out
    assert "'a red circle moves to the right' -> video" in out
    # --check stops the service: no URL or API key of a server that is gone.
    assert "search page:" not in out and "X-API-Key" not in out
    assert out.rstrip().endswith("check passed")
    assert json.loads(eval_json.read_text())["map"] == first.report.map


def test_the_cli_serves_until_ctrl_c_then_stops_gracefully(first: FirstRun) -> None:
    argv = ["demo", "--workdir", str(first.options.workdir), "--port", "0", *SMALL_ARGS]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashbridge.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A child started from a background job may inherit an ignored SIGINT.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving until Ctrl-C"):
                break
        url = re.search(r"search page: (http://\S+)", "".join(lines))
        assert url, "".join(lines)
        r = httpx.post(url.group(1) + "v1/search", json={"text": "a red circle", "k": 1})
        assert {"red", "circle"} <= set(r.json()["results"][0]["metadata"]["labels"])
        proc.send_signal(signal.SIGINT)
        rest = proc.stdout.read()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "reused data, train, evaluate, export, ingest" in "".join(lines)
    assert "stopped; indexes snapshotted" in rest


def test_a_busy_port_stops_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = DemoOptions(workdir=tmp_path / "demo", port=port)
        with pytest.raises(DemoError, match=f"cannot listen on 127.0.0.1:{port}"):
            with run_demo(options):
                pass
        assert cli_main(["demo", "--workdir", str(tmp_path / "demo"), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"hashbridge demo: error: cannot listen on 127.0.0.1:{port}" in err
    assert "pick another port with --port" in err
    assert not (tmp_path / "demo").exists()


def test_sizes_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="--items must be between 20 and 100000, got 5"):
        with run_demo(DemoOptions(workdir=tmp_path, port=0, items=5)):
            pass


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--items", "0"], "--items must be between 20 and 100000, got 0"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--image-size", "0"], "--image-size must be between 32 and 512, got 0"),
        (["--port", "70000"], "--port must be between 0 and 65535, got 70000"),
        (["--port", "-1"], "--port must be between 0 and 65535, got -1"),
    ],
)
def test_cli_refuses_zero_sizes_and_bad_ports(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    # Zero once fell back to the default, so "--items 0 --epochs 0" ran the full demo.
    assert cli_main(["demo", "--workdir", str(tmp_path / "demo"), "--check", *flags]) == 2
    assert capsys.readouterr().err.strip() == f"hashbridge demo: error: {message}"
    assert not (tmp_path / "demo").exists()


def test_a_work_folder_of_someone_elses_files_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo replaces its data, run, bundle and collection folders: --workdir ~ wiped ~/data.
    precious = tmp_path / "data" / "my-thesis.txt"
    precious.parent.mkdir()
    precious.write_text("years of work")
    argv = ["demo", "--workdir", str(tmp_path), "--check", "--port", "0", "--items", "20"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"hashbridge demo: error: --workdir {tmp_path} is not empty and was not made by the "
        "demo, which replaces its data, run, bundle and collection folders; give a new or "
        "empty folder"
    )
    assert precious.read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
