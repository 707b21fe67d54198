"""Pre-built artifacts (paths.prebuilt): a workshop can start at notebook 05 with the instructor's artifacts."""

from __future__ import annotations

import json
import tarfile
import zipfile

import pytest

from ragcourse.config import load_config


def _artifact(folder, name):
    (folder / name).mkdir(parents=True)
    (folder / name / "manifest.json").write_text(json.dumps({"name": name}))
    (folder / name / "weights.bin").write_bytes(b"x" * 10)


def test_missing_artifact_is_restored_from_a_prebuilt_folder(tmp_path):
    _artifact(tmp_path / "instructor" / "cpu-smoke", "adapter")
    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path / "outputs"), "prebuilt": str(tmp_path / "instructor")})
    adapter = cfg.artifact_dir("adapter")
    assert json.loads((adapter / "manifest.json").read_text()) == {"name": "adapter"} and (adapter / "weights.bin").is_file()
    assert not (cfg.artifact_dir("merged") / "manifest.json").exists()  # not in the folder: built as usual


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_restored_from_an_archive_and_never_over_a_local_artifact(tmp_path, kind):
    src = tmp_path / "src"
    _artifact(src / "outputs" / "cpu-smoke", "dataset")
    archive = tmp_path / f"prebuilt.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(archive, "w") as z:
            for p in src.rglob("*"):
                z.write(p, p.relative_to(src))
    else:
        with tarfile.open(archive, "w:gz") as t:
            t.add(src / "outputs", arcname="outputs")
    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path / "outputs"), "prebuilt": str(archive)})
    dataset = cfg.artifact_dir("dataset")
    assert (dataset / "weights.bin").read_bytes() == b"x" * 10
    (dataset / "manifest.json").write_text("{}")  # the learner's own artifact is never replaced
    assert cfg.artifact_dir("dataset").joinpath("manifest.json").read_text() == "{}"


def test_a_wrong_prebuilt_path_names_the_fix(tmp_path):
    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path), "prebuilt": str(tmp_path / "nope.tar.gz")})
    with pytest.raises(FileNotFoundError, match="paths.prebuilt"):
        cfg.artifact_dir("index")
