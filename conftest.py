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
        return (yield)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = yield
    bad = [w for w in caught if _watched(w)]
    if bad:
        lines = "\n".join(f"  {w.category.__name__} at {w.filename}:{w.lineno}: {w.message}" for w in bad[:5])
        pytest.fail(f"version drift: {len(bad)} deprecation warning(s) from the course's core libraries:\n{lines}")
    return result
