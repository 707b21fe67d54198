"""Pre-built artifacts (paths.prebuilt): a workshop can start at notebook 05 with the instructor's artifacts.

Restoring is one more source for ``pipeline.ensure``: a missing artifact is copied from the pre-built folder or
archive and then checked like any other; a local artifact is never replaced by it.
"""

from __future__ import annotations

import json
import tarfile
import zipfile

import pytest
from quick import quick_config

from ragcourse import artifacts, pipeline


def test_restore_copies_one_artifact_from_a_folder(tmp_path):
    src = tmp_path / "instructor" / "cpu-smoke" / "adapter"
    src.mkdir(parents=True)
    (src / "manifest.json").write_text(json.dumps({"step": "adapter"}))
    (src / "weights.bin").write_bytes(b"x" * 10)
    target = tmp_path / "outputs" / "cpu-smoke" / "adapter"
    assert artifacts.restore_prebuilt(tmp_path / "instructor", "adapter", target, "cpu-smoke")
    assert (target / "weights.bin").read_bytes() == b"x" * 10
    assert not artifacts.restore_prebuilt(tmp_path / "instructor", "merged", tmp_path / "m", "cpu-smoke")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["tar", "zip"])
def test_a_workshop_starts_from_the_instructors_archive(smoke, tmp_path, kind, capsys):
    """The instructor's outputs as an archive: every step is restored and current, nothing is rebuilt, and a learner's
    own artifact is never replaced."""
    archive = tmp_path / f"prebuilt.{kind}"
    root = smoke.output_dir.parent
    files = [p for step in artifacts.STEPS for p in smoke.artifact_dir(step).rglob("*")]  # no checkpoints, no plots
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in files:
                z.write(p, p.relative_to(root.parent))
    else:
        with tarfile.open(archive, "w") as t:
            for p in files:
                t.add(p, arcname=str(p.relative_to(root.parent)), recursive=False)
    cfg = quick_config(tmp_path / "learner", paths={"prebuilt": str(archive)})
    pipeline.ensure(cfg, "eval")
    out = capsys.readouterr().out
    assert "building" not in out and out.count("(paths.prebuilt)") == len(artifacts.STEPS)
    assert pipeline.status(cfg) == {step: "current" for step in artifacts.STEPS}

    mine = quick_config(tmp_path / "mine", paths={"prebuilt": str(archive)})
    (mine.artifact_dir("index")).mkdir(parents=True)
    (mine.artifact_dir("index") / "manifest.json").write_text("{}")  # the learner's own (here: unusable) index
    pipeline.ensure(mine, "index")
    assert "building it" in capsys.readouterr().out  # rebuilt here, never overwritten from the archive
    assert artifacts.read_manifest(mine.artifact_dir("index"))["step"] == "index"


def test_a_wrong_prebuilt_path_names_the_fix(tmp_path):
    cfg = quick_config(tmp_path, paths={"prebuilt": str(tmp_path / "nope.tar.gz")})
    with pytest.raises(FileNotFoundError, match="paths.prebuilt"):
        pipeline.ensure(cfg, "index")
