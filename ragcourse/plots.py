"""Plots the notebooks show; each returns the matplotlib Figure and saves it when given a path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def _finish(fig: Any, path: str | Path | None) -> Any:
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def token_length_histogram(lengths: Mapping[str, Sequence[int]], max_length: int, path: str | Path | None = None):
    """Histogram of example lengths per split, with the preset's ``max_length`` drawn in (notebook 01)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    for split, values in lengths.items():
        ax.hist(values, bins=30, alpha=0.6, label=f"{split} (n={len(values)})")
    ax.axvline(max_length, color="red", linestyle="--", label=f"max_length = {max_length}")
    ax.set(xlabel="tokens per example (chat template applied)", ylabel="examples", title="Example lengths")
    ax.legend()
    return _finish(fig, path)


def counts_by_split(table: Any, path: str | Path | None = None):
    """Stacked bars: examples per split and question type (a pandas crosstab)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    table.plot(kind="bar", stacked=True, ax=ax, rot=0)
    ax.set(ylabel="examples", title="Examples per split and question type")
    return _finish(fig, path)
