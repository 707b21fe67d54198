"""The artifact pipeline (``ragcourse.pipeline``): one freshness rule, used by the notebooks, the CLI and run-all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from quick import QUICK_ARGS, quick_config

from ragcourse import artifacts, pipeline
from ragcourse.config import load_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # the session's artifacts are built once (about two minutes), then shared


def cli(cfg, command: str, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable,
        "-m",
        "ragcourse.cli",
        command,
        "--preset",
        "cpu-smoke",
        "--set",
        f"paths.output_root={cfg.output_dir.parent}",
    ]
    for item in QUICK_ARGS:
        args += ["--set", item]
    return subprocess.run(
        args + list(extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


def manifest_hash(cfg, step: str) -> str:
    return artifacts._manifest_hash(cfg.artifact_dir(step))


def test_every_artifact_of_a_fresh_build_is_current(smoke, capsys):
    assert pipeline.status(smoke) == {step: "current" for step in artifacts.STEPS}
    pipeline.ensure(smoke, "eval")  # nothing to do: every step says so, none is rebuilt
    out = capsys.readouterr().out
    assert "eval: up to date" in out and "building" not in out


def test_each_step_names_what_changed(smoke):
    assert "'lora' settings changed" in artifacts.stale_reason(
        quick_config(smoke.output_dir.parent, lora={"r": 4}), "adapter"
    )
    assert "'data' settings changed" in artifacts.stale_reason(
        quick_config(smoke.output_dir.parent, data={"chunk_size": 128}), "dataset"
    )
    # A change that does not touch an artifact's inputs keeps it current: the generation length is not in the adapter.
    assert artifacts.stale_reason(quick_config(smoke.output_dir.parent, model={"max_new_tokens": 7}), "adapter") is None
    assert "'evaluation' settings changed" in artifacts.stale_reason(
        quick_config(smoke.output_dir.parent, evaluation={"max_questions": 2}), "eval"
    )


def test_a_truncated_manifest_is_rebuilt_with_a_one_line_reason(smoke_copy, capsys):
    manifest = smoke_copy.artifact_dir("index") / "manifest.json"
    manifest.write_text(manifest.read_text()[:40])  # a crash while writing it, or a hand edit
    assert "unreadable" in artifacts.stale_reason(smoke_copy, "index")
    pipeline.ensure(smoke_copy, "index")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("index: building")]
    assert len(lines) == 1 and "unreadable" in lines[0]
    assert artifacts.stale_reason(smoke_copy, "index") is None


@pytest.mark.parametrize("content", ["[1, 2]", '{"step": "adapter"}', "\u00ff\u00fe"])
def test_a_foreign_manifest_is_stale_never_a_crash(smoke_copy, content):
    (smoke_copy.artifact_dir("merged") / "manifest.json").write_text(content, encoding="latin-1")
    assert artifacts.stale_reason(smoke_copy, "merged")
    assert artifacts.stale_reason(smoke_copy, "eval")  # and what was built from it is stale too


def test_retrain_then_eval_evaluates_the_new_merge(smoke_copy):
    """`ragcourse train` then `ragcourse eval`: eval merges the new adapter first (no stale merged model is used)."""
    before = manifest_hash(smoke_copy, "merged")
    res = cli(smoke_copy, "train")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "the adapter it was built from has changed" in artifacts.stale_reason(smoke_copy, "merged")
    res = cli(smoke_copy, "eval")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "merged: building it (the adapter it was built from has changed)" in res.stdout
    after = manifest_hash(smoke_copy, "merged")
    assert after != before
    evaluated = json.loads((smoke_copy.artifact_dir("eval") / "manifest.json").read_text())
    assert evaluated["inputs"]["upstream"]["merged"] == after
    assert pipeline.status(smoke_copy)["eval"] == "current"


def test_resume_after_a_dataset_change_is_refused_with_the_reason(smoke_copy):
    """Checkpoints made from another dataset must not be resumed (and then saved as if made from this one)."""
    assert (smoke_copy.output_dir / "checkpoints" / "fingerprint.json").is_file()
    manifest = smoke_copy.artifact_dir("dataset") / "manifest.json"
    data = json.loads(manifest.read_text())
    data["created_at"] = "rebuilt"  # the dataset was rebuilt (same kind of content, a different artifact)
    manifest.write_text(json.dumps(data, indent=2))
    adapter_before = manifest_hash(smoke_copy, "adapter")
    res = cli(smoke_copy, "train", "--resume")
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    message = res.stderr.strip().splitlines()[-1]
    assert message.startswith("error: --resume refused") and "the dataset it was built from has changed" in message
    assert "without --resume" in message
    assert manifest_hash(smoke_copy, "adapter") == adapter_before  # nothing the user had was replaced


def test_resume_with_the_same_inputs_continues(smoke_copy):
    res = cli(smoke_copy, "train", "--resume", "--set", "training.max_steps=6")
    # max_steps is an input of the adapter: a longer run is another run, so the checkpoints are refused ...
    assert res.returncode == 2 and "'training' settings changed" in res.stderr
    res = cli(smoke_copy, "train", "--resume")  # ... while the same inputs resume from the last checkpoint
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "resuming from" in res.stdout


def test_run_all_reuses_every_current_artifact(smoke_copy):
    res = cli(smoke_copy, "run-all")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    for step in artifacts.STEPS:
        assert f"{step}: up to date" in res.stdout
    assert "building" not in res.stdout and "tuned + RAG" in res.stdout


def test_config_paths_do_no_io(tmp_path):
    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path / "o"), "prebuilt": str(tmp_path / "nope")})
    assert cfg.artifact_dir("adapter") == tmp_path / "o" / "cpu-smoke" / "adapter"
    assert not (tmp_path / "o").exists()


def test_notebook_01_ranks_with_the_saved_index_and_leaves_a_database_to_notebook_05(smoke, tmp_path, capsys):
    """``pipeline.corpus_index``: the current index is reused (the corpus is embedded once for notebooks 01 and 05);
    with a vector database nothing is built and ``data.prepare`` makes its own in-memory index."""
    import copy

    index = pipeline.corpus_index(smoke)
    assert "index: up to date" in capsys.readouterr().out
    saved = json.loads((smoke.artifact_dir("index") / artifacts.MANIFEST).read_text())
    assert len(index.docstore.docs) == saved["chunks"] > 0
    database = copy.deepcopy(smoke)
    database.rag.vector_store = "qdrant"
    database.paths.output_root = str(tmp_path / "outputs")
    assert pipeline.corpus_index(database) is None and not (tmp_path / "outputs").exists()
