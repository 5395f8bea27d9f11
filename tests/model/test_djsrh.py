"""DJSRH through the trainer on tiny generated data: no labels read, resume, groups, refusals."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import model.train
from model.checkpoint import load_checkpoint
from model.config import RunConfig, config_from_dict
from model.data.records import DataError
from model.data.synthetic import write_synthetic_images
from model.evaluate import evaluate_run
from model.prepare import prepare
from model.train import TrainResult, train


def djsrh_config(manifest: Path, cache_dir: Path, **overrides: Any) -> RunConfig:
    """16 bits, 64-unit streams, 4 epochs of batches of 16 on the CPU."""
    data = {
        "method": "djsrh",
        "bits": 16,
        "seed": 0,
        "data": {"path": str(manifest)},
        "image": {"size": 64, "hidden": [64], "cache_dir": str(cache_dir)},
        "text": {"hidden": [64]},
        "djsrh": {"image_lr": 0.05, "text_lr": 0.05},
        "train": {"epochs": 4, "batch_size": 16, "eval_every": 2},
        "eval": {"top_r": 50, "ks": [1, 10]},
    }
    data.update(overrides)
    return config_from_dict(data)


def _read(manifest: Path) -> tuple[list[str], list[list[str]]]:
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def _write(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("djsrh")


@pytest.fixture(scope="module")
def labelled(workdir: Path) -> Path:
    """96 labelled scenes with a split column (24 queries)."""
    return write_synthetic_images(workdir / "data", 96, seed=3, query_fraction=0.25)


@pytest.fixture(scope="module")
def grouped(labelled: Path) -> Path:
    """The same photos without labels, two captions each (its own and its label names) as a
    group of two rows, without a split column."""
    header, rows = _read(labelled)
    col = {name: i for i, name in enumerate(header)}
    out = []
    for row in rows:
        photo, image = row[col["id"]], row[col["image"]]
        out.append([f"{photo}-a", image, row[col["text"]], photo])
        out.append(
            [f"{photo}-b", image, "a picture of " + row[col["labels"]].replace("|", " "), photo]
        )
    return _write(labelled.parent / "grouped.csv", ["id", "image", "text", "group"], out)


@pytest.fixture(scope="module")
def trained(labelled: Path, workdir: Path) -> TrainResult:
    return train(djsrh_config(labelled, workdir / "features"), workdir / "run-a")


def test_shuffling_the_labels_leaves_the_trained_weights_bit_identical(
    trained: TrainResult, labelled: Path, workdir: Path
) -> None:
    header, rows = _read(labelled)
    j = header.index("labels")
    shuffled = [r[j] for r in rows]
    np.random.default_rng(0).shuffle(shuffled)
    assert shuffled != [r[j] for r in rows]
    other = _write(
        labelled.parent / "shuffled.csv",
        header,
        [[*r[:j], s, *r[j + 1 :]] for r, s in zip(rows, shuffled, strict=True)],
    )
    again = train(djsrh_config(other, workdir / "features"), workdir / "run-shuffled")
    a, b = load_checkpoint(trained.run_dir)["model"], load_checkpoint(again.run_dir)["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # The labels did change what the runs are scored by.
    assert trained.history[-1]["map"] != again.history[-1]["map"]


def test_djsrh_learns_from_pairs_alone(trained: TrainResult) -> None:
    # Label mAP of 24 queries against 72 items: random codes score about the share of
    # relevant items; DJSRH's codes, never shown a label, should beat that clearly.
    final = trained.history[-1]["map"]
    assert final["image->text"] > 0.5 and final["text->image"] > 0.5, final
    losses = [record["loss"]["total"] for record in trained.history]
    assert losses[-1] < losses[0]


def test_resume_equals_an_uninterrupted_run(
    trained: TrainResult, labelled: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_b = workdir / "run-b"
    real_save = model.train.save_checkpoint

    def save_then_interrupt(state: dict[str, Any], run_dir: Path) -> Path:
        path = real_save(state, run_dir)
        if state["epoch"] == 2:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(model.train, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(djsrh_config(labelled, workdir / "features"), run_b)
    monkeypatch.undo()
    resumed = train(config_from_dict({}), run_b, resume=True)
    assert resumed.history == trained.history
    a, b = load_checkpoint(trained.run_dir), load_checkpoint(run_b)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert str(a["optimizer"]) == str(b["optimizer"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], b["optimizer"]["state"][k]["momentum_buffer"])


def test_an_unlabelled_grouped_manifest_trains_and_evaluates_by_group(
    grouped: Path, workdir: Path
) -> None:
    config = djsrh_config(grouped, workdir / "features")
    prepared = prepare(config)
    assert not prepared.data.labelled
    photo = prepared.data.group_ids()
    # A group's rows share their photo's features, and the split keeps groups whole.
    assert np.array_equal(prepared.inputs["image"][0], prepared.inputs["image"][1])
    assert not np.isin(photo[prepared.split.query], photo[prepared.split.train]).any()
    run = train(config, workdir / "run-grouped")
    assert set(run.history[-1]["map"]) == {
        "image->image",
        "image->text",
        "text->image",
        "text->text",
    }
    report = evaluate_run(run.run_dir, workdir / "eval-grouped.json")
    assert "directions" not in report or not report["directions"]
    i2t, t2i = report["by_group"]["image->text"], report["by_group"]["text->image"]
    n_query = len(np.unique(photo[prepared.split.query]))
    # The queries search the database and themselves: every photo once, however many rows
    # share it, and each of its captions.
    n_database = len(np.unique(photo))
    assert (i2t["num_queries"], i2t["num_database"]) == (n_query, 2 * n_database)
    assert (t2i["num_queries"], t2i["num_database"]) == (2 * n_query, n_database)
    assert set(t2i["recall_at_k"]) == {"1", "5", "10"}
    # By chance a caption finds its photo among the 96 in the top 10 about 10% of the time,
    # and mAP is about 0.05; four epochs on 174 pairs measure 0.5 and 0.25.
    assert t2i["recall_at_k"]["10"] > 0.3 and t2i["map"] > 0.15, t2i
    assert report["map"]["text->image"] == t2i["map"]


def test_a_supervised_method_refuses_an_unlabelled_manifest(grouped: Path, workdir: Path) -> None:
    config = djsrh_config(grouped, workdir / "features", method="dsmhn")
    with pytest.raises(DataError) as err:
        train(config, workdir / "run-refused")
    message = str(err.value)
    assert "'dsmhn' trains on labels" in message and "--set method=djsrh" in message
    assert not (workdir / "run-refused" / "checkpoint.pt").exists()
