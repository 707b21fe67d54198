"""Test-session setup shared by the unit tests (tests/) and the notebook tests (notebooks/, nbval).

Everything here happens before any notebook kernel starts, so kernels inherit it:
offline hub, telemetry off, the cpu-smoke preset, and two network guards: a network namespace with loopback only
(tests/netguard/netns.py, entered first, while this process has no thread or child: every child inherits it), and a
Python-level guard (tests/netguard/sitecustomize.py) that refuses and records any connection or lookup beyond loopback,
in this process and in every child process that keeps PYTHONPATH (the only guard where no namespace is allowed).
"""

from __future__ import annotations

import os
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
GUARD_DIR = ROOT / "tests" / "netguard"
sys.path.insert(0, str(GUARD_DIR))
import netns  # noqa: E402

NETNS = netns.isolate()
WATCHED = ("transformers", "peft", "trl")
# Known drift inside the libraries themselves, not in our calls (remove when the pinned versions move):
# peft 0.21.2's PeftModel.__init__ reads transformers 5's deprecated `is_gradient_checkpointing` property.
UPSTREAM_ONLY = ("`is_gradient_checkpointing` is deprecated",)

_log = Path(tempfile.mkdtemp(prefix="ragcourse-netguard-")) / "attempts.log"
os.environ.update(
    RAGCOURSE_NETGUARD="1",
    RAGCOURSE_NETGUARD_LOG=str(_log),
    RAGCOURSE_NETNS_STATE=NETNS,
    RAGCOURSE_PRESET=os.environ.get("RAGCOURSE_PRESET", "cpu-smoke"),
    RAGCOURSE_ROOT=str(ROOT),
    PYTHONPATH=os.pathsep.join(filter(None, [str(GUARD_DIR), os.environ.get("PYTHONPATH")])),
    MPLBACKEND="Agg",
)
for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):  # the course must never need one
    os.environ.pop(var, None)
import sitecustomize  # noqa: E402,F401  (installs the guard in this process too)

from ragcourse.env import prepare_environment  # noqa: E402

prepare_environment(offline=True)


def pytest_report_header(config: pytest.Config) -> str:
    return f"network: namespace {NETNS}; Python-level guard on"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _log.exists() and _log.read_text().strip():
        sys.stderr.write(f"\nNetwork access was attempted during the tests (see {_log}):\n{_log.read_text()[:4000]}\n")
        session.exitstatus = 1


def _watched(w: warnings.WarningMessage) -> bool:
    if not issubclass(w.category, (FutureWarning, DeprecationWarning)):
        return False
    if any(text in str(w.message) for text in UPSTREAM_ONLY):
        return False
    path = str(w.filename).replace("\\", "/")
    return any(f"/{name}/" in path for name in WATCHED) or f"{ROOT.as_posix()}/ragcourse/" in path


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    """Unit tests fail on a FutureWarning/DeprecationWarning raised in transformers, peft, trl or our code."""
    if item.path.suffix == ".ipynb":
        result = yield
        _count_live_weights(item)
        return result
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = yield
    bad = [w for w in caught if _watched(w)]
    if bad:
        lines = "\n".join(f"  {w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in bad[:5])
        pytest.fail(f"version drift: {len(bad)} deprecation warning(s) from the course's core libraries:\n{lines}")
    return result


# -- live weights after every notebook cell (issue 31) ------------------------------------------------------------
# RAGCOURSE_LIVE_WEIGHTS: "check" (default: record, and fail a cell that holds more than its notebook's phases plan),
# "record" (record only), "off". Records go to RAGCOURSE_LIVE_WEIGHTS_DIR (default outputs/<preset>/live_weights),
# one JSON file per notebook, rewritten after each cell; benchmarks/live_weights.py makes the table from them.
_LIVE: dict[str, list[dict]] = {}
_PLANS: dict[str, tuple] = {}


def _live_plan():
    preset = os.environ.get("RAGCOURSE_PRESET", "cpu-smoke")
    user = os.environ.get("RAGCOURSE_CONFIG")
    key = f"{preset}|{user}"
    if key not in _PLANS:
        from ragcourse import memory
        from ragcourse.config import load_config

        cfg = load_config(preset, user) if user else load_config(preset)
        from ragcourse.hardware import detect_hardware

        target = memory.this_machine() if detect_hardware().device == "cuda" else None
        plan = memory.phase_plan(cfg, target)
        _PLANS[key] = (cfg, plan, memory.one_copy_bytes(cfg, target))
    return _PLANS[key]


def _count_live_weights(item: pytest.Item) -> None:
    import json
    import time

    mode = os.environ.get("RAGCOURSE_LIVE_WEIGHTS", "check")
    kernel = getattr(item.parent, "kernel", None)
    if mode == "off" or kernel is None or not kernel.is_alive():
        return
    from ragcourse import live_weights, memory

    start = time.perf_counter()
    try:
        record = live_weights.probe_kernel(kernel.kc)
    except Exception as exc:  # a busy or dying kernel: the cell's own result stands, the count is skipped
        sys.stderr.write(f"\nlive-weights probe skipped after {item.name}: {exc!r}\n")
        return
    overhead = time.perf_counter() - start
    if record is None:
        return
    cfg, plan, one_copy = _live_plan()
    notebook = item.path.stem
    try:
        planned = memory.planned_live_bytes(plan, notebook) / one_copy
    except ValueError:  # a notebook outside the course's 00-06: recorded, not checked
        planned, mode = None, "record"
    first_line = next((line for line in item.cell.source.splitlines() if line.strip()), "")
    record.update(
        cell=item.cell_num,
        cell_id=item.cell.get("id"),
        first_line=first_line[:80],
        overhead_seconds=overhead,
        copies=live_weights.copies(record, one_copy),
        planned_copies=planned,
    )
    records = _LIVE.setdefault(str(item.path), [])
    records.append(record)
    folder = Path(os.environ.get("RAGCOURSE_LIVE_WEIGHTS_DIR") or cfg.output_dir / "live_weights")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{notebook}.json").write_text(
        json.dumps(
            {
                "notebook": notebook,
                "preset": cfg.preset,
                "model": cfg.model.name,
                "one_copy_bytes": one_copy,
                "planned_copies": record["planned_copies"],
                "cells": records,
            },
            indent=1,
        )
    )
    excess = memory.live_excess(plan, notebook, record, one_copy) if planned is not None else None
    if excess and mode == "check":
        pytest.fail(f"after cell {item.cell_num} ({record['cell_id']}) the kernel {excess}", pytrace=False)
