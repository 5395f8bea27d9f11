"""The method contract, through a toy method registered here only.

The toy trains in two stages, the way a staged method (DDCMH) does: stage "image" fits the
image stream to the text stream's codes (SGD with momentum), then keeps the image codes'
signs of every training item as targets; stage "text" fits the text stream to those targets,
some bits flipped at random when the stage starts (Adam, halving its rate each epoch). It needs
no labels. The trainer, checkpoints, evaluation and export know it only through the contract:
a run is interrupted within each stage and between them, and each resumed run ends with the
weights of the uninterrupted one; its bundle loads in the service.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from bundle.text import Vocabulary
from model.checkpoint import Position, load_checkpoint, resume_position, trained_method
from model.checks import ConfigError, Rule, Section, at_least
from model.config import RunConfig, config_from_dict, load_config
from model.data.records import DataError
from model.evaluate import evaluate_run
from model.export import export_bundle
from model.hashing import pack_bits
from model.methods.base import Batch, Method, MethodSetup, Stage, TrainingSet
from model.methods.registry import METHODS, Registered
from model.train import train
from service.encoders import load_bundle
from tests.support.interrupted import train_until
from tests.support.shapes import Shapes, one_thread

BITS = 16


@dataclass
class ToyConfig(Section):
    """[toy]: epochs of its two stages and its learning rate."""

    image_epochs: int = 3
    text_epochs: int = 2
    lr: float = 0.05

    def rules(self) -> dict[str, Rule]:
        return {"image_epochs": at_least(1), "text_epochs": at_least(1)}


class ToyMethod(Method):
    """Two stages over linear streams; see the module docstring."""

    needs_labels = False

    def __init__(self, streams: Mapping[str, nn.Module], setup: MethodSetup) -> None:
        super().__init__(streams)
        self.options: ToyConfig = setup.options
        self.targets: Tensor | None = None
        self.flips: Tensor | None = None

    def stages(self) -> list[Stage]:
        o = self.options
        return [
            Stage(
                "image",
                o.image_epochs,
                list(self.stream("image").parameters()),
                lambda p: torch.optim.SGD(p, lr=o.lr, momentum=0.9),
            ),
            Stage(
                "text",
                o.text_epochs,
                list(self.stream("text").parameters()),
                lambda p: torch.optim.Adam(p, lr=o.lr / 10),
                lambda optimizer: torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
            ),
        ]

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        assert batch.labels is None and batch.train_labels is None
        if batch.stage == "image":
            h = self.encode("image", batch.inputs["image"])
            with torch.no_grad():
                target = self.encode("text", batch.inputs["text"]).sign()
            fit = (h - target).square().mean()
        else:
            assert self.targets is not None and self.flips is not None
            h = self.encode("text", batch.inputs["text"])
            fit = (h - self.targets[batch.positions] * self.flips).square().mean()
        return {f"fit/{batch.stage}": fit, "total": fit}

    def start_stage(self, stage: str, data: TrainingSet) -> None:
        if stage == "text":  # random: a resumed run must draw what the uninterrupted one did
            self.flips = torch.where(torch.rand(BITS) < 0.25, -1.0, 1.0).to(data.device)

    def end_stage(self, stage: str, data: TrainingSet) -> None:
        if stage == "image":
            with torch.no_grad():
                inputs = data.inputs_at(torch.arange(len(data), device=data.device))
                self.targets = torch.where(self.encode("image", inputs["image"]) >= 0, 1.0, -1.0)

    def training_state(self) -> dict[str, Any]:
        return {"targets": self.targets, "flips": self.flips}

    def load_training_state(self, state: dict[str, Any], device: torch.device) -> None:
        self.targets, self.flips = (
            None if state[key] is None else state[key].to(device) for key in ("targets", "flips")
        )


@pytest.fixture(scope="module", autouse=True)
def registered() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(METHODS, "toy", Registered(f"{__name__}:ToyMethod", ToyConfig))
        yield


def toy_config(shapes: Shapes, cache: Path) -> RunConfig:
    return config_from_dict(
        {
            "method": "toy",
            "bits": BITS,
            "data": {"kind": "manifest", "path": str(shapes.manifest)},
            # No hidden layer: a linear map into the hash layer.
            "image": {"size": 64, "cache_dir": str(cache), "hidden": [], "dropout": 0.0},
            "text": {"hidden": [], "dropout": 0.0},
            "train": {"batch_size": 16, "eval_every": 2},
            "toy": {"image_epochs": 3, "text_epochs": 2},
        }
    )


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("toy")


@pytest.fixture(scope="module")
def config(shapes: Shapes, work: Path) -> RunConfig:
    return toy_config(shapes, work / "cache")


@pytest.fixture(scope="module")
def uninterrupted(config: RunConfig, work: Path) -> Path:
    with one_thread():
        train(config, work / "run")
    return work / "run"


def test_its_config_section_is_checked_and_stored_under_its_name() -> None:
    config = load_config(None, ['method="toy"', "toy.lr=0.1", "dsmhn.w_intra=0.5"])
    assert isinstance(config.options, ToyConfig) and config.options.lr == 0.1
    # Another method's section is checked (a typo there is still an error), then dropped.
    saved = config.to_dict()
    assert saved["toy"] == {"image_epochs": 3, "text_epochs": 2, "lr": 0.1}
    assert "dsmhn" not in saved
    assert config_from_dict(saved).to_dict() == saved
    for overrides, message in [
        (["toy.text_epochs=0"], "toy.text_epochs must be at least 1, got 0"),
        (["toy.rate=1"], "unknown config key 'toy.rate'; known: image_epochs, lr, text_epochs"),
        (["toy.lr=inf"], "toy.lr must be a finite number"),
        (["dsmhn.w_intra=-1"], "dsmhn.w_intra must be at least 0"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
            load_config(None, ['method="toy"', *overrides])


def test_stages_run_in_order_with_their_own_optimisers(uninterrupted: Path) -> None:
    state = load_checkpoint(uninterrupted)
    assert (state["epoch"], state["stage"], state["stage_epoch"]) == (5, "text", 2)
    history = state["history"]
    assert [r["stage"] for r in history] == ["image"] * 3 + ["text"] * 2
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5]
    assert set(history[0]["loss"]) == {"fit/image", "total"}
    assert set(history[-1]["loss"]) == {"fit/text", "total"}
    # eval_every counts the run's epochs across stages; the last epoch is always evaluated.
    assert ["map" in r for r in history] == [False, True, False, True, True]
    # The last stage's optimiser (Adam over the text stream) and schedule are what is saved.
    assert "exp_avg" in state["optimizer"]["state"][0]
    assert state["scheduler"]["_last_lr"] == pytest.approx([0.005 * 0.5**2])
    # What the hooks computed is kept: the 54 training items' targets, the flipped bits.
    saved = state["method_state"]
    assert saved["targets"].shape == (54, BITS)
    assert set(saved["flips"].unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize(
    ("stop_after", "stage", "stage_epoch"),
    [(2, "image", 2), (3, "image", 3), (4, "text", 1)],
    ids=["within-stage-1", "between-stages", "within-stage-2"],
)
def test_a_resumed_run_ends_as_the_uninterrupted_one(
    uninterrupted: Path,
    config: RunConfig,
    work: Path,
    monkeypatch: pytest.MonkeyPatch,
    stop_after: int,
    stage: str,
    stage_epoch: int,
) -> None:
    run = work / f"stopped-{stop_after}"
    with one_thread():
        train_until(config, run, stop_after, monkeypatch)
    stopped = load_checkpoint(run)
    assert (stopped["stage"], stopped["stage_epoch"]) == (stage, stage_epoch)
    with one_thread():
        train(config_from_dict({}), run, resume=True)
    a, b = load_checkpoint(uninterrupted), load_checkpoint(run)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in ("targets", "flips"):
        assert torch.equal(a["method_state"][key], b["method_state"][key]), key
    assert a["history"] == b["history"]


def test_it_evaluates_and_exports_through_the_generic_path(
    uninterrupted: Path,
    shapes: Shapes,
    tmp_path: Path,
) -> None:
    report = evaluate_run(uninterrupted, tmp_path / "eval.json")
    assert set(report["map"]) == {"image->image", "image->text", "text->image", "text->text"}
    assert all(0 < v <= 1 for v in report["map"].values())
    with one_thread():
        bundle_dir = export_bundle(uninterrupted, tmp_path / "bundle")
    bundle = load_bundle(bundle_dir)
    assert (bundle.method, bundle.bits, bundle.modalities) == ("toy", BITS, ["image", "text"])
    # The service's codes are the trained streams' codes.
    state = load_checkpoint(uninterrupted)
    method = trained_method(state, config_from_dict(state["config"]), uninterrupted)
    vocabulary = Vocabulary.from_json(state["vocabulary"])
    bags, _ = bundle.vectorizer.vectorize(shapes.captions)
    with torch.inference_mode():
        expected = pack_bits(method.encode("text", torch.from_numpy(bags))).numpy()
        assert np.array_equal(bags, vocabulary.encode(shapes.captions))
    assert np.array_equal(bundle.encoders["text"].encode(bags), expected)


def test_where_a_checkpoint_resumes(tmp_path: Path) -> None:
    def stage(name: str, epochs: int) -> Stage:
        return Stage(name, epochs, [], lambda p: torch.optim.SGD(p, lr=0.1))

    stages = [stage("image", 3), stage("text", 2)]
    at = resume_position
    assert at({"stage": "image", "stage_epoch": 2}, stages, tmp_path) == Position(0, 2, 2)
    # A finished stage: the next one starts from its first epoch.
    assert at({"stage": "image", "stage_epoch": 3}, stages, tmp_path) == Position(1, 0, 3)
    assert at({"stage": "text", "stage_epoch": 2}, stages, tmp_path) == Position(2, 0, 5)
    # Written before stages existed: a one-stage method's run-wide epochs.
    assert at({"epoch": 4}, [stage("joint", 30)], tmp_path) == Position(0, 4, 4)
    for state, message in [
        ({"epoch": 4}, "it names no stage, and this method trains in several"),
        ({"stage": "fusion", "stage_epoch": 1}, "its stage 'fusion' is none of its method's"),
        ({"stage": "text", "stage_epoch": 3}, "it is 3 epochs into stage 'text' of 2"),
    ]:
        with pytest.raises(DataError, match=message):
            at(state, stages, tmp_path)
