"""``ragcourse run-all``: the whole pipeline from one config, on the sample domain and on real documentation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--set", "training.max_steps=2", "--set", "training.eval_steps=2", "--set", "training.save_steps=2",
         "--set", "evaluation.max_questions=4", "--set", "evaluation.judge_samples=0",
         "--set", "data.max_train_examples=16", "--set", "data.max_eval_examples=4"]


def run_all(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ragcourse.cli", "run-all", "--preset", "cpu-smoke",
           "--set", f"paths.output_root={tmp_path / 'outputs'}", *QUICK, *extra]
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
def test_run_all_on_the_sample_domain(tmp_path):
    out = run_all(tmp_path).stdout
    assert all(f"== {step}" in out for step in ("data", "train", "merge", "index", "eval"))
    check_report(tmp_path)
    again = run_all(tmp_path).stdout  # a second run reuses the adapter and the merged model
    assert "== train: up to date" in again and "== merge: up to date" in again


@pytest.mark.slow
def test_run_all_on_real_documentation(tmp_path):
    """Documentation nobody here wrote (installed packages' READMEs), with reference Q&A made from it at test time."""
    from ragcourse import data
    from ragcourse.realdocs import build_real_docs, write_reference_qa

    build_real_docs(tmp_path / "docs")
    write_reference_qa(data.load_documents(tmp_path / "docs"), tmp_path / "qa", n=60)
    run_all(tmp_path, "--set", f"data.corpus_dir={tmp_path / 'docs'}", "--set", f"data.qa_dir={tmp_path / 'qa'}")
    check_report(tmp_path)
