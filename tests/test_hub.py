"""Artifacts on the Hub (ragcourse.hub, paths.prebuilt: hf://...) against a local folder standing in for the Hub."""

from __future__ import annotations

import json
import shutil
from fnmatch import fnmatch
from pathlib import Path

import huggingface_hub
import pytest

from ragcourse import hub
from ragcourse.artifacts import hub_repo_id, restore_prebuilt
from ragcourse.cli import main
from ragcourse.config import load_config, resolve_path

TOKEN = "hf_test_token_never_printed"


@pytest.fixture
def fake_hub(tmp_path: Path, monkeypatch):
    """``HfApi.create_repo``/``upload_folder`` and ``snapshot_download`` on tmp_path/hub/<owner>/<name>; calls
    recorded."""
    root, calls = tmp_path / "hub", []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("token", token))

        def create_repo(self, repo_id, private=None, exist_ok=False, **kw):
            calls.append(("create_repo", repo_id, private))
            (root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

        def upload_folder(self, *, repo_id, folder_path, path_in_repo, commit_message=None, **kw):
            calls.append(("upload_folder", repo_id, path_in_repo))
            shutil.copytree(folder_path, root / repo_id / path_in_repo, dirs_exist_ok=True)

    def snapshot_download(repo_id, *, local_dir, allow_patterns, token=None, **kw):
        calls.append(("snapshot_download", repo_id, token))
        for path in (root / repo_id).rglob("*"):
            rel = path.relative_to(root / repo_id).as_posix()
            if path.is_file() and any(fnmatch(rel, p) for p in allow_patterns):
                (Path(local_dir) / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, Path(local_dir) / rel)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return root, calls


def _cfg(tmp_path: Path, name: str, **paths):
    return load_config("cpu-smoke", paths={"output_root": str(tmp_path / name), **paths})


def _build(cfg, step: str) -> None:
    folder = cfg.output_dir / step
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"step": step}))
    (folder / "adapter_model.safetensors").write_bytes(b"w" * 32)


def test_push_then_pull_on_another_runtime_with_the_token_from_the_environment(tmp_path, fake_hub, capsys):
    root, calls = fake_hub
    colab_a = _cfg(tmp_path, "runtime-a")
    _build(colab_a, "adapter")
    url = hub.push(colab_a, "adapter", "me/ragcourse-artifacts")
    assert url.endswith("me/ragcourse-artifacts/tree/main/cpu-smoke/adapter")
    assert (root / "me/ragcourse-artifacts/cpu-smoke/adapter/manifest.json").is_file()
    assert ("create_repo", "me/ragcourse-artifacts", True) in calls  # private by default
    colab_b = _cfg(tmp_path, "runtime-b")
    target = hub.pull(colab_b, "adapter", "me/ragcourse-artifacts")
    assert target == colab_b.output_dir / "adapter"
    assert (target / "adapter_model.safetensors").read_bytes() == b"w" * 32
    assert ("token", TOKEN) in calls and ("snapshot_download", "me/ragcourse-artifacts", TOKEN) in calls
    assert TOKEN not in capsys.readouterr().out


def test_pushing_a_missing_artifact_or_pulling_an_absent_one_says_what_to_do(tmp_path, fake_hub):
    cfg = _cfg(tmp_path, "outputs")
    with pytest.raises(FileNotFoundError, match="build it first"):
        hub.push(cfg, "merged", "me/repo")
    (fake_hub[0] / "me/repo").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no cpu-smoke/merged"):
        hub.pull(cfg, "merged", "me/repo")
    with pytest.raises(ValueError, match="Unknown artifact"):
        hub.pull(cfg, "weights", "me/repo")


def test_prebuilt_accepts_a_hub_repository(tmp_path, fake_hub):
    _build(_cfg(tmp_path, "instructor"), "index")
    hub.push(_cfg(tmp_path, "instructor"), "index", "teacher/course-prebuilt")
    cfg = _cfg(tmp_path, "learner", prebuilt="hf://teacher/course-prebuilt")
    source = resolve_path(cfg.paths.prebuilt)  # what the caller of restore_prebuilt passes (config / pipeline.ensure)
    index = cfg.output_dir / "index"
    assert restore_prebuilt(source, "index", index, cfg.preset)  # as from a folder or an archive
    assert json.loads((index / "manifest.json").read_text()) == {"step": "index"}
    assert not restore_prebuilt(source, "dataset", cfg.output_dir / "dataset", cfg.preset)  # not there: built as usual


def test_hub_repo_ids_survive_the_config_path_resolution(tmp_path):
    assert hub_repo_id("hf://owner/name") == "owner/name"
    assert hub_repo_id(tmp_path / "hf:" / "owner" / "name") == "owner/name"  # config.resolve_path("hf://owner/name")
    assert hub_repo_id(tmp_path / "prebuilt.tar.gz") is None and hub_repo_id("owner/name") is None


def test_cli_push_and_pull(tmp_path, fake_hub, monkeypatch, capsys):
    out = tmp_path / "cli"
    args = ["--preset", "cpu-smoke", "--set", f"paths.output_root={out}", "--repo", "me/r"]
    assert main(["push", *args]) == 1  # nothing built yet
    _build(_cfg(tmp_path, "cli"), "dataset")
    assert main(["push", *args]) == 0
    shutil.rmtree(out)
    assert main(["pull", *args, "dataset"]) == 0
    assert (out / "cpu-smoke/dataset/manifest.json").is_file()
    assert TOKEN not in capsys.readouterr().out


def test_faster_ways_name_the_hub_the_prebuilt_setting_and_on_colab_drive(tmp_path, monkeypatch):
    cfg = load_config("colab-t4", paths={"output_root": str(tmp_path)})
    text = "\n".join(hub.faster_ways(cfg, "adapter"))
    assert "ragcourse pull --preset colab-t4" in text and "hf://" in text and "[colab-t4/]adapter" in text
    assert "Google Drive" not in text  # not on Colab
    monkeypatch.setitem(__import__("sys").modules, "google.colab", object())
    assert "Google Drive" in hub.faster_ways(cfg, "adapter")[0]
