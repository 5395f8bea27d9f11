"""Smoke tests of the benchmark scripts: they run, record how to rerun them, and refuse bad input.

No timings are asserted: only that the JSON has its structure and its ratios are finite.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import train_or_reuse
from bench.ingest_clients import ingest_with
from model.checkpoint import save_checkpoint
from model.config import load_config
from tests.support.milvus import lite_available
from tests.support.service_bundle import free_port

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bench.<args>`` from the repository root, as docs/results.md says to."""
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_search_quick_records_its_command_and_finite_ratios(tmp_path: Path) -> None:
    out = tmp_path / "search.json"
    args = ["--quick", "--sizes", "300", "--nprobe", "1", "--singles", "5", "--out", str(out)]
    done = bench("bench.search", *args)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert result["command"].startswith("python -m bench.search --quick")
    assert result["environment"]["threads"] == 1
    assert result["settings"]["plan"] == [{"n": 300, "bits": 64}]
    (row,) = result["results"]
    flat = row["binary_flat_wrapper"]
    assert flat["distances_equal_raw_faiss"] is True
    (ivf,) = row["binary_ivf_wrapper"]["by_nprobe"]
    assert 0 <= ivf["recall_at_10"] <= 1
    ratios = [
        flat["speedup_batch_vs_float32"],
        flat["memory_ratio_float32_over_this"],
        flat["overhead_vs_raw_batch"],
        ivf["speedup_batch_vs_float32"],
        ivf["speedup_batch_vs_exact_binary_wrapper"],
    ]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios)


def test_rerank_speed_quick_times_every_ranking_over_http(tmp_path: Path) -> None:
    out = tmp_path / "rerank.json"
    args = ["--quick", "--sizes", "500", "--singles", "6", "--rounds", "2"]
    done = bench(
        "bench.rerank_speed", *args, "--requests", "12", "--clients", "2", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.rerank_speed --quick")
    (row,) = result["in_process"]
    assert (row["items"], row["bits"]) == (500, 32)
    ratios = [
        row[f"{r}_over_hamming"]["single_median"]["median"]
        for r in ("asymmetric", "hamming_asymmetric")
    ]
    (http,) = result["http"]
    assert http["items"] == {"image": 500}
    ratios += [http["one_client"]["p50_asymmetric_over_hamming"]]
    ratios += [http["clients"]["2"]["queries_per_s_asymmetric_over_hamming"]]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios), ratios


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench.search", "--bits", "12"], "multiple of 8"),
        (["bench.search", "--sizes", "100", "--nprobe", "0"], "at least 1"),
        (["bench.search", "--sizes", "100", "--threads", "0"], "at least 1"),
        (["bench.encoders", "--batch-sizes", "0"], "at least 1"),
        (["bench.encoders", "--device", "foo"], "--device must be cpu or cuda"),
        (["bench.serving", "--bundles", "tiny", "--clients", "0"], "at least 1"),
        (["bench.ingest_cli", "--rounds", "0"], "at least 1"),
        (["bench.rerank_speed", "--bits", "12"], "multiple of 8"),
        (["bench.milvus_vs_faiss", "--sizes", "0"], "at least 1"),
        (["bench.video", "accuracy", "--config", "x.toml", "--bits", "twelve"], "whole number"),
    ],
)
def test_bad_flag_values_get_a_one_line_error(args: list[str], message: str) -> None:
    done = bench(*args, "--quick")  # quick, should a bad value ever be taken again
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert message in done.stderr.strip().splitlines()[-1]


def _accepts_help(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> str | None:
    """Run one recorded command with --help added; None if its parser accepted it, else stderr."""
    if argv[0] == "hashbridge":  # `hashbridge SUBCOMMAND ...`: the console script's own parser
        cli_main = importlib.import_module("hashbridge.cli").main

        def run() -> object:
            return cli_main([*argv[1:], "--help"])
    else:
        assert argv[:2] == ["python", "-m"], argv
        monkeypatch.setattr(sys, "argv", [argv[2], *argv[3:], "--help"])
        run = importlib.import_module(argv[2]).main
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()) as err,
        pytest.raises(SystemExit) as exit_,
    ):
        run()
    return None if exit_.value.code == 0 else err.getvalue()


def test_recorded_commands_are_still_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every results file's command parses with its script's current flags (--help stops it).

    A command is `python -m bench.SCRIPT ...` or `hashbridge SUBCOMMAND ...`, several of them
    joined by `&&`.
    """
    checked = 0
    for path in sorted((REPO / "bench" / "results").glob("*.json")):
        command = json.loads(path.read_text()).get("command")
        if command is None:
            continue
        words = shlex.split(command)
        steps: list[list[str]] = [[]]
        for word in words:
            if word == "&&":
                steps.append([])
            else:
                steps[-1].append(word)
        for argv in steps:
            assert argv and argv[0] in ("python", "hashbridge"), f"{path.name}: {argv}"
            assert _accepts_help(argv, monkeypatch) is None, f"{path.name}: {argv}"
            checked += 1
    assert checked >= 10


def test_train_or_reuse_refuses_a_run_trained_with_other_settings(tmp_path: Path) -> None:
    config_path = tmp_path / "tiny.toml"
    config_path.write_text(
        f'bits = 32\n[data]\nkind = "manifest"\npath = "{tmp_path / "none.csv"}"\n'
    )
    run = tmp_path / "run"
    save_checkpoint({"config": load_config(config_path, ["bits=16"]).to_dict()}, run)
    (run / "metrics.json").write_text(json.dumps({"seconds": 1.0}))

    assert train_or_reuse(config_path, ["bits=16"], run, retrain=False) is None
    # How many threads trained it does not change what it is: still reused.
    assert train_or_reuse(config_path, ["bits=16", "train.threads=2"], run, retrain=False) is None
    with pytest.raises(SystemExit, match=r"train\.epochs: 30 there, 5 now"):
        train_or_reuse(config_path, ["bits=16", "train.epochs=5"], run, retrain=False)
    with pytest.raises(SystemExit, match="bits: 16 there, 32 now"):
        train_or_reuse(config_path, [], run, retrain=False)
    with pytest.raises(SystemExit, match="error: .*epochs"):
        train_or_reuse(config_path, ["train.epochs=-1"], run, retrain=False)
    assert (run / "metrics.json").exists()  # nothing was deleted by the refusals


def test_ingest_clients_stops_at_once_when_a_client_dies() -> None:
    """Clients that cannot connect exit early; the run must fail, not wait out its timeouts."""
    # (Before, it waited 600 s for a report that never came, then failed with queue.Empty.)
    with pytest.raises(RuntimeError, match="a client process failed"):
        ingest_with(f"http://127.0.0.1:{free_port()}", 1, [["a text"]] * 4, 2)


def test_http_search_fills_serves_and_checks_recall(tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    args = ["--items", "3000", "--requests", "24", "--clients", "1", "2"]
    done = bench("bench.http_search", *args, "--ivf-threshold", "1000", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.http_search --items 3000")
    by_kind = {r["kind"]: r for r in result["results"]}
    assert set(by_kind) == {"auto", "flat"}
    for row in by_kind.values():
        assert row["index_sizes"] == {"image": 3000, "text": 3000}
        for rows in row["search"].values():
            assert [r["clients"] for r in rows] == [1, 2]
            assert all(r["failures"] == 0 and r["requests"] == 24 for r in rows)
        floor = row["one_client_code_vs_floor"]
        assert math.isfinite(floor["p50_over_floor_p50"]) and floor["p50_over_floor_p50"] > 0
    # The flat index is exact, so the service's answers are exact; IVF may miss some.
    assert by_kind["flat"]["text_to_image_recall_at_10"] == 1.0
    assert 0 < by_kind["auto"]["text_to_image_recall_at_10"] <= 1.0


def test_milvus_vs_faiss_quick_compares_all_four_backends_in_process_and_over_http(
    tmp_path: Path,
) -> None:
    """Against a real embedded Milvus: equal counts, exact backends exact, HTTP answers whole."""
    if lite_available():
        pytest.skip(lite_available())
    out = tmp_path / "mvf.json"
    args = ["--sizes", "600", "--singles", "5", "--batch-calls", "2", "--requests", "6"]
    done = bench(
        "bench.milvus_vs_faiss", "--quick", *args, "--clients", "1", "2", "--out", str(out)
    )
    if done.returncode != 0 and "EmbeddedMilvusError" in done.stderr:
        pytest.skip(f"embedded Milvus server cannot start here: {done.stderr[-500:]}")
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result
    assert result["command"].startswith("python -m bench.milvus_vs_faiss --quick")
    (row,) = result["results"]
    backends = row["backends"]
    assert set(backends) == {"faiss_flat", "faiss_ivf", "milvus_bin_flat", "milvus_bin_ivf_flat"}
    for b in backends.values():
        assert b["items"] == b["count_after_ingest"] == 600, b["backend"]
        assert b["ingest"]["calls"] == math.ceil(600 / result["settings"]["ingest_batch_items"])
        assert 0 <= b["recall_at_10"] <= 1
    # Exact search is exact: every one of the 10 slots within the exact 10th distance.
    assert backends["faiss_flat"]["recall_at_10"] == 1.0
    assert backends["milvus_bin_flat"]["recall_at_10"] == 1.0
    for name in ("milvus_bin_flat", "milvus_bin_ivf_flat"):
        m = backends[name]
        assert m["segments"]["indexed_rows"] == m["segments"]["total_rows"] == 600
        assert m["segments"]["states"] == ["Sealed"]
        assert m["server_rss_bytes"] > m["server_rss_growth_bytes"] > 0
        assert set(m["consistency_single_ms"]) == {"Strong", "Bounded", "Eventually"}
    assert backends["milvus_bin_ivf_flat"]["nlist"] == result["settings"]["milvus_nlist"]
    assert set(row["http"]) == set(backends)
    for h in row["http"].values():
        assert h["count"] == 600
        assert [c["failures"] for c in h["clients"].values()] == [0, 0]
    assert row["http"]["faiss_flat"]["recall_at_10"] == 1.0
    assert row["http"]["milvus_bin_flat"]["recall_at_10"] == 1.0
    lines = result["summary"]
    assert [(s["milvus"], s["faiss"]) for s in lines] == [
        ("milvus_bin_flat", "faiss_flat"),
        ("milvus_bin_ivf_flat", "faiss_ivf"),
    ]
    ratios = [
        s[key]["milvus_over_faiss"]
        for s in lines
        for key in (
            "ingest_items_per_s",
            "batch100_p50_ms",
            "single_p99_ms",
            "http_2_clients_p50_ms",
        )
    ]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios), ratios


def test_photos_quick_agreement_compares_reduced_and_full_decodes(tmp_path: Path) -> None:
    out = tmp_path / "photos.json"
    done = bench(
        "bench.photos", "--quick", "--parts", "agreement", "--photos", "1", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m bench.photos --quick")
    assert set(result["agreement"]) == {"vga", "12mp"}
    for size in result["agreement"].values():
        assert size["photos"] == 1 and size["bits"] == 64
        differ = size["bits_differing"]
        assert 0 <= differ["mean"] <= differ["max"] <= 64
        assert 0 <= differ["share_of_codes_identical"] <= 1
        assert size["decode_ms_reduced"]["n"] == size["decode_ms_full"]["n"] == 1


def test_photos_quick_ingest_reports_each_client_count(tmp_path: Path) -> None:
    out = tmp_path / "photos.json"
    args = ["--quick", "--parts", "ingest", "--photos", "1", "--batches", "1"]
    done = bench("bench.photos", *args, "--clients", "1", "2", "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["ingest"]) == {"12mp", "vga"}
    for size in result["ingest"].values():
        assert size["images_per_s_reduced_decode"] > 0 and size["images_per_s_full_decode"] > 0
        concurrent = size["reduced_decode_by_clients"]
        assert set(concurrent["images_per_s"]) == {"1", "2"}
        assert all(len(r) == 3 and min(r) > 0 for r in concurrent["rounds"].values())
        assert concurrent["vs_one_client"]["1"] == 1.0
