"""``ragcourse run-all`` from scratch on documentation nobody here wrote.

On the sample domain the same builds run once per session in the ``smoke`` fixture (``pipeline.ensure``, the function
``run-all`` loops over), and ``tests/test_pipeline.py`` runs the command itself on those artifacts.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from quick import QUICK_ARGS

ROOT = Path(__file__).resolve().parents[1]
QUICK = [arg for item in QUICK_ARGS for arg in ("--set", item)]


def run_all(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "ragcourse.cli",
        "run-all",
        "--preset",
        "cpu-smoke",
        "--set",
        f"paths.output_root={tmp_path / 'outputs'}",
        *QUICK,
        *extra,
    ]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def check_report(tmp_path: Path) -> str:
    report = tmp_path / "outputs" / "cpu-smoke" / "eval" / "report.md"
    text = report.read_text()
    for condition in ("base closed-book", "base + RAG", "tuned closed-book", "tuned + RAG"):
        assert condition in text
    assert (report.parent / "per_question.csv").is_file() and (report.parent / "summary.json").is_file()
    return text


@pytest.mark.slow
def test_run_all_on_real_documentation(tmp_path):
    """Documentation nobody here wrote (installed packages' READMEs), with reference Q&A made from it at test time."""
    from ragcourse import data
    from ragcourse.realdocs import build_real_docs, write_reference_qa

    build_real_docs(tmp_path / "docs")
    write_reference_qa(data.load_documents(tmp_path / "docs"), tmp_path / "qa", n=60)
    out = run_all(
        tmp_path, "--set", f"data.corpus_dir={tmp_path / 'docs'}", "--set", f"data.qa_dir={tmp_path / 'qa'}"
    ).stdout
    for step in ("dataset", "adapter", "merged", "index", "eval"):
        assert f"{step}: building it (no {step} at" in out and f"{step}: built in" in out
    check_report(tmp_path)
