"""Exact-match metadata filters: the exact test, and a SQLite prefilter that narrows rows to it.

A filter ``where`` keeps items whose metadata has every one of its keys with exactly its
value, compared as canonical JSON, so 1, 1.0 and true are three different values.

The prefilter is a SQL condition on the stored JSON text that every matching row meets
(it may keep a few more): SQLite's JSON functions drop the rest before any is parsed in
Python, which a filter that matches little would otherwise do for every candidate.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# json_each's type names for each Python JSON value; numbers stay loose (1e400 and ints
# past int64 are "real" to SQLite) and the exact test settles them.
_NUMBER_TYPES = ("integer", "real")
#: Keys the SQL prefilter tests; the exact test settles any others. Each key is a subquery,
#: and SQLite refuses a statement past its expression-depth limit ("Expression tree is too
#: large" at about 1,000 keys), so a filter of any size must not become one clause per key.
PREFILTER_KEYS = 16


def matches(metadata: Mapping[str, Any] | None, where: Mapping[str, Any] | None) -> bool:
    """Whether metadata (None: no such item) passes where (None: no filter)."""
    if metadata is None or where is None:
        return metadata is not None
    return all(
        key in metadata and _canonical(metadata[key]) == _canonical(value)
        for key, value in where.items()
    )


def sql_prefilter(where: Mapping[str, Any]) -> tuple[str, list[Any]]:
    """(condition, parameters) met by every row whose JSON ``metadata`` matches where."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in list(where.items())[:PREFILTER_KEYS]:
        types: tuple[str, ...]
        atom = None
        if value is None:
            types = ("null",)
        elif isinstance(value, bool):
            types = ("true",) if value else ("false",)
        elif isinstance(value, int | float):
            types = _NUMBER_TYPES
        elif isinstance(value, str):
            types, atom = ("text",), value
        elif isinstance(value, list):
            types = ("array",)
        else:
            types = ("object",)
        marks = ",".join("?" * len(types))
        clause = f"SELECT 1 FROM json_each(metadata) AS e WHERE e.key = ? AND e.type IN ({marks})"
        params += [key, *types]
        if atom is not None:
            clause += " AND e.atom = ?"
            params.append(atom)
        clauses.append(f"EXISTS ({clause})")
    return " AND ".join(clauses) or "1", params


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
