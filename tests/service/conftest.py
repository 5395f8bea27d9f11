"""Shared pytest fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.encoders import Bundle, load_bundle
from tests.support.service_bundle import build_bundle, make_settings, open_client


@pytest.fixture(scope="session")
def svc_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 32-bit image+text bundle with traced encoders."""
    return build_bundle(tmp_path_factory.mktemp("bundle") / "b32")


@pytest.fixture(scope="session")
def svc_bundle(svc_bundle_dir: Path) -> Bundle:
    """The session bundle, loaded once."""
    return load_bundle(svc_bundle_dir)


@pytest.fixture
def api(svc_bundle_dir: Path, svc_bundle: Bundle, tmp_path: Path) -> Iterator[TestClient]:
    """A running app on an empty data dir."""
    with open_client(make_settings(svc_bundle_dir, tmp_path / "data"), svc_bundle) as c:
        yield c
