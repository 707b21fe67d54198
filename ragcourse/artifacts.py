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
# paths.prebuilt: "hf://<owner>/<name>" is a Hugging Face Hub repository (ragcourse.hub), not a local path.
HUB_PREFIX = "hf://"


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


def _prebuilt_member(names: Iterable[str], name: str, preset: str) -> str | None:
    """The folder (``[...]/<preset>/<name>`` or ``[...]/<name>``) under which an archive holds ``name``'s manifest."""
    for candidate in ([preset, name], [name]):
        tail = candidate + [MANIFEST]
        for member in names:
            parts = member.strip("/").split("/")
            if parts[-len(tail):] == tail:
                return "/".join(parts[:-1])
    return None


def hub_repo_id(source: str | os.PathLike[str]) -> str | None:
    """``owner/name`` when ``source`` is ``hf://owner/name`` (also after ``config.resolve_path`` made it
    ``<root>/hf:/owner/name``), else None."""
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        return text[len(HUB_PREFIX):].strip("/") or None
    parts = Path(text).parts
    if "hf:" in parts:
        return "/".join(parts[parts.index("hf:") + 1:]) or None
    return None


def _download_from_hub(repo_id: str, name: str, preset: str, into: Path) -> Path:
    """The files of ``[<preset>/]<name>/`` in a Hub repository, downloaded into ``into``; token from the environment."""
    from huggingface_hub import snapshot_download

    from .env import secret

    patterns = [f"{preset}/{name}/*", f"{preset}/{name}/**", f"{name}/*", f"{name}/**"]
    return Path(snapshot_download(repo_id, local_dir=into, allow_patterns=patterns, token=secret("HF_TOKEN")))


def restore_prebuilt(source: Path, name: str, target: Path, preset: str) -> bool:
    """Copy one artifact (``dataset``, ``adapter``, ``merged``, ``index``) from a pre-built folder, archive or Hub repo.

    ``source`` is a folder holding ``[<preset>/]<name>/manifest.json`` (e.g. an ``outputs`` folder copied from the
    instructor's machine), a ``.tar.gz``/``.tgz``/``.zip`` of one, or ``hf://<owner>/<name>``: a Hugging Face Hub
    repository with that layout (``ragcourse push`` writes one). Returns False when it holds no such artifact; the
    caller then builds it as usual. The copy is atomic, like every artifact.
    """
    repo_id = hub_repo_id(source)
    if repo_id is not None:
        with tempfile.TemporaryDirectory() as tmp:
            folder = _download_from_hub(repo_id, name, preset, Path(tmp))
            return _restore(folder, name, target, preset, label=f"{HUB_PREFIX}{repo_id}")
    return _restore(Path(source), name, target, preset, label=str(source))


def _restore(source: Path, name: str, target: Path, preset: str, label: str) -> bool:
    """``restore_prebuilt`` for a local folder or archive (``label`` names the source in the message)."""
    import tarfile
    import zipfile

    if not source.exists():
        raise FileNotFoundError(f"paths.prebuilt points to {source}, which does not exist: fix the path in your config "
                                f"or remove paths.prebuilt to build every artifact here.")
    if source.is_dir():
        folder = next((source / c / name for c in (preset, ".") if (source / c / name / MANIFEST).is_file()), None)
        if folder is None:
            return False
        with atomic_dir(target) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
    else:
        is_zip = zipfile.is_zipfile(source)
        with (zipfile.ZipFile(source) if is_zip else tarfile.open(source)) as archive:
            names = archive.namelist() if is_zip else archive.getnames()
            prefix = _prebuilt_member(names, name, preset)
            if prefix is None:
                return False
            with tempfile.TemporaryDirectory() as unpacked, atomic_dir(target) as tmp:
                members = [m for m in names if m.strip("/").startswith(prefix + "/")]
                if is_zip:
                    archive.extractall(unpacked, members=members)
                else:
                    archive.extractall(unpacked, members=[archive.getmember(m) for m in members], filter="data")
                shutil.copytree(Path(unpacked) / prefix, tmp, dirs_exist_ok=True)
    print(f"Using the pre-built {name} from {label} (paths.prebuilt).")
    return True
