"""Artifacts shared by the unit tests: the cpu-smoke pipeline built **once** per test session, through the pipeline.

Tests that only read artifacts use ``smoke`` (the config) directly. Tests that change or rebuild an artifact work on
``smoke_copy`` (a copy of the whole output folder, so their changes never reach another test), and say why they
rebuild. The settings are small (``tests/quick.py``: 24 training examples, a few steps, 4 test questions): they check
the code paths, not the teaching results, which the notebook tests check on the preset's own recipe.
"""

from __future__ import annotations

import shutil

import pytest
from quick import quick_config

from ragcourse.config import CourseConfig


@pytest.fixture(scope="session")
def smoke(tmp_path_factory) -> CourseConfig:
    """Every cpu-smoke artifact (dataset, adapter, merged, index, eval), built once by ``pipeline.ensure``. Read
    only."""
    from ragcourse import pipeline

    cfg = quick_config(tmp_path_factory.mktemp("smoke") / "outputs")
    pipeline.ensure(cfg, "eval")
    return cfg


@pytest.fixture
def smoke_copy(smoke, tmp_path) -> CourseConfig:
    """A private copy of the session's artifacts, for a test that changes or rebuilds some of them."""
    shutil.copytree(smoke.output_dir.parent, tmp_path / "outputs")
    return quick_config(tmp_path / "outputs")
