"""Plots the notebooks show; each returns the matplotlib Figure and saves it when given a path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence


def can_draw_live(shell: Any = None) -> bool:
    """Can a figure be redrawn in place here, as notebook 03's live loss curve is (``train.loss_curve_callback``)?

    Yes in a Jupyter kernel, whatever the front end: Jupyter's ``ZMQInteractiveShell``, Colab's
    ``google.colab._shell.Shell`` (a subclass with another name, so a check of the class name never drew there), VS
    Code's; each has the ``kernel`` its display messages go through. No in a terminal IPython
    (``TerminalInteractiveShell``) or plain Python. ``shell`` defaults to the running one (``get_ipython()``).
    """
    if shell is None:
        try:
            from IPython import get_ipython
        except ImportError:
            return False
        shell = get_ipython()
    if shell is None:
        return False
    return getattr(shell, "kernel", None) is not None or any(
        cls.__name__ == "ZMQInteractiveShell" for cls in type(shell).__mro__
    )


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


def loss_curve(train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]], path: str | Path | None = None):
    """Training and validation loss against the optimizer step (notebook 03)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    if train:
        ax.plot(*zip(*train), marker=".", label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="o", label="validation loss")
    ax.set(xlabel="step", ylabel="loss (answer tokens only)", title="QLoRA training")
    ax.grid(alpha=0.3)
    ax.legend()
    return _finish(fig, path)


def lora_parameters_vs_rank(table: Any, path: str | Path | None = None):
    """Trainable LoRA parameters against rank, one panel per model and one line per target set, log scales
    (notebook 02). ``table`` has the columns of ``lora.parameter_table``: model, targets, r, trainable."""
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(table["model"]))
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), sharex=True, sharey=True, squeeze=False)
    for ax, model in zip(axes.flat, models):
        sub = table[table["model"] == model]
        for targets, group in sub.groupby("targets", sort=False):
            ax.plot(group["r"], group["trainable"], marker="o", label=targets)
        ax.set(xscale="log", yscale="log", title=model, xlabel="rank r")
        ax.minorticks_off()
        ax.set_xticks(sorted(set(sub["r"])), [str(r) for r in sorted(set(sub["r"]))])
        ax.grid(True, which="major", alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel("trainable parameters")
    for ax in list(axes.flat)[len(models) :]:
        ax.set_visible(False)
    axes.flat[0].legend(title="target_modules", fontsize=8)
    return _finish(fig, path)


def memory_breakdown(
    table: Any,
    gpu_limits: Mapping[str, float],
    path: str | Path | None = None,
    title: str = "Predicted peak training memory",
):
    """Stacked bars of the memory estimate per setup (GiB), with each GPU class's memory drawn in (notebook 02).
    ``table``: one row per setup, one column per component (``memory.estimate_table``)."""
    import matplotlib.pyplot as plt

    components = [
        c
        for c in (
            "weights",
            "quant_constants",
            "lora_params",
            "gradients",
            "optimizer_states",
            "activations",
            "overhead",
        )
        if c in table.columns
    ]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(table) + 3), 4.5))
    bottom = [0.0] * len(table)
    labels = list(table.index)
    for component in components:
        values = list(table[component])
        ax.bar(range(len(table)), values, bottom=bottom, label=component.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    for name, gib in gpu_limits.items():
        ax.axhline(gib, color="black", linestyle=":", linewidth=1)
        ax.text(len(table) - 0.5, gib, f" {name}", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(table)), labels, rotation=60, ha="right", fontsize=8)
    ax.set(ylabel="GiB", title=title)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    return _finish(fig, path)


def lora_sweep(table: Any, path: str | Path | None = None):
    """The measured sweep: validation loss and seconds per step against rank, per target set (notebook 02)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for targets, group in table.groupby("targets", sort=False):
        left.plot(group["r"], group["val_loss"], marker="o", label=targets)
        right.plot(group["r"], group["s_per_step"], marker="o", label=targets)
    for ax, ylabel in ((left, "validation loss (answer tokens)"), (right, "seconds per step")):
        ax.set(xscale="log", xlabel="rank r", ylabel=ylabel)
        ax.minorticks_off()
        ax.set_xticks(sorted(set(table["r"])), [str(r) for r in sorted(set(table["r"]))])
        ax.grid(True, alpha=0.3)
    right.set_ylim(bottom=0)
    left.legend(title="target_modules")
    return _finish(fig, path)


def grouped_bars(table: Any, conditions: Sequence[str], metrics: Sequence[str], path: str | Path | None = None):
    """Grouped bars (metric groups, one bar per condition) with bootstrap-interval error bars (notebook 06)."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(conditions)
    x = np.arange(len(metrics))
    for i, condition in enumerate(conditions):
        rows = table[(table.condition == condition)].set_index("metric").reindex(metrics)
        err = np.vstack([rows["mean"] - rows["low"], rows["high"] - rows["mean"]])
        ax.bar(x + i * width - 0.4 + width / 2, rows["mean"], width, yerr=err, capsize=3, label=condition)
    ax.set_xticks(x, [m.replace("(mode=fmeasure)", "") for m in metrics])
    ax.set(ylim=(0, 1.05), ylabel="mean (95% CI)", title="Base vs tuned, closed-book vs RAG")
    ax.legend(fontsize=8, ncol=2)
    return _finish(fig, path)


def retrieval_at_k(
    table: Any,
    configured_k: int | None = None,
    path: str | Path | None = None,
    title: str = "Retrieval quality on the test split",
):
    """Hit rate and MRR against k, one line per retriever (notebook 05). ``table``: ``rag.retrieval_quality``'s
    long table (retriever, k, hit_rate, mrr); ``configured_k`` (``rag.similarity_top_k``) is drawn in."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), sharex=True)
    for name, group in table.groupby("retriever", sort=False):
        left.plot(group["k"], group["hit_rate"], marker="o", label=name)
        right.plot(group["k"], group["mrr"], marker="o", label=name)
    for ax, ylabel in ((left, "hit rate @ k"), (right, "MRR @ k")):
        if configured_k is not None:
            ax.axvline(configured_k, color="grey", linestyle=":", label=f"similarity_top_k = {configured_k}")
        ax.set(xlabel="k (passages retrieved)", ylabel=ylabel, ylim=(0, 1.02))
        ax.set_xticks(sorted(set(table["k"])))
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(title)
    return _finish(fig, path)
