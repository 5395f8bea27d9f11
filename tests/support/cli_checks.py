"""Running `hashbridge` in-process and checking that a mistake ends in one error line."""

from __future__ import annotations

from pathlib import Path

import pytest

from hashbridge.cli import main


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `hashbridge ARGV`."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, command: str, *needles: str) -> str:
    """stderr holds exactly one error line, naming every needle, and no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith(f"hashbridge {command}: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]
