"""Artifacts written atomically, each with a manifest (config, versions, input hashes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from .config import CourseConfig
from .runtime import versions

MANIFEST = "manifest.json"


def file_hashes(paths: Iterable[Path], root: Path | None = None) -> dict[str, str]:
    """sha256 of each input file, keyed by its path (relative to ``root`` when given)."""
    out = {}
    for p in sorted(Path(x) for x in paths):
        key = str(p.relative_to(root)) if root and p.is_relative_to(root) else str(p)
        out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    A crash leaves the previous artifact untouched (and at worst a ``.tmp-`` folder to delete).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, cfg: CourseConfig, inputs: dict[str, str], **extra: Any) -> dict[str, Any]:
    manifest = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "preset": cfg.preset,
        "config": cfg.to_dict(),
        "versions": versions(),
        "inputs": inputs,
        **extra,
    }
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else None


def stale_reason(folder: Path, inputs: dict[str, str], config_section: dict[str, Any] | None = None,
                 section: str | None = None) -> str | None:
    """Why the artifact in ``folder`` cannot be reused (None when it can)."""
    manifest = read_manifest(folder)
    if manifest is None:
        return f"no artifact at {folder}"
    if manifest.get("inputs") != inputs:
        return "its input files changed"
    if section and config_section is not None and manifest.get("config", {}).get(section) != config_section:
        return f"the '{section}' config changed"
    return None
