"""Render bench.accuracy JSON results as the README's Markdown tables.

python bench/tables.py bench/results/accuracy-*.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CROSS = ("image->text", "text->image")


def render(path: Path) -> str:
    """One Markdown table per results file."""
    rows = json.loads(path.read_text())["results"]
    lines = [
        f"`{path}`",
        "",
        "| bits | split seed | image→text | text→image | image→image | text→text "
        "| continuous i→t / t→i | binary / continuous i→t, t→i | train s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        m, c, q = r["map"], r["continuous_map"], r["binary_to_continuous"]
        lines.append(
            f"| {r['bits']} | {r['split_seed']} | {m['image->text']:.3f} | {m['text->image']:.3f} "
            f"| {m['image->image']:.3f} | {m['text->text']:.3f} "
            f"| {c['image->text']:.3f} / {c['text->image']:.3f} "
            f"| {q['image->text']:.1%}, {q['text->image']:.1%} "
            f"| {r['train_seconds_recorded']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print("\n\n".join(render(Path(p)) for p in sys.argv[1:]))
