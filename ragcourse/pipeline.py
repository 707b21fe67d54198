"""The artifact pipeline: one registry of steps and one ``ensure`` (notebooks 03–06, every CLI command, run-all).

Each step makes one artifact folder under ``outputs/<preset>/``::

    index ──> dataset ──> adapter ──> merged ──> eval     (eval also reads the index and the dataset's test split)

(The dataset reuses the index's vectors to rank distractors when the index is current; it does not depend on it.)

What a step is made from (input files, the config values it depends on, the upstream manifests) is declared once in
:mod:`ragcourse.artifacts` and saved in each artifact's manifest; :func:`ensure` compares that record with the present
inputs and **reuses** the artifact, **restores** it from ``paths.prebuilt``, or **builds** it, saying why and how long
that took on the benchmark machine. Nothing else in the course decides whether an artifact is fresh.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import data, evaluate, hub, merge, retrieval, train
from .artifacts import MANIFEST, STEPS, UPSTREAM, restore_prebuilt, stale_reason
from .config import CourseConfig, resolve_path
from .runtime import course_run


def _build_adapter(cfg: CourseConfig, resume: bool = False) -> Any:
    return train.train(cfg, data.load_dataset(cfg), resume=resume)


def _build_index(cfg: CourseConfig) -> Any:
    index = retrieval.build_index(data.corpus_chunks(cfg), retrieval.embedding_model(cfg), cfg)
    return retrieval.save_index(index, cfg)


@dataclass(frozen=True)
class Step:
    """One artifact: how it is built and loaded, and where the course teaches it."""

    name: str
    notebook: str
    build: Callable[..., Any]
    load: Callable[[CourseConfig], Any]


REGISTRY: dict[str, Step] = {
    "index": Step("index", "05_rag_llamaindex.ipynb", _build_index, retrieval.load_index),
    "dataset": Step("dataset", "01_data_prep.ipynb", data.build_dataset, data.load_dataset),
    "adapter": Step("adapter", "03_qlora_training.ipynb", _build_adapter, lambda cfg: cfg.artifact_dir("adapter")),
    "merged": Step("merged", "04_adapter_merge.ipynb", merge.build_merged, merge.load_merged),
    "eval": Step("eval", "06_evaluation.ipynb", evaluate.run, lambda cfg: cfg.artifact_dir("eval")),
}
assert tuple(REGISTRY) == STEPS


def measured_seconds(cfg: CourseConfig, step: str) -> float | None:
    """How long the notebook that builds ``step`` took, in full, in the measured course run (``runtime.course_run``)."""
    run = course_run(cfg.preset).get(REGISTRY[step].notebook[:2])
    return run["wall_seconds"] if run else None


def expected_time(cfg: CourseConfig, step: str) -> str:
    """A phrase for the log: what building ``step`` is expected to cost on this preset, from a measurement."""
    seconds = measured_seconds(cfg, step)
    if seconds is not None:
        return (
            f"notebook {REGISTRY[step].notebook[:2]}, which teaches this step, took {seconds / 60:.1f} min in all "
            "on the benchmark machine"
        )
    return (
        f"not measured on {cfg.preset}; all notebooks of this preset are expected to take about "
        f"{cfg.expected.total_minutes:g} min"
    )


def _main_process_first() -> Any:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().main_process_first()


def ensure(cfg: CourseConfig, step: str, rebuild: bool = False, resume: bool = False, quiet: bool = False) -> Path:
    """Make ``step``'s artifact current and return its folder.

    Reuse it, restore it from ``paths.prebuilt``, or build it.

    Upstream steps are ensured first (a retrained adapter makes the merged model stale, and so on). ``rebuild``
    rebuilds this step even when it is current; ``resume`` continues training from a checkpoint of the same inputs.
    ``quiet`` leaves out the "up to date" line (builds are always announced).
    """
    if step not in REGISTRY:
        raise ValueError(f"unknown pipeline step {step!r}; the steps are: {', '.join(STEPS)}")
    with _main_process_first():  # under `accelerate launch`, one process builds what is missing upstream
        for upstream in UPSTREAM[step]:
            ensure(cfg, upstream, quiet=True)
    folder = cfg.artifact_dir(step)
    reason = "a rebuild was asked for" if rebuild else stale_reason(cfg, step)
    if reason and not rebuild and cfg.paths.prebuilt and not (folder / MANIFEST).is_file():
        if restore_prebuilt(resolve_path(cfg.paths.prebuilt), step, folder, cfg.preset):
            reason = stale_reason(cfg, step)
            if reason:
                print(f"The pre-built {step} does not fit this config ({reason}); building it here instead.")
    if reason is None:
        if not quiet:
            print(f"{step}: up to date, reusing {folder}")
        return folder
    print(f"{step}: building it ({reason}); {expected_time(cfg, step)}.", flush=True)
    if step == "adapter" and not cfg.preset.startswith("cpu"):
        print("  Faster than training here:" + "".join(f"\n  - {way}" for way in hub.faster_ways(cfg, step)))
    start = time.perf_counter()
    REGISTRY[step].build(cfg, resume=resume) if step == "adapter" else REGISTRY[step].build(cfg)
    print(f"{step}: built in {time.perf_counter() - start:.0f} s -> {folder}", flush=True)
    return folder


def load(cfg: CourseConfig, step: str, **ensure_kwargs: Any) -> Any:
    """:func:`ensure` the artifact, then load it: a ``DatasetDict``, the adapter folder, (merged model, tokenizer),
    the ``VectorStoreIndex``, or the report folder."""
    ensure(cfg, step, **ensure_kwargs)
    return REGISTRY[step].load(cfg)


def corpus_index(cfg: CourseConfig) -> Any:
    """The index notebook 01 ranks distractors with: the ``index`` artifact, made current and loaded, so the corpus is
    embedded once for notebooks 01 and 05 (as ``data.build_dataset`` reuses it); None where
    :func:`ragcourse.retrieval.data_prep_shares_index` says no (a vector database)."""
    return load(cfg, "index") if retrieval.data_prep_shares_index(cfg) else None


def status(cfg: CourseConfig) -> dict[str, str]:
    """Every step's state without building anything: ``current`` or the reason it would be rebuilt."""
    return {step: stale_reason(cfg, step) or "current" for step in STEPS}
