"""Quick cpu-smoke settings shared by every test that runs the pipeline (fixtures in ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

from ragcourse.config import CourseConfig, load_config

# One set of quick settings for every test that runs the pipeline, so the dataset built once fits all of them.
QUICK = {
    "data": {"max_train_examples": 24, "max_eval_examples": 4},
    "training": {"max_steps": 4, "eval_steps": 2, "save_steps": 2, "logging_steps": 1, "save_total_limit": 5},
    "evaluation": {"max_questions": 3, "judge_samples": 0},
    "model": {"max_new_tokens": 32},
}
QUICK_ARGS = [f"{section}.{key}={value}" for section, values in QUICK.items() for key, value in values.items()]


def quick_config(output_root: Path, **overrides: dict) -> CourseConfig:
    """cpu-smoke with :data:`QUICK` and ``paths.output_root`` set (further ``overrides`` merged per section)."""
    sections = {s: {**QUICK.get(s, {}), **overrides.get(s, {})} for s in {*QUICK, *overrides}}
    sections["paths"] = {**sections.get("paths", {}), "output_root": str(output_root)}
    return load_config("cpu-smoke", **sections)
