"""Settings come from HASHBRIDGE_* env vars (or arguments), validated once at start-up."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from hashbridge import cli
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
        # Each worker thread would start this many torch threads: start-up died in a traceback.
        ({"worker_threads": 10**12}, "worker_threads"),
        # A search with a k this large allocated terabytes and answered 500.
        ({"max_k": 10**12}, "max_k"),
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


@pytest.mark.parametrize(
    "name", ["HASHBRIDGE_BUNDLE_DIR", "HASHBRIDGE_DATA_DIR", "HASHBRIDGE_HOST"]
)
def test_an_empty_path_or_host_is_refused(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
) -> None:
    # docker-compose passes an unset variable as "": as the data dir that put the collection
    # in the working folder, as the host it bound every interface.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HASHBRIDGE_BUNDLE_DIR", str(tmp_path / "no-bundle"))
    monkeypatch.setenv("HASHBRIDGE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(name, "")
    assert cli.main(["serve"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1, error
    assert name in error and "must not be empty" in error, error
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("key", ["s3cret\r", "s3cret ", " s3cret", "pässwort", "tab\tkey"])
def test_a_key_no_http_header_can_carry_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str
) -> None:
    # Headers drop surrounding spaces, refuse control characters (a CRLF .env file's \r) and
    # read bytes as latin-1: the server started and answered every write with 403.
    monkeypatch.setenv("HASHBRIDGE_API_KEY", key)
    args = cli.build_parser().parse_args(
        ["serve", "--bundle", str(tmp_path), "--data", str(tmp_path)]
    )
    with pytest.raises(cli.UsageError, match="HASHBRIDGE_API_KEY") as refused:
        cli.serve_settings(args)
    assert "printable ASCII" in str(refused.value)
    with pytest.raises(ValidationError) as error:
        Settings(bundle_dir=tmp_path, data_dir=tmp_path)
    assert "s3cret" not in str(error.value) and "pässwort" not in str(error.value)


def test_a_key_with_inner_spaces_and_symbols_is_kept(tmp_path: Path) -> None:
    key = "correct horse ~!@#$%^&*()_+-=[]{}|;:,.<>/?"
    settings = Settings(bundle_dir=tmp_path, data_dir=tmp_path, api_key=key)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == key


@pytest.mark.parametrize("flag", ["--bundle", "--data"])
def test_an_empty_path_flag_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    # argparse's type=Path turned "" into the working folder before Settings saw it.
    monkeypatch.chdir(tmp_path)
    argv = ["serve", "--bundle", str(tmp_path / "no-bundle"), "--data", str(tmp_path / "data")]
    argv[argv.index(flag) + 1] = ""
    assert cli.main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "must not be empty" in error, error
    assert flag in error, error
    assert list(tmp_path.iterdir()) == []


def test_an_empty_api_key_flag_does_not_replace_the_env_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # It served with no key at all, and warned that HASHBRIDGE_API_KEY was unset.
    monkeypatch.setenv("HASHBRIDGE_API_KEY", "envkey")
    args = cli.build_parser().parse_args(
        ["serve", "--bundle", str(tmp_path), "--data", str(tmp_path), "--api-key", ""]
    )
    with pytest.raises(cli.UsageError, match="--api-key is empty"):
        cli.serve_settings(args)


def test_a_bad_env_only_setting_is_named_by_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HASHBRIDGE_MAX_K", "abc")
    args = cli.build_parser().parse_args(["serve", "--bundle", str(tmp_path), "--data", "d"])
    with pytest.raises(cli.UsageError, match="max_k: .*set HASHBRIDGE_MAX_K"):
        cli.serve_settings(args)


def test_python_m_service_reports_bad_settings_in_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HASHBRIDGE_")}
    env["HASHBRIDGE_MAX_K"] = "abc"
    done = subprocess.run(
        [sys.executable, "-m", "service", "--bundle", str(tmp_path), "--data", str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "HASHBRIDGE_MAX_K" in lines[0], done.stderr
