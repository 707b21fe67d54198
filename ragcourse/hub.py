"""Artifacts on the Hugging Face Hub (notebook 03, "Keep your adapter"; ``ragcourse push`` / ``ragcourse pull``).

A Colab runtime forgets its disk; the Hub (or Drive, ``ragcourse.colab``) does not. One repository holds
``<preset>/{dataset,adapter,merged,index}``, the same layout as a ``paths.prebuilt`` folder or archive, so
``paths.prebuilt: hf://<owner>/<name>`` restores from it too. The token comes from ``$HF_TOKEN`` or Colab's secrets
(``ragcourse.env.secret``) and is handed to ``huggingface_hub`` only: never printed, never written.
"""

from __future__ import annotations

from pathlib import Path

from .artifacts import HUB_PREFIX, MANIFEST, restore_prebuilt
from .artifacts import STEPS as ARTIFACT_STEPS
from .config import CourseConfig
from .env import secret

STEPS = tuple(step for step in ARTIFACT_STEPS if step != "eval")  # what is worth sharing: not a report
TOKEN = "HF_TOKEN"


def _check_step(step: str) -> None:
    if step not in STEPS:
        raise ValueError(f"Unknown artifact '{step}': one of {', '.join(STEPS)}.")


def push(cfg: CourseConfig, step: str, repo_id: str, private: bool = True) -> str:
    """Upload ``outputs/<preset>/<step>`` to ``<repo_id>/<preset>/<step>`` (a private model repo, created if needed).

    Returns the folder's address on the Hub. Raises FileNotFoundError when the artifact has not been built here.
    """
    from huggingface_hub import HfApi

    _check_step(step)
    folder = cfg.output_dir / step
    if not (folder / MANIFEST).is_file():
        raise FileNotFoundError(f"No {step} in {folder} to push: build it first (ragcourse {step} or its notebook).")
    api = HfApi(token=secret(TOKEN))
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        path_in_repo=f"{cfg.preset}/{step}",
        commit_message=f"ragcourse push: {cfg.preset}/{step}",
    )
    return f"https://huggingface.co/{repo_id}/tree/main/{cfg.preset}/{step}"


def pull(cfg: CourseConfig, step: str, repo_id: str) -> Path:
    """Download ``<repo_id>/[<preset>/]<step>`` into ``outputs/<preset>/<step>`` (atomically, replacing what is there).

    Raises FileNotFoundError when the repository holds no such artifact.
    """
    _check_step(step)
    target = cfg.output_dir / step
    if not restore_prebuilt(Path(HUB_PREFIX + repo_id), step, target, cfg.preset):
        raise FileNotFoundError(f"{repo_id} on the Hub holds no {cfg.preset}/{step} (nor {step}/) with a {MANIFEST}.")
    return target


def faster_ways(cfg: CourseConfig, step: str) -> list[str]:
    """The ways to get a missing ``step`` faster than rebuilding it, for the line printed before a long rebuild
    (``pipeline.ensure``): Drive on Colab (unless outputs are there already), the Hub, ``paths.prebuilt``."""
    from .colab import DRIVE_OUTPUTS
    from .hardware import in_colab

    ways = []
    if in_colab() and not cfg.output_dir.is_relative_to(DRIVE_OUTPUTS):
        ways.append(
            "keep outputs on Google Drive (answer yes in the setup cell, or set the Colab secret "
            "RAGCOURSE_STORAGE=drive), so the notebook that built it leaves it where this one looks"
        )
    ways += [
        f"`ragcourse pull --preset {cfg.preset} --repo <you>/<repo> {step}` where it was pushed after it was "
        f"built (`ragcourse push`)",
        f"set paths.prebuilt to hf://<owner>/<repo>, a folder or an archive holding [{cfg.preset}/]{step} "
        "(an instructor's pre-built artifacts)",
    ]
    return ways
