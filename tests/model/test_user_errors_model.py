"""User mistakes in training: one clear error line naming the file, never a traceback.

A device this machine lacks, a corrupt or foreign checkpoint, a manifest row whose image
file is not a decodable image: each ends as ConfigError or DataError, which `hashbridge`
prints as `hashbridge <cmd>: error: ...` with exit status 2.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import model.train
from model.checkpoint import CHECKPOINT, load_checkpoint, save_checkpoint
from model.config import ConfigError, RunConfig, config_from_dict
from model.data.images import load_image
from model.data.manifest import load_manifest
from model.data.records import DataError
from model.data.synthetic import write_synthetic_images
from model.features import extract_image_features
from model.train import train
from tests.support.cli_checks import assert_one_error_line, run_cli

CORRUPT = "is corrupt or not a hashbridge checkpoint"


def write_config(folder: Path, manifest: Path, features: Path) -> Path:
    """A TOML config for a 16-bit model with 64-unit streams and one epoch."""
    path = folder / "run.toml"
    path.write_text(
        f'bits = 16\nseed = 0\n[data]\npath = "{manifest.as_posix()}"\n'
        f'[image]\nsize = 64\nhidden = [64]\ncache_dir = "{features.as_posix()}"\n'
        "[text]\nhidden = [64]\n"
        "[train]\nepochs = 1\nbatch_size = 8\nlr = 0.01\neval_every = 1\n"
    )
    return path


def tiny_config(manifest: Path, features: Path, **train: Any) -> RunConfig:
    return config_from_dict(
        {
            "bits": 16,
            "seed": 0,
            "data": {"path": str(manifest)},
            "image": {"size": 64, "hidden": [64], "cache_dir": str(features)},
            "text": {"hidden": [64]},
            "train": {"epochs": 1, "batch_size": 8, "lr": 1e-2, "eval_every": 1, **train},
        }
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("user-errors")


@pytest.fixture(scope="module")
def manifest(workdir: Path) -> Path:
    """20 generated scenes (5 queries) with 32-pixel PNGs."""
    return write_synthetic_images(workdir / "data", 20, seed=0, size=32, query_fraction=0.25)


@pytest.fixture(scope="session")
def run_dir(tiny_run: Path) -> Path:
    """A real training run on CPU: the session's tiny run (tests/conftest.py); tests copy it."""
    return tiny_run


# ---------------------------------------------------------------- 1. the training device


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_train_on_cuda_without_a_gpu_is_one_line_before_any_data_is_prepared(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    manifest: Path,
) -> None:
    def no_prepare(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was prepared before the device was checked")

    monkeypatch.setattr(model.train, "prepare", no_prepare)
    config = write_config(tmp_path, manifest, tmp_path / "features")
    code, _, err = run_cli(
        capsys, "train", "--config", config, "--out", tmp_path / "run", "--device", "cuda"
    )
    assert code == 2
    assert_one_error_line(err, "train", "train.device is cuda", "no CUDA GPU", "--device cpu")
    assert not (tmp_path / "run").exists()
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "meta"])
def test_train_refuses_a_device_name_torch_cannot_train_on(
    tmp_path: Path, manifest: Path, device: str
) -> None:
    config = tiny_config(manifest, tmp_path / "features")
    config.train.device = device  # as a config that bypassed validation would hold it
    with pytest.raises(ConfigError, match=f"train.device '{device}'.*cpu, cuda or cuda:N"):
        train(config, tmp_path / "run")
    assert not (tmp_path / "features").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_resuming_a_cuda_run_without_a_gpu_says_where_to_resume(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    state = dict(load_checkpoint(run_dir))
    state["config"]["train"]["device"] = "cuda"
    save_checkpoint(state, tmp_path / "run")
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "run")
    assert code == 2
    assert_one_error_line(err, "train", "no CUDA GPU", f"resume {tmp_path / 'run'}")


# ---------------------------------------------------------------- 2. checkpoints


def _save_foreign(obj: object) -> Callable[[bytes, Path], None]:
    def write(_: bytes, path: Path) -> None:
        torch.save(obj, path)

    return write


def _save_without(key: str) -> Callable[[bytes, Path], None]:
    def write(_: bytes, path: Path) -> None:
        state = dict(torch.load(path, map_location="cpu", weights_only=False))
        del state[key]
        torch.save(state, path)

    return write


def _write_bytes(cut: Callable[[bytes], bytes]) -> Callable[[bytes, Path], None]:
    def write(good: bytes, path: Path) -> None:
        path.write_bytes(cut(good))

    return write


BAD_CHECKPOINTS = {
    "truncated-head": (_write_bytes(lambda b: b[:1000]), "PytorchStreamReader"),
    "truncated-tail": (_write_bytes(lambda b: b[: len(b) - 100]), "PytorchStreamReader"),
    "zero-length": (_write_bytes(lambda b: b""), "the file is empty"),
    "garbage": (
        _write_bytes(lambda b: np.random.default_rng(0).bytes(4096)),
        "UnpicklingError",
    ),
    "foreign-dict": (_save_foreign({"a": 1}), "lacks the entr"),
    "not-a-dict": (_save_foreign([1, 2, 3]), "holds a list"),
    "wrong-type": (_save_foreign({"config": "bits=16", "epoch": 1}), "'config' entry is a str"),
}


@pytest.fixture(params=sorted(BAD_CHECKPOINTS))
def bad_run(request: pytest.FixtureRequest, tmp_path: Path, run_dir: Path) -> tuple[Path, str]:
    """A copy of the real run whose checkpoint is damaged one way; and a word of the error."""
    write, needle = BAD_CHECKPOINTS[request.param]
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = copy / CHECKPOINT
    write(path.read_bytes(), path)
    return copy, needle


def test_eval_of_a_bad_checkpoint_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, bad_run: tuple[Path, str]
) -> None:
    run, needle = bad_run
    code, _, err = run_cli(capsys, "eval", "--run", run, "--out", tmp_path / "report.json")
    assert code == 2
    assert_one_error_line(err, "eval", f"checkpoint {run / CHECKPOINT} {CORRUPT}", needle)
    assert not (tmp_path / "report.json").exists()


def test_resume_from_a_bad_checkpoint_is_one_line(
    capsys: pytest.CaptureFixture[str], bad_run: tuple[Path, str]
) -> None:
    run, needle = bad_run
    before = (run / CHECKPOINT).read_bytes()
    code, _, err = run_cli(capsys, "train", "--resume", "--out", run)
    assert code == 2
    assert_one_error_line(err, "train", f"checkpoint {run / CHECKPOINT} {CORRUPT}", needle)
    assert (run / CHECKPOINT).read_bytes() == before


@pytest.mark.parametrize("cut", [1000, 0])
def test_export_of_a_truncated_checkpoint_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path, cut: int
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT).write_bytes((run_dir / CHECKPOINT).read_bytes()[:cut])
    code, _, err = run_cli(capsys, "export", "--run", run, "--out", tmp_path / "bundle")
    assert code == 2
    assert_one_error_line(err, "export", f"checkpoint {run / CHECKPOINT} {CORRUPT}")
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("key", ["kinds", "optimizer"])
def test_resume_checks_every_entry_it_needs_before_preparing_data(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, run_dir: Path, key: str
) -> None:
    def no_prepare(*args: object, **kwargs: object) -> None:
        raise AssertionError("data was prepared before the checkpoint was checked")

    monkeypatch.setattr(model.train, "prepare", no_prepare)
    shutil.copytree(run_dir, tmp_path / "run")
    _save_without(key)(b"", tmp_path / "run" / CHECKPOINT)
    with pytest.raises(DataError, match=f"{CORRUPT}: it lacks the entry '{key}'") as caught:
        train(tiny_config(Path("unused.csv"), tmp_path / "features"), tmp_path / "run", resume=True)
    assert str(tmp_path / "run" / CHECKPOINT) in str(caught.value)


def test_eval_of_a_checkpoint_lacking_an_entry_names_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    shutil.copytree(run_dir, tmp_path / "run")
    _save_without("input_dims")(b"", tmp_path / "run" / CHECKPOINT)
    code, _, err = run_cli(capsys, "eval", "--run", tmp_path / "run", "--out", tmp_path / "e.json")
    assert code == 2
    assert_one_error_line(
        err, "eval", str(tmp_path / "run" / CHECKPOINT), "lacks the entry 'input_dims'"
    )


def test_resume_of_a_checkpoint_lacking_the_method_state_names_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    shutil.copytree(run_dir, tmp_path / "run")
    _save_without("method_state")(b"", tmp_path / "run" / CHECKPOINT)
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "run")
    assert code == 2
    assert_one_error_line(
        err, "train", str(tmp_path / "run" / CHECKPOINT), "lacks the entry 'method_state'"
    )


def test_resume_from_weights_of_another_model_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    state = dict(load_checkpoint(run_dir))
    state["model"] = {"streams.image.weight": torch.zeros(3, 3)}
    save_checkpoint(state, tmp_path / "run")
    code, _, err = run_cli(capsys, "train", "--resume", "--out", tmp_path / "run")
    assert code == 2
    assert_one_error_line(err, "train", str(tmp_path / "run" / CHECKPOINT), "does not fit the run")
    code, _, err = run_cli(capsys, "eval", "--run", tmp_path / "run", "--out", tmp_path / "e.json")
    assert code == 2
    assert_one_error_line(err, "eval", str(tmp_path / "run" / CHECKPOINT), "do not fit its config")


def test_a_checkpoint_config_this_version_refuses_names_the_checkpoint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    # As from another hashbridge version: the bare "unknown config key 'train.old_key'" sent
    # the user to a config file that never held it.
    state = dict(load_checkpoint(run_dir))
    state["config"] = {**state["config"], "train": {**state["config"]["train"], "old_key": 1}}
    save_checkpoint(state, tmp_path / "run")
    for argv in (
        ("train", "--resume", "--out", tmp_path / "run"),
        ("eval", "--run", tmp_path / "run", "--out", tmp_path / "e.json"),
    ):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2
        assert_one_error_line(
            err, argv[0], f"checkpoint {tmp_path / 'run' / CHECKPOINT} holds a config", "old_key"
        )


def test_a_missing_checkpoint_is_still_a_file_not_found_error(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*hashbridge train"):
        load_checkpoint(tmp_path / "run")
    # ... and a readable one loads as before, with missing entries reported by name.
    save_checkpoint({"epoch": 1}, tmp_path / "run")
    state = load_checkpoint(tmp_path / "run")
    assert state["epoch"] == 1 and state.get("vocabulary") is None
    with pytest.raises(DataError, match="lacks the entry 'config'"):
        state["config"]


# ---------------------------------------------------------------- 3. undecodable images


def _png_bytes(manifest: Path) -> bytes:
    return (manifest.parent / "images" / "syn-00000.png").read_bytes()


BAD_IMAGES: dict[str, Callable[[bytes], bytes]] = {
    "text": lambda png: b"id,image,text\nthis is not a picture\n",
    "zero-length": lambda png: b"",
    "truncated-png": lambda png: png[: len(png) // 2],
    "png-header-only": lambda png: png[:40],
}


@pytest.fixture
def images(tmp_path: Path, manifest: Path) -> Path:
    """A copy of the generated data, its features cached in the copy."""
    shutil.copytree(manifest.parent, tmp_path / "data")
    return tmp_path / "data"


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_train_on_a_csv_row_with_an_undecodable_image_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, images: Path, manifest: Path, kind: str
) -> None:
    bad = images / "images" / "syn-00003.png"
    bad.write_bytes(BAD_IMAGES[kind](_png_bytes(manifest)))
    config = write_config(tmp_path, images / "manifest.csv", tmp_path / "features")
    code, _, err = run_cli(capsys, "train", "--config", config, "--out", tmp_path / "run")
    assert code == 2
    assert_one_error_line(
        err, "train", str(images / "manifest.csv"), "row 4 (line 5)", str(bad), "readable image"
    )
    assert not (tmp_path / "run").exists()


def test_a_jsonl_row_with_a_truncated_png_names_the_file_and_line(
    images: Path, manifest: Path
) -> None:
    rows = [line.split(",") for line in (images / "manifest.csv").read_text().splitlines()[1:4]]
    path = images / "m.jsonl"
    path.write_text(
        "\n\n".join(
            json.dumps({"id": r[0], "image": r[1], "text": r[2], "labels": r[3]}) for r in rows
        )
        + "\n"
    )
    bad = images / rows[2][1]
    bad.write_bytes(_png_bytes(manifest)[:200])
    with pytest.raises(DataError) as caught:
        load_manifest(path)
    assert (caught.value.row, caught.value.line) == (3, 5)
    assert str(bad) in str(caught.value) and str(path) in str(caught.value)
    # check_files=False (a trained model's own label set, no files read) still loads it.
    assert load_manifest(path, check_files=False).ids == [r[0] for r in rows]


def test_image_check_refuses_exactly_what_training_cannot_decode(
    tmp_path: Path, manifest: Path
) -> None:
    from PIL import Image

    from model.data.images import image_problem  # the check itself (missing before it existed)

    png = _png_bytes(manifest)
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)

    Image.fromarray(pixels).save(tmp_path / "ok.jpg", quality=90)
    jpg = (tmp_path / "ok.jpg").read_bytes()
    files = {
        "ok.png": png,
        "trailing.png": png + b"bytes after IEND",
        "trailing.jpg": jpg + b"\0\0",
        "truncated.png": png[: len(png) // 2],
        "truncated.jpg": jpg[: len(jpg) // 2],
        "empty.png": b"",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    problems = {name: image_problem(tmp_path / name) for name in files}
    assert problems["empty.png"] == "the file is empty"
    assert {n for n, p in problems.items() if p} == {"truncated.png", "truncated.jpg", "empty.png"}
    for name, problem in problems.items():
        if problem is None:
            assert load_image(tmp_path / name, 16).shape == (3, 16, 16)
        else:
            with pytest.raises(DataError, match="not a readable image") as caught:
                load_image(tmp_path / name, 16)
            assert caught.value.path == tmp_path / name


def test_feature_extraction_names_an_undecodable_file(tmp_path: Path, manifest: Path) -> None:
    """Loaders other than the manifest's (no row check) still get a DataError naming the file."""
    good = manifest.parent / "images" / "syn-00001.png"
    bad = tmp_path / "cut.png"
    bad.write_bytes(_png_bytes(manifest)[:300])
    with pytest.raises(DataError, match="image file is truncated") as caught:
        extract_image_features(
            [good, bad], backbone="efficientnet-lite0", size=32, cache_dir=tmp_path / "f"
        )
    assert str(bad) in str(caught.value)


def test_eval_with_every_cut_off_past_the_database_reports_p_at_its_size(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, run_dir: Path
) -> None:
    state = dict(load_checkpoint(run_dir))
    state["config"] = {**state["config"], "eval": {**state["config"]["eval"], "ks": [10**6]}}
    save_checkpoint(state, tmp_path / "run")
    code, _, err = run_cli(capsys, "eval", "--run", tmp_path / "run", "--out", tmp_path / "e.json")
    assert code == 0, err
    report = json.loads((tmp_path / "e.json").read_text())
    curve = report["directions"]["text->image"]["binary"]["precision_at_k"]
    assert list(curve) == [str(report["num_database"])], curve
