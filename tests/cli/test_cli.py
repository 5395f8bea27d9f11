"""The `hashbridge` command: user mistakes exit 2 with one clear line; train then eval works."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hashbridge.cli import main
from model.config import ConfigError, load_config
from model.data.synthetic import write_synthetic_images
from tests.support.cli_checks import assert_one_error_line, run_cli

REPO = Path(__file__).resolve().parents[2]
DIRECTIONS = {"image->text", "text->image", "image->image", "text->text"}


def write_config(folder: Path, manifest: str = "m.csv", extra: str = "") -> Path:
    path = folder / "run.toml"
    path.write_text(
        f"bits = 16\n{extra}\n"
        f'[data]\npath = "{manifest}"\n'
        f'[image]\nsize = 64\nhidden = [64]\ncache_dir = "{(folder / "features").as_posix()}"\n'
        "[text]\nhidden = [64]\n"
        "[train]\nepochs = 2\nbatch_size = 8\nlr = 0.01\neval_every = 1\n"
    )
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """A folder with three real PNGs in img/."""
    manifest = write_synthetic_images(tmp_path / "img-src", 3, seed=0, size=16)
    (tmp_path / "img").mkdir()
    for i, png in enumerate(sorted((manifest.parent / "images").glob("*.png"))):
        png.rename(tmp_path / "img" / f"{i}.png")
    return tmp_path


HEADER = "id,image,text,labels,split"
GOOD = ["a,img/0.png,a red circle,red|circle,train", "b,img/1.png,a blue star,blue|star,query"]


@pytest.mark.parametrize(
    ("rows", "needles"),
    [
        (
            [GOOD[0], "b,img/1.png,a blue, star,blue|star,query"],
            ["m.csv", "row 2 (line 3)", "malformed CSV", "6 fields but the header has 5"],
        ),
        (
            [GOOD[0], 'b,img/1.png,"an open quote,blue,query'],
            ["m.csv", "malformed CSV"],
        ),
        (
            [GOOD[0], "b,img/missing.png,a blue star,blue|star,query"],
            ["row 2 (line 3)", "image file not found", "missing.png"],
        ),
        ([GOOD[0], "b,img/1.png,  ,blue|star,query"], ["row 2 (line 3)", "empty 'text'"]),
        ([GOOD[0], "b,img/1.png,a blue star,blue|star,holdout"], ["row 2", "unknown split"]),
        ([GOOD[0], "b,img/1.png,a blue star,,query"], ["row 2", "no labels"]),
        ([GOOD[0], "a,img/1.png,a blue star,blue,query"], ["row 2", "duplicate id 'a'"]),
        ([GOOD[0], GOOD[1].replace("query", "train")], ["no 'query' or 'test' rows"]),
        ([], ["no rows"]),
    ],
    ids=[
        "field-count",
        "quoting",
        "missing-image",
        "empty-text",
        "unknown-split",
        "no-labels",
        "duplicate-id",
        "no-queries",
        "no-rows",
    ],
)
def test_train_rejects_bad_manifests(
    capsys: pytest.CaptureFixture[str], images: Path, rows: list[str], needles: list[str]
) -> None:
    (images / "m.csv").write_text("\n".join([HEADER, *rows]) + "\n")
    code, out, err = run_cli(
        capsys, "train", "--config", write_config(images), "--out", images / "run"
    )
    assert code == 2
    assert out == ""
    assert_one_error_line(err, "train", *needles)
    assert not (images / "run").exists()


def test_train_on_a_single_item_without_a_split(
    capsys: pytest.CaptureFixture[str], images: Path
) -> None:
    # Was a ValueError traceback from the random split ("n_query must be in [1, 0]").
    (images / "m.csv").write_text("id,image,text,labels\na,img/0.png,a red circle,red\n")
    code, _, err = run_cli(
        capsys, "train", "--config", write_config(images), "--out", images / "run"
    )
    assert code == 2
    assert_one_error_line(err, "train", "m.csv", "only 1 item: a run needs at least 2")
    assert not (images / "run").exists()


def test_train_missing_manifest(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = write_config(tmp_path, manifest="nowhere.csv")
    code, _, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert code == 2
    assert_one_error_line(err, "train", "nowhere.csv", "manifest file not found")


def test_train_missing_or_invalid_config(capsys: pytest.CaptureFixture[str], tmp_path: Path):
    code, _, err = run_cli(
        capsys, "train", "--config", tmp_path / "nope.toml", "--out", tmp_path / "run"
    )
    assert code == 2
    assert_one_error_line(err, "train", "nope.toml", "not found")

    (tmp_path / "bad.toml").write_text("bits = = 3\n")
    code, _, err = run_cli(
        capsys, "train", "--config", tmp_path / "bad.toml", "--out", tmp_path / "run"
    )
    assert code == 2
    assert_one_error_line(err, "train", "bad.toml", "not valid TOML")

    code, _, err = run_cli(capsys, "train", "--out", tmp_path / "run")
    assert code == 2
    assert_one_error_line(err, "train", "--config FILE is required")


@pytest.mark.parametrize(
    ("override", "needles"),
    [
        ("trian.epochs=3", ["unknown config key 'trian'", "known: bits, data"]),
        ("train.epochz=3", ["unknown config key 'train.epochz'", "epochs"]),
        ("bits=12", ["bits must be a multiple of 8", "got 12"]),
        ("bits", ["'bits' must look like key=value"]),
        ("data=5", ["'data' must be a table"]),
    ],
)
def test_train_rejects_bad_overrides(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, override: str, needles: list[str]
) -> None:
    config = write_config(tmp_path)
    code, _, err = run_cli(
        capsys, "train", "--config", config, "--set", override, "--out", tmp_path / "run"
    )
    assert code == 2
    assert_one_error_line(err, "train", *needles)


def test_train_rejects_a_wrongly_typed_override(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    code, _, err = run_cli(
        capsys, "train", "--config", config, "--set", "bits=abc", "--out", tmp_path / "run"
    )
    assert code == 2
    assert_one_error_line(err, "train", "bits", "abc")


@pytest.mark.parametrize(
    "override", ["train.epochs=abc", "bits=16.0", "train.lr=fast", "image.hidden=64"]
)
def test_load_config_rejects_wrong_types(override: str) -> None:
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_set_overrides_top_level_and_nested_keys(tmp_path: Path) -> None:
    config_file = write_config(tmp_path, extra="split_seed = 3")
    config = load_config(
        config_file,
        ["bits=64", "split_seed=7", "train.epochs=3", 'data.kind="wikipedia"', "dsmhn.w_intra=0.5"],
    )
    assert (config.bits, config.split_seed, config.seed) == (64, 7, 0)
    assert config.train.epochs == 3 and config.train.batch_size == 8
    assert config.data.kind == "wikipedia"
    assert config.options.w_intra == 0.5
    # A relative data path is resolved against the config file's folder.
    assert config.data.path == str((tmp_path / "m.csv").resolve())
    # Without overrides the file's values stand; without a file, the defaults.
    assert load_config(config_file).bits == 16
    assert load_config(None, ["bits=64"]).split_seed == 0


def test_a_relative_data_path_set_on_the_command_line_is_kept_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Relative to the folder train ran in: stored as it was, eval, export and --resume run
    # from any other folder could not find the data.
    (tmp_path / "configs").mkdir()
    config_file = write_config(tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    for value in ('"data/other.csv"', "data/other.csv"):
        config = load_config(config_file, [f"data.path={value}"])
        assert config.data.path == str((tmp_path / "data" / "other.csv").resolve())


def test_eval_on_a_missing_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "eval", "--run", tmp_path / "nope", "--out", tmp_path / "e.json")
    assert code == 2
    assert_one_error_line(err, "eval", "no checkpoint at", "nope")
    assert not (tmp_path / "e.json").exists()


def test_unusable_out_paths_fail_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, images: Path
) -> None:
    (images / "m.csv").write_text("\n".join([HEADER, *GOOD]) + "\n")
    config = write_config(images)
    a_file = tmp_path / "a-file"
    a_file.write_text("in the way")
    for out in (a_file, a_file / "run"):
        code, _, err = run_cli(capsys, "train", "--config", config, "--out", out)
        assert code == 2
        assert_one_error_line(err, "train", str(a_file))
    assert not (images / "features").exists()  # refused before any feature was computed

    (tmp_path / "reports").mkdir()
    code, _, err = run_cli(
        capsys, "eval", "--run", tmp_path / "nope", "--out", tmp_path / "reports"
    )
    assert code == 2
    assert_one_error_line(err, "eval", "is a folder; give the report's file name")

    code, _, err = run_cli(capsys, "demo", "--workdir", a_file, "--check", "--port", "0")
    assert code == 2
    assert_one_error_line(err, "demo", str(a_file))


def test_resume_without_a_checkpoint(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "empty")
    assert code == 2
    assert_one_error_line(err, "train", "no checkpoint at")


def cli_in_fresh_process(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    """`hashbridge ARGV` in a new interpreter: nothing imported or logged beforehand."""
    return subprocess.run(
        [sys.executable, "-m", "hashbridge.cli", *map(str, argv)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_module_entry_point_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = cli_in_fresh_process("eval", "--run", tmp_path / "nope", "--out", tmp_path / "e.json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"hashbridge eval: error: no checkpoint at {tmp_path / 'nope' / 'checkpoint.pt'}: "
        f"train a run first (hashbridge train ... --out {tmp_path / 'nope'})"
    ]


def test_serve_that_cannot_start_prints_one_line(tmp_path: Path) -> None:
    # FAISS logged nine INFO lines (one import error per CPU-specific build) before it.
    proc = cli_in_fresh_process("serve", "--bundle", tmp_path / "nope", "--data", tmp_path / "data")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"hashbridge serve: error: cannot load the bundle: bundle {tmp_path / 'nope'} has no "
        "manifest.json; point bundle_dir at an export folder"
    ]


def test_train_then_eval_end_to_end(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_synthetic_images(tmp_path / "data", 40, seed=2, query_fraction=0.25)
    config = write_config(tmp_path, manifest="data/manifest.csv")
    run = tmp_path / "runs" / "r1"
    code, out, _ = run_cli(
        capsys,
        "train",
        "--config",
        config,
        "--set",
        "split_seed=7",
        "--out",
        run,
        "--device",
        "cpu",
    )
    assert code == 0
    summary = json.loads(out)
    assert summary["run"] == str(run) and set(summary["map"]) == DIRECTIONS
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["bits"], metrics["split_seed"]) == (16, 7)
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
    assert metrics["history"][-1]["map"] == summary["map"]

    report_path = tmp_path / "eval" / "report.json"
    code, out, _ = run_cli(capsys, "eval", "--run", run, "--out", report_path)
    assert code == 0
    report = json.loads(report_path.read_text())
    assert report["bits"] == 16
    assert set(report["map"]) == DIRECTIONS
    assert all(0.0 < v <= 1.0 for v in report["map"].values())
    # The checkpoint's model scores at eval what it scored at the end of training.
    for direction, value in summary["map"].items():
        assert report["map"][direction] == pytest.approx(value, abs=1e-12)
    printed = json.loads(out)
    assert printed["map"] == report["map"] and printed["bits"] == 16
    assert all(Path(p).is_file() for p in printed["plots"])

    # An existing file is replaced only when an earlier eval wrote it: a slip of --out onto
    # the checkpoint (or the data) used to overwrite it with the report.
    checkpoint = (run / "checkpoint.pt").read_bytes()
    for taken in (run / "checkpoint.pt", run / "metrics.json", tmp_path / "data" / "manifest.csv"):
        before = taken.read_bytes()
        code, _, err = run_cli(capsys, "eval", "--run", run, "--out", taken)
        assert code == 2
        assert_one_error_line(err, "eval", str(taken), "is not an earlier eval report")
        assert taken.read_bytes() == before
    code, _, _ = run_cli(capsys, "eval", "--run", run, "--out", report_path)
    assert code == 0 and json.loads(report_path.read_text())["map"] == report["map"]
    # A report named without a suffix: its plots go beside it (was "Is a directory").
    code, out, _ = run_cli(capsys, "eval", "--run", run, "--out", tmp_path / "eval" / "again")
    assert code == 0
    assert json.loads((tmp_path / "eval" / "again").read_text())["map"] == report["map"]
    assert {Path(p).parent.name for p in json.loads(out)["plots"]} == {"again-plots"}
    assert (run / "checkpoint.pt").read_bytes() == checkpoint

    # Resuming a finished run trains nothing more, says so, and keeps its history.
    caplog.set_level(logging.INFO, logger="model.train")
    code, out, _ = run_cli(capsys, "train", "--resume", "--out", run)
    assert code == 0
    assert f"{run} finished all its 2 epochs; nothing is left to resume" in caplog.messages
    again = json.loads((run / "metrics.json").read_text())
    assert again["history"] == metrics["history"]

    # The data moved: eval and resume say how to point at it, and take it with --data.
    (tmp_path / "data").rename(tmp_path / "moved")
    moved = tmp_path / "moved" / "manifest.csv"
    code, _, err = run_cli(capsys, "eval", "--run", run, "--out", report_path)
    assert code == 2
    assert_one_error_line(err, "eval", str(tmp_path / "data"), "--data NEW_PATH")
    code, _, _ = run_cli(capsys, "eval", "--run", run, "--out", report_path, "--data", moved)
    assert code == 0 and json.loads(report_path.read_text())["map"] == report["map"]
    code, _, _ = run_cli(capsys, "train", "--resume", "--out", run, "--data", moved)
    assert code == 0
    # Other data under the run's name is refused: its split could hold trained-on queries.
    other = write_synthetic_images(tmp_path / "other", 40, seed=3, query_fraction=0.25)
    code, _, err = run_cli(capsys, "eval", "--run", run, "--out", report_path, "--data", other)
    assert code == 2
    assert_one_error_line(err, "eval", "changed since the run was trained")
    code, _, err = run_cli(capsys, "train", "--config", config, "--out", run, "--data", moved)
    assert code == 2
    assert_one_error_line(err, "train", "--data is for --resume")

    # Training into a finished run again replaced it silently, its eval.json left beside it.
    checkpoint = (run / "checkpoint.pt").read_bytes()
    retrain = ["train", "--config", config, "--set", f"data.path={json.dumps(str(moved))}"]
    code, _, err = run_cli(capsys, *retrain, "--out", run)
    assert code == 2
    assert_one_error_line(err, "train", f"--out {run} holds a run already", "--force")
    code, _, err = run_cli(capsys, "train", "--resume", "--force", "--out", run)
    assert code == 2 and (run / "checkpoint.pt").read_bytes() == checkpoint
    code, _, _ = run_cli(capsys, *retrain, "--set", "seed=5", "--out", run, "--force")
    assert code == 0 and (run / "checkpoint.pt").read_bytes() != checkpoint


def test_ctrl_c_during_training_is_one_line(tmp_path: Path) -> None:
    write_synthetic_images(tmp_path / "data", 40, seed=2, query_fraction=0.25)
    config = write_config(tmp_path, manifest="data/manifest.csv")
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hashbridge.cli", "train", "--config", str(config)]
        + ["--set", "train.epochs=100000", "--set", "train.eval_every=0", "--out", str(run)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for _ in range(1200):  # the first epoch's checkpoint, then ^C
            if (run / "checkpoint.pt").exists() or proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    # The progress bar may redraw once more as it is torn down, after the message.
    said = [line for line in err.splitlines() if line.startswith("hashbridge train:")]
    assert said == [
        "hashbridge train: interrupted; the last finished epoch is kept: continue with "
        f"hashbridge train --resume --out {run}"
    ], err


def test_resume_refuses_a_new_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run_cli(
        capsys, "train", "--resume", "--out", tmp_path / "run", "--set", "bits=64"
    )
    assert code == 2
    assert_one_error_line(err, "train", "--resume", "saved config")


@pytest.mark.parametrize(
    "config", ["mirflickr25k.toml", "wikipedia.toml", "flickr8k.toml", "kinetics-tiny.toml"]
)
def test_a_missing_dataset_folder_is_named_as_the_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, config: str
) -> None:
    # It was named by the first file a loader opened in it ("/x/concepts.txt: file not found").
    missing = tmp_path / "nowhere"
    code, _, err = run_cli(
        capsys,
        "train",
        "--config",
        REPO / "configs" / config,
        "--set",
        f"data.path={json.dumps(str(missing))}",
        "--out",
        tmp_path / "run",
    )
    assert code == 2
    assert_one_error_line(err, "train", f"{missing}: dataset folder not found", "data.path")


@pytest.mark.parametrize(
    ("command", "says"),
    [
        ("train", "--config is required unless --resume"),
        ("eval", "its own query/database split"),
        ("export", "bit for bit"),
    ],
)
def test_each_model_command_describes_itself_in_its_help(
    capsys: pytest.CaptureFixture[str], command: str, says: str
) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert says in " ".join(capsys.readouterr().out.split())
