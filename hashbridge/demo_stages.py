"""Stage bookkeeping for the demo: skip a step whose inputs and output are unchanged.

Each finished stage records a fingerprint of its inputs and the sha256 of its output file
in a JSON state file; a later run reuses the stage only when both still match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bundle.digests import file_sha256
from bundle.fileio import write_bytes
from hashbridge.demo_service import DemoError

log = logging.getLogger(__name__)

STATE_FILE = "demo-state.json"


class State:
    """Fingerprints of finished stages, kept in the work folder."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / STATE_FILE
        self.records: dict[str, Any] = {}
        if self.path.exists():
            try:
                self.records = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                log.warning("%s is unreadable; rebuilding every stage", self.path)

    @staticmethod
    def claim(workdir: Path) -> None:
        """Make workdir the demo's, or refuse a folder of someone else's files.

        The demo deletes and rebuilds its data, run, bundle and collection folders; in a
        folder it did not make, those could be the user's own.
        """
        if (workdir / STATE_FILE).exists():
            return
        if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
            raise DemoError(
                f"--workdir {workdir} is not empty and was not made by the demo, which "
                "replaces its data, run, bundle and collection folders; give a new or empty "
                "folder"
            )
        workdir.mkdir(parents=True, exist_ok=True)
        write_bytes(workdir / STATE_FILE, b"{}")

    def done(self, stage: str, fingerprint: str) -> dict[str, Any] | None:
        """The stage's record when it finished with these inputs, else None."""
        record = self.records.get(stage)
        return record if record and record.get("fingerprint") == fingerprint else None

    def record(self, stage: str, fingerprint: str, **values: Any) -> None:
        """Mark a stage finished (atomically)."""
        self.records[stage] = {"fingerprint": fingerprint, **values}
        self._save()

    def forget(self, stage: str) -> None:
        """Mark a stage as not done."""
        if self.records.pop(stage, None) is not None:
            self._save()

    def _save(self) -> None:
        text = json.dumps(self.records, indent=2, sort_keys=True)
        write_bytes(self.path, text.encode())


def fingerprint(value: Any) -> str:
    """A stable digest of JSON-able stage inputs."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class Stages:
    """Runs or reuses stages, timing each."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.reused: list[str] = []
        self.built: list[str] = []
        self.seconds: dict[str, float] = {}

    def run(
        self, stage: str, inputs: Any, output: Path, build: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """Reuse the stage's record if its inputs and output are unchanged, else build it.

        The record keeps the output file's sha256, so an output edited or replaced since
        is noticed and rebuilt; later stages take that digest as one of their inputs.
        """
        key = fingerprint(inputs)
        record = self.state.done(stage, key)
        if record is not None and output.exists():
            if file_sha256(output) == record.get("sha256"):
                log.info("%s: reusing %s", stage, output)
                self.reused.append(stage)
                return record
            log.info("%s: %s changed since it was made; rebuilding", stage, output)
        start = time.perf_counter()
        values = build()
        values["sha256"] = file_sha256(output)
        self.seconds[stage] = round(time.perf_counter() - start, 1)
        log.info("%s: done in %.1f s", stage, self.seconds[stage])
        self.state.record(stage, key, **values)
        self.built.append(stage)
        return {"fingerprint": key, **values}
