"""docs/results.md's generated tables against bench/results/, through bench/tables.py."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "results.md"


def _tables() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_tables", REPO / "bench" / "tables.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_table_in_results_doc_is_the_generated_one() -> None:
    tables = _tables()
    text = DOC.read_text(encoding="utf-8")
    blocks = list(tables.BLOCK.finditer(text))
    assert len(blocks) >= 10, "docs/results.md lost its generated tables"
    for block in blocks:
        assert block["body"].strip() == tables.render(block["path"]).strip(), (
            f"docs/results.md's table of {block['path']} is stale: "
            "run python bench/tables.py --write docs/results.md"
        )


def test_every_accuracy_and_search_result_has_a_table() -> None:
    """A results file of a kind bench/tables.py renders is shown in docs/results.md, itself
    or through a shown merge of it (`bench.methods --merge`)."""
    tables = _tables()
    shown = {m["path"].partition("#")[0] for m in tables.BLOCK.finditer(DOC.read_text())}
    for merge in list(shown):
        data = json.loads((REPO / merge).read_text())
        shown |= {source["file"] for source in data.get("merged_from", [])}
    for path in sorted((REPO / "bench" / "results").glob("*.json")):
        data = json.loads(path.read_text())
        try:
            tables.kind(data)
        except SystemExit:
            continue
        assert f"bench/results/{path.name}" in shown, f"{path.name} has no table in results.md"


def test_write_regenerates_a_stale_table(tmp_path: Path) -> None:
    tables = _tables()
    doc = tmp_path / "doc.md"
    path = "bench/results/accuracy-wikipedia.json"
    doc.write_text(f"x\n<!-- table: {path} -->\n| stale |\n<!-- table: end -->\ny\n")
    tables.write(doc)
    assert doc.read_text() == (
        f"x\n<!-- table: {path} -->\n{tables.render(path)}\n<!-- table: end -->\ny\n"
    )


def test_an_unknown_results_file_is_refused() -> None:
    with pytest.raises(SystemExit, match="no table"):
        _tables().kind({"something": 1})
