"""DDCMH through the trainer on tiny generated scenes: its three stages, their codes, resume.

A run is stopped (Ctrl-C after a checkpoint, as a user would) within and between each of its
stages; every resumed run must end bit-identical to the uninterrupted one: weights, each
stage's codes, history.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import model.train
from model.checkpoint import load_checkpoint, trained_method
from model.checks import ConfigError
from model.config import RunConfig, config_from_dict, load_config
from model.data.records import DataError
from model.data.synthetic import write_synthetic_images
from model.evaluate import evaluate_run
from model.export import export_bundle
from model.itq import itq_codes
from model.losses import code_fit_loss
from model.methods.base import Stage
from model.methods.ddcmh import DDCMH
from model.prepare import prepare, require_labels
from model.train import TrainResult, train
from service.encoders import load_bundle

BITS = 16
#: Epochs of stages 1, 2, 3 in the labelled runs: 2 + 2 + 2.
STAGE_EPOCHS = {"initial_epochs": 2, "media_epochs": 2, "text_epochs": 2}


def ddcmh_config(manifest: Path, cache_dir: Path, **ddcmh: Any) -> RunConfig:
    """16 bits, 64-unit streams, batches of 16 on the CPU; `ddcmh` overrides its section."""
    return config_from_dict(
        {
            "method": "ddcmh",
            "bits": BITS,
            "seed": 0,
            "data": {"path": str(manifest)},
            "image": {"size": 64, "hidden": [64], "cache_dir": str(cache_dir)},
            "text": {"hidden": [64]},
            "ddcmh": {**STAGE_EPOCHS, **ddcmh},
            "train": {"batch_size": 16, "lr": 0.003, "eval_every": 3},
            "eval": {"top_r": 50, "ks": [1, 10]},
        }
    )


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on shared cores OpenMP spinning makes tiny ops far slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_until(config: RunConfig, run_dir: Path, epoch: int, stage: str) -> None:
    """Train until the checkpoint of run-wide `epoch` in `stage` is written, then Ctrl-C."""
    real_save = model.train.save_checkpoint

    def save_then_interrupt(state: dict[str, Any], folder: Path) -> Path:
        path = real_save(state, folder)
        if (state["epoch"], state["stage"]) == (epoch, stage):
            raise KeyboardInterrupt
        return path

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.train, "save_checkpoint", save_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            train(config, run_dir)


def assert_same_run(a_dir: Path, b_dir: Path, scored_alike: bool = True) -> None:
    """Same weights, same codes of every stage, same history (bit for bit); its mAP only
    where both runs' labels, which score it, are the same."""
    a, b = load_checkpoint(a_dir), load_checkpoint(b_dir)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("initial", "reconstructed"):
        assert torch.equal(a["method_state"][key], b["method_state"][key]), key
    if scored_alike:
        assert a["history"] == b["history"]
    else:
        assert [r["loss"] for r in a["history"]] == [r["loss"] for r in b["history"]]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ddcmh")


@pytest.fixture(scope="module")
def labelled(workdir: Path) -> Path:
    """96 labelled scenes with a split column (24 queries, 72 training items)."""
    return write_synthetic_images(workdir / "data", 96, seed=3, query_fraction=0.25)


@pytest.fixture(scope="module")
def config(labelled: Path, workdir: Path) -> RunConfig:
    return ddcmh_config(labelled, workdir / "features")


@pytest.fixture(scope="module")
def trained(config: RunConfig, workdir: Path) -> TrainResult:
    return train(config, workdir / "run")


def test_three_stages_run_in_order_and_keep_their_codes(
    trained: TrainResult, config: RunConfig
) -> None:
    state = load_checkpoint(trained.run_dir)
    assert (state["epoch"], state["stage"], state["stage_epoch"]) == (6, "text", 2)
    history = trained.history
    assert [r["stage"] for r in history] == ["initial"] * 2 + ["image"] * 2 + ["text"] * 2
    assert set(history[0]["loss"]) == {
        "label/text",
        "pairwise/text",
        "quant/text",
        "balance/text",
        "total",
    }
    assert set(history[2]["loss"]) == {"fit/image", "quant/image", "balance/image", "total"}
    assert set(history[-1]["loss"]) == {"fit/text", "quant/text", "balance/text", "total"}
    # Stage 1's codes are ±1 codes of the 72 training items; stage 3's targets are the signs
    # of the trained image stream's outputs on them (keep_initial = 0).
    initial, reconstructed = (state["method_state"][k] for k in ("initial", "reconstructed"))
    assert initial.shape == reconstructed.shape == (72, BITS)
    assert set(initial.unique().tolist()) == set(reconstructed.unique().tolist()) == {-1.0, 1.0}
    method = trained_method(state, config, trained.run_dir)
    prepared = prepare(config)
    images = torch.from_numpy(prepared.inputs["image"][prepared.split.train])
    with torch.no_grad():
        expected = torch.where(method.encode("image", images) >= 0, 1.0, -1.0)
    assert torch.equal(reconstructed, expected)
    # The image stream learnt the initial codes well enough that they mostly agree.
    assert (initial == reconstructed).float().mean() > 0.75


def test_it_learns_cross_modal_codes(trained: TrainResult) -> None:
    # 24 queries against 72 labelled scenes: random codes score about the share of relevant
    # items; codes trained through the three stages should beat that clearly.
    final = trained.history[-1]["map"]
    assert final["image->text"] > 0.5 and final["text->image"] > 0.5, final
    for stage in ("initial", "image", "text"):
        losses = [r["loss"]["total"] for r in trained.history if r["stage"] == stage]
        assert losses[-1] < losses[0], stage


@pytest.mark.parametrize(
    ("epoch", "stage"),
    [(1, "initial"), (2, "initial"), (3, "image"), (4, "image"), (5, "text")],
    ids=["within-1", "between-1-2", "within-2", "between-2-3", "within-3"],
)
def test_a_resumed_run_ends_as_the_uninterrupted_one(
    trained: TrainResult, config: RunConfig, workdir: Path, epoch: int, stage: str
) -> None:
    run = workdir / f"stopped-{epoch}"
    train_until(config, run, epoch, stage)
    stopped = load_checkpoint(run)
    assert (stopped["epoch"], stopped["stage"]) == (epoch, stage)
    # The codes a stage computed at its end are in its checkpoint already.
    saved = stopped["method_state"]
    assert (saved["initial"] is not None) == (epoch >= 2)
    assert (saved["reconstructed"] is not None) == (epoch >= 4)
    train(config_from_dict({}), run, resume=True)
    assert_same_run(trained.run_dir, run)


def test_each_stage_trains_only_its_own_stream(config: RunConfig, workdir: Path) -> None:
    ends = {}
    for epoch, stage in [(2, "initial"), (4, "image")]:
        run = workdir / f"ends-{epoch}"
        train_until(config, run, epoch, stage)
        ends[stage] = load_checkpoint(run)["model"]
    final = load_checkpoint(workdir / "run")["model"]
    for key in final:
        if key.startswith("streams.text."):
            # Stage 2 leaves the text stream as stage 1 left it; stage 3 trains it.
            assert torch.equal(ends["initial"][key], ends["image"][key]), key
        elif key.startswith("streams.image."):
            # Stage 3 leaves the image stream as stage 2 left it.
            assert torch.equal(ends["image"][key], final[key]), key


def _shuffled_labels(manifest: Path) -> Path:
    with manifest.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], rows[1:]
    j = header.index("labels")
    labels = [r[j] for r in body]
    np.random.default_rng(0).shuffle(labels)
    assert labels != [r[j] for r in body]
    out = manifest.parent / "shuffled.csv"
    with out.open("w", newline="", encoding="utf-8") as f:
        rows = [[*r[:j], s, *r[j + 1 :]] for r, s in zip(body, labels, strict=True)]
        csv.writer(f).writerows([header, *rows])
    return out


def test_with_itq_it_never_reads_labels_and_resumes_after_the_computed_stage(
    labelled: Path, workdir: Path
) -> None:
    config = ddcmh_config(labelled, workdir / "features", initial="itq")
    run = train(config, workdir / "itq")
    assert [r["stage"] for r in run.history] == ["image"] * 2 + ["text"] * 2
    assert [r["epoch"] for r in run.history] == [1, 2, 3, 4]
    saved = load_checkpoint(run.run_dir)
    assert "label_head.fc.weight" not in saved["model"]
    # ITQ codes of the 72 training items' text features.
    assert saved["method_state"]["initial"].shape == (72, BITS)
    assert set(saved["method_state"]["initial"].unique().tolist()) == {-1.0, 1.0}
    # Shuffled labels: not one weight changes.
    again = train(
        ddcmh_config(_shuffled_labels(labelled), workdir / "features", initial="itq"),
        workdir / "itq-shuffled",
    )
    assert_same_run(run.run_dir, again.run_dir, scored_alike=False)
    assert run.history[-1]["map"] != again.history[-1]["map"]  # the labels did change
    # Stopped once stage 1 (no epochs) is computed: its checkpoint holds its codes.
    stopped = workdir / "itq-stopped"
    train_until(config, stopped, 0, "initial")
    state = load_checkpoint(stopped)
    assert (state["stage"], state["stage_epoch"], state["history"]) == ("initial", 0, [])
    assert torch.equal(state["method_state"]["initial"], saved["method_state"]["initial"])
    train(config_from_dict({}), stopped, resume=True)
    assert_same_run(run.run_dir, stopped)


def test_labels_are_required_only_for_the_labelled_initial_stage(
    labelled: Path, workdir: Path
) -> None:
    with labelled.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    j = rows[0].index("labels")
    bare = labelled.parent / "unlabelled.csv"
    with bare.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([r[:j] + r[j + 1 :] for r in rows])
    supervised = ddcmh_config(bare, workdir / "features")
    data = prepare(ddcmh_config(bare, workdir / "features", initial="itq")).data
    assert not data.labelled
    with pytest.raises(DataError, match="'ddcmh' trains on labels"):
        require_labels(supervised, data)
    require_labels(ddcmh_config(bare, workdir / "features", initial="itq"), data)
    assert DDCMH.labels_needed(supervised.options)


def test_it_evaluates_and_exports_through_the_generic_path(
    trained: TrainResult, tmp_path: Path
) -> None:
    report = evaluate_run(trained.run_dir, tmp_path / "eval.json")
    assert report["map"]["image->text"] == pytest.approx(trained.history[-1]["map"]["image->text"])
    bundle = load_bundle(export_bundle(trained.run_dir, tmp_path / "bundle"))
    assert (bundle.method, bundle.bits, bundle.modalities) == ("ddcmh", BITS, ["image", "text"])


def test_its_config_section_is_checked() -> None:
    config = load_config(None, ['method="ddcmh"', 'ddcmh.initial="itq"', "ddcmh.media_epochs=5"])
    assert config.options.initial == "itq" and config.options.media_epochs == 5
    assert config.to_dict()["ddcmh"]["keep_initial"] == 0.0
    for overrides, message in [
        (['ddcmh.initial="pca"'], "ddcmh.initial must be one of labels, itq, got 'pca'"),
        (['ddcmh.fit="hinge"'], "ddcmh.fit must be one of logistic, squared"),
        (["ddcmh.keep_initial=1"], "ddcmh.keep_initial must be at least 0 and below 1"),
        (["ddcmh.text_epochs=0"], "ddcmh.text_epochs must be at least 1, got 0"),
        (["ddcmh.w_label=0", "ddcmh.w_pairwise=0"], "stage 1 .* would train the text network"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, ['method="ddcmh"', *overrides])


def test_it_refuses_streams_it_cannot_pair(labelled: Path, workdir: Path) -> None:
    config = ddcmh_config(labelled, workdir / "features")
    config.data.modalities = ["image"]
    with pytest.raises(ConfigError, match="method 'ddcmh' trains a text and one image or video"):
        train(config, workdir / "refused")


def test_code_fit_loss_against_hand_computed_values() -> None:
    h = torch.tensor([[0.5, -0.5], [0.0, 0.9]])
    t = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    # -log((1 + h t) / 2) per bit: 1.5/2, 0.5/2, 1/2, 1.9/2.
    expected = -sum(math.log(p) for p in (0.75, 0.25, 0.5, 0.95)) / 4
    assert float(code_fit_loss(h, t, "logistic")) == pytest.approx(expected)
    assert float(code_fit_loss(h, t, "squared")) == pytest.approx((0.25 + 2.25 + 1 + 0.01) / 4)
    assert float(code_fit_loss(t, t, "logistic")) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ"):
        code_fit_loss(h, t[:1], "squared")


def test_itq_codes_separate_clusters() -> None:
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 20, generator=gen) * 3
    members = torch.arange(200) % 4
    x = centres[members] + 0.3 * torch.randn(200, 20, generator=gen)
    codes = itq_codes(x, 8, 50, seed=1)
    assert codes.shape == (200, 8) and set(codes.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(codes, itq_codes(x, 8, 50, seed=1))  # deterministic
    # Items of a cluster get one code nearly always; different clusters different codes.
    same = (codes[members == 0] == codes[members == 0][0]).all(dim=1).float().mean()
    assert same > 0.9
    firsts = torch.stack([codes[members == k][0] for k in range(4)])
    assert len(torch.unique(firsts, dim=0)) == 4
    with pytest.raises(ValueError, match="at most"):
        itq_codes(x, 32, 5, seed=1)


def test_a_stage_of_no_epochs_takes_no_optimizer() -> None:
    def adam(p: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(p)

    assert Stage("initial", 0, [], None).epochs == 0
    for args, message in [
        (("initial", 0, [], adam), "trains no epochs: it takes no optimizer"),
        (("media", 3, [], None), "trains 3 epochs with no optimizer"),
        (("media", -1, [], None), "has -1 epochs"),
    ]:
        with pytest.raises(ValueError, match=message):
            Stage(*args)


def test_clips_take_the_image_networks_place(workdir: Path) -> None:
    """Generated clips and their captions: stage 2 trains the video stream."""
    config = config_from_dict(
        {
            "method": "ddcmh",
            "bits": BITS,
            "data": {
                "kind": "synthetic_video",
                "path": str(workdir / "clips"),
                "modalities": ["video", "text"],
                "generate": {"n": 40, "seed": 0, "size": 64, "frames_per_clip": 4},
            },
            "video": {
                "size": 64,
                "frames": 4,
                "width": 8,
                "blocks": 1,
                "hidden": [32],
                "cache_dir": str(workdir / "maps"),
            },
            "text": {"hidden": [32]},
            "ddcmh": {"initial_epochs": 1, "media_epochs": 2, "text_epochs": 1},
            "train": {"batch_size": 8, "lr": 0.01, "eval_every": 0},
            "eval": {"top_r": 10, "ks": [1, 5]},
        }
    )
    run = train(config, workdir / "video")
    assert [r["stage"] for r in run.history] == ["initial", "video", "video", "text"]
    state = load_checkpoint(run.run_dir)
    n_train = state["n_train"]
    assert state["method_state"]["reconstructed"].shape == (n_train, BITS)
    stopped = workdir / "video-stopped"
    train_until(config, stopped, 2, "video")
    train(config_from_dict({}), stopped, resume=True)
    assert_same_run(run.run_dir, stopped)
