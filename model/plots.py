"""PNG plots of retrieval curves, drawn on a bare ``Figure`` (no pyplot global state)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from bundle.fileio import atomic_write


def _save_atomic(fig: Figure, path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=120))


def _axes(curves: Mapping[str, object], title: str) -> tuple[Figure, Axes]:
    if not curves:
        raise ValueError("no curves to plot")
    fig = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return fig, ax


def plot_pr_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    title: str = "Precision-recall",
) -> Path:
    """Write a PNG with one precision-recall line per label, e.g. ``{"image→text": pr_curve}``."""
    fig, ax = _axes(curves, title)
    for label, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], marker=".", label=label)
    ax.set_xlabel("Recall")
    ax.set_ylabel("Precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend()
    return _save_atomic(fig, path)


def plot_precision_at_k(
    curves: Mapping[str, Mapping[int | str, float]],
    path: str | os.PathLike[str],
    *,
    title: str = "Precision@K",
) -> Path:
    """Write a PNG with one line per label of a metric at K (precision@K unless `title` names
    another, e.g. Recall@K); K keys may be ints or JSON strings."""
    fig, ax = _axes(curves, title)
    for label, by_k in curves.items():
        ks, values = zip(*sorted((int(k), float(v)) for k, v in by_k.items()), strict=True)
        ax.plot(ks, values, marker="o", label=label)
    # K usually spans orders of magnitude (1 .. 1000).
    ax.set_xscale("log")
    ax.set_xlabel("K (top-ranked items)")
    ax.set_ylabel(title)
    ax.set_ylim(0, 1.02)
    ax.legend()
    return _save_atomic(fig, path)
