"""Settings come from HASHBRIDGE_* env vars (or arguments), validated once at start-up."""

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.settings import Settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("HASHBRIDGE_"):
            monkeypatch.delenv(key)


def test_env_vars_fill_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HASHBRIDGE_BUNDLE_DIR", str(tmp_path / "b"))
    monkeypatch.setenv("HASHBRIDGE_DATA_DIR", str(tmp_path / "d"))
    monkeypatch.setenv("HASHBRIDGE_API_KEY", "s3cret")
    monkeypatch.setenv("HASHBRIDGE_PROTECT_READS", "true")
    monkeypatch.setenv("HASHBRIDGE_MAX_K", "50")
    monkeypatch.setenv("HASHBRIDGE_INDEX_KIND", "ivf")
    s = Settings()
    assert (s.bundle_dir, s.data_dir) == (tmp_path / "b", tmp_path / "d")
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert (s.protect_reads, s.max_k, s.index_kind, s.port) == (True, 50, "ivf", 8080)


def test_arguments_override_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HASHBRIDGE_PORT", "9000")
    s = Settings(bundle_dir=tmp_path, data_dir=tmp_path, port=9100)
    assert s.port == 9100


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"protect_reads": True}, "protect_reads=true needs api_key"),
        ({"index_kind": "hnsw"}, "index_kind"),
        ({"max_k": 0}, "max_k"),
        ({"workers": 0}, "workers"),
    ],
)
def test_bad_settings_are_refused(tmp_path: Path, overrides: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(bundle_dir=tmp_path, data_dir=tmp_path, **overrides)


def test_bundle_and_data_dirs_are_required() -> None:
    with pytest.raises(ValidationError, match="bundle_dir"):
        Settings()


def test_an_empty_api_key_means_no_key(monkeypatch, tmp_path):
    from service.settings import Settings

    monkeypatch.setenv("HASHBRIDGE_API_KEY", "")
    settings = Settings(bundle_dir=tmp_path, data_dir=tmp_path)
    assert settings.api_key is None
