"""Fixtures every test folder may use: Milvus, the tiny trained run and the tiny bundles.

Training costs seconds to minutes on a shared CPU, so the session trains one tiny run and
exports it once (`tiny_run`, `tiny_bundle`) for every test that needs *a* trained model;
modules that test a particular training (another config, a resume, an interruption) train
their own. The service's bundles are not trained: tests/support/service_bundle.py builds them
from seeded modules. The fixtures import what they use, so that a run of the index tests
alone loads no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.support.shapes import Shapes

# Only a top-level conftest may load plugins: milvus-lite and the embedded Milvus server.
pytest_plugins = ["tests.support.milvus", "tests.support.dvsh_fixtures"]


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Shapes:
    """60 PNGs of coloured shapes (4 colours x 3 shapes x 5) and a manifest.csv."""
    from tests.support.shapes import write_shapes

    return write_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="session")
def tiny_run(shapes: Shapes, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's tiny DSMHN run (16 bits, one hidden layer of 64) trained on the shapes."""
    from model.config import config_from_dict
    from model.train import train
    from tests.support.shapes import one_thread

    work = tmp_path_factory.mktemp("run")
    config = config_from_dict(
        {
            "bits": 16,
            "data": {"kind": "manifest", "path": str(shapes.manifest)},
            "image": {"size": 64, "cache_dir": str(work / "cache"), "hidden": [64], "dropout": 0.0},
            "text": {"hidden": [64], "dropout": 0.0},
            # 54 training items: small batches, a high rate and many epochs so the few
            # seconds of training still give a model whose retrieval can be asserted on.
            "train": {"epochs": 60, "batch_size": 16, "lr": 3e-3, "eval_every": 0},
        }
    )
    with one_thread():
        train(config, work / "run")
    return work / "run"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run exported (the export verifies itself before it returns)."""
    from model.export import export_bundle
    from tests.support.shapes import one_thread

    with one_thread():
        return export_bundle(tiny_run, tmp_path_factory.mktemp("export") / "bundle")


@pytest.fixture(scope="session")
def svc_video_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A built (untrained) 32-bit image+text+video bundle, 4 frames a clip; read-only."""
    from tests.support.service_bundle import build_bundle

    return build_bundle(tmp_path_factory.mktemp("bundle") / "video", video=True, frames=4)
