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

#: Small enough for ~30 s, large enough that every example query passes the demo's check.
SMALL = {"items": 600, "image_size": 64, "epochs": 30}
STAGES = ["data", "train", "evaluate", "export", "ingest"]


@dataclass
class FirstRun:
    options: DemoOptions
    report: DemoReport
    page: httpx.Response
    thumbnail: httpx.Response
    stats: dict


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FirstRun]:
    threads = torch.get_num_threads()  # training sets one thread for the process
    options = DemoOptions(workdir=tmp_path_factory.mktemp("demo"), port=0, **SMALL)
    try:
        with run_demo(options) as (report, _server):
            top_image = report.queries[0].hits[0].id
            with httpx.Client(base_url=report.url, timeout=30) as http:
                run = FirstRun(
                    options,
                    report,
                    http.get("/"),
                    http.get(f"/v1/items/{top_image}/thumbnail"),
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
    # 20% of the 600 items are held out: the rest, picture and caption, are in the collection.
    assert report.collection == {"image": 480, "text": 480}
    assert first.stats["count"] == 960 and first.stats["modalities"] == ["image", "text"]
    assert (report.num_queries, report.num_database) == (120, 480)
    assert report.url.startswith("http://127.0.0.1:") and report.url.endswith("/")
    assert first.page.status_code == 200 and "hashbridge search" in first.page.text
    thumb = Image.open(io.BytesIO(first.thumbnail.content))
    assert (thumb.format, thumb.size) == ("JPEG", (64, 64))


def test_printed_map_is_the_held_out_evaluation(first: FirstRun) -> None:
    on_disk = json.loads((first.options.workdir / "run" / "eval.json").read_text())
    assert first.report.map == on_disk["map"]
    assert on_disk["num_queries"] == 120
    assert first.report.map["text->image"] > 0.85 and first.report.map["image->text"] > 0.85


def test_example_queries_return_the_items_they_ask_for(first: FirstRun) -> None:
    report = first.report
    assert report.problems() == []
    text_queries = [q for q in report.queries if q.kind == "text"]
    assert [(q.query, q.expected) for q in text_queries] == list(TEXT_QUERIES)
    for q in text_queries:
        assert len(q.hits) == TOP_K and {h.modality for h in q.hits} == {"image"}
        assert q.expected <= set(q.hits[0].labels), (q.query, q.hits[0])
        assert sum(q.expected <= set(h.labels) for h in q.hits) >= 3
        assert [h.distance for h in q.hits] == sorted(h.distance for h in q.hits)
    (picture,) = [q for q in report.queries if q.kind == "image"]
    # A held-out picture with one shape finds captions that name its colour and shape.
    assert len(picture.expected) == 2
    assert {h.modality for h in picture.hits} == {"text"}
    for word in picture.expected:
        assert word in picture.hits[0].text.split(), (picture.expected, picture.hits[0].text)


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
    argv = ["demo", "--workdir", str(first.options.workdir), "--port", "0", "--check"]
    argv += ["--items", "600", "--image-size", "64", "--epochs", "30"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "built evaluate; reused data, train, export, ingest" in out
    assert "text->image" in out and "search page: http://127.0.0.1:" in out
    assert out.rstrip().endswith("check passed")
    assert json.loads(eval_json.read_text())["map"] == first.report.map


def test_the_cli_serves_until_ctrl_c_then_stops_gracefully(first: FirstRun) -> None:
    argv = ["demo", "--workdir", str(first.options.workdir), "--port", "0"]
    argv += ["--items", "600", "--image-size", "64", "--epochs", "30"]
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
