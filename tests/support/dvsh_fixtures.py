"""A tiny DVSH run and its bundle, trained once per session (test modules load this with
pytest_plugins): 96 synthetic scenes with sentences, 16 bits, a GRU over word ids."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.data.synthetic import write_synthetic_images
from model.export import export_bundle
from model.train import TrainResult, train
from tests.support.dvsh_run import dvsh_config


@pytest.fixture(scope="session")
def dvsh_scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 labelled scenes with a sentence each and a split column (24 queries)."""
    root = tmp_path_factory.mktemp("dvsh-data")
    return write_synthetic_images(root / "data", 96, seed=3, query_fraction=0.25)


@pytest.fixture(scope="session")
def dvsh_trained(dvsh_scenes: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    work = tmp_path_factory.mktemp("dvsh-run")
    threads = torch.get_num_threads()
    try:
        return train(dvsh_config(dvsh_scenes, work / "cache"), work / "run")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dvsh_bundle(dvsh_trained: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_bundle(dvsh_trained.run_dir, tmp_path_factory.mktemp("dvsh-export") / "bundle")
