"""docs/training.md's config-key table against the config classes it is generated from."""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from model import config_table
from model.config import RunConfig, apply_overrides, config_from_dict
from model.methods.registry import METHODS

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "training.md"
ROW = re.compile(r"^\| `(?P<key>[^`]+)` \| (?P<type>[^|]+) \| `(?P<default>[^`]*)` \|")


def _shown_table() -> str:
    doc = DOC.read_text(encoding="utf-8")
    begin, end = doc.find(config_table.BEGIN), doc.find(config_table.END)
    assert 0 <= begin < end, "docs/training.md lacks the config-table markers"
    return doc[begin + len(config_table.BEGIN) : end].strip()


def _class_keys() -> set[str]:
    """Every key a config file may set, read from the dataclasses themselves."""
    keys = set()
    for f in dataclasses.fields(RunConfig):
        if not f.init:
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            keys |= {f"{f.name}.{sub.name}" for sub in dataclasses.fields(default)}
        else:
            keys.add(f.name)
    for name, registered in METHODS.items():
        keys |= {f"{name}.{sub.name}" for sub in dataclasses.fields(registered.options)}
    return keys


def test_training_doc_table_is_the_generated_one() -> None:
    assert _shown_table() == config_table.table().strip(), (
        "docs/training.md's config table is stale: "
        "run python -m model.config_table --write docs/training.md"
    )


def test_table_lists_every_config_key_once() -> None:
    shown = [m["key"] for line in _shown_table().splitlines() if (m := ROW.match(line))]
    assert len(shown) == len(set(shown))
    assert set(shown) == _class_keys()


#: What a method refuses to run without (DVSH trains a recurrent sentence stream).
RUNNABLE: dict[str, dict[str, Any]] = {"dvsh": {"text": {"encoder": "recurrent"}}}


def test_every_documented_default_is_the_real_one() -> None:
    """Each row's default, given back through --set, is accepted and equals the class default."""
    for line in _shown_table().splitlines():
        match = ROW.match(line)
        if not match:
            continue
        key, default = match["key"], match["default"]
        section, _, name = key.rpartition(".")
        method = section if section in METHODS else "dsmhn"
        # A method's section is read under that method, with what the method needs to run.
        base = {"method": method, **RUNNABLE.get(method, {})}
        data = apply_overrides(copy.deepcopy(base), [f"{key}={default}"])
        built = config_from_dict(data)
        fresh = config_from_dict(copy.deepcopy(base))
        node = built.options if section in METHODS else built
        expected = fresh.options if section in METHODS else fresh
        if section and section not in METHODS:
            node, expected = getattr(node, section), getattr(expected, section)
        assert getattr(node, name) == getattr(expected, name), key


def test_a_key_without_a_meaning_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    meanings = dict(config_table.MEANINGS)
    del meanings["video.time_bins"]
    monkeypatch.setattr(config_table, "MEANINGS", meanings)
    with pytest.raises(SystemExit, match="video.time_bins"):
        config_table.table()


def test_a_meaning_for_no_key_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_table, "MEANINGS", {**config_table.MEANINGS, "train.gone": "x"})
    with pytest.raises(SystemExit, match="train.gone"):
        config_table.table()


def test_write_replaces_only_the_table(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"before\n{config_table.BEGIN}\nold\n{config_table.END}\nafter\n")
    config_table.write(doc, "| new |\n")
    assert doc.read_text() == f"before\n{config_table.BEGIN}\n| new |\n{config_table.END}\nafter\n"
