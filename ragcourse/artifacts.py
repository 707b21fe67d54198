"""Artifacts written atomically, each with a manifest (config, versions, input hashes)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
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


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"


# ``.<name>.tmp-<host>-<pid>-<random>``: the process that writes it, so a later run can tell a dead one's leftovers.
_TEMP = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)(?:-[a-z0-9_]+)?")


def pid_alive(pid: int) -> bool:
    """Is a process with this id running on this machine? (Signal 0 checks without sending anything.)"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary folders that :func:`atomic_dir` processes on this machine left when they were killed.

    Only folders named with this host and a pid that no longer runs are removed (a live writer's, another machine's
    on a shared disk, and anything not named by ``atomic_dir`` are kept). Returns what was removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP.fullmatch(entry.name)
        if match and match["host"] == _host() and int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def check_writable(folder: Path) -> None:
    """Raise a one-line ``PermissionError`` now if artifacts cannot be written under ``folder`` (before any work).

    The folder need not exist: its nearest existing parent is tried instead. A probe file is created and removed.
    """
    folder = Path(folder)
    probe_at = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if probe_at is None or not probe_at.is_dir():
        raise PermissionError(f"Cannot write artifacts to {folder}: {probe_at} is not a folder. Set paths.output_root to a folder "
                              f"you can write (e.g. --set paths.output_root=~/ragcourse-outputs).")
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe_at)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise PermissionError(f"Cannot write artifacts to {folder} ({exc.strerror or exc} in {probe_at}): make it writable "
                              f"(chmod u+w) or set paths.output_root to a folder you can write "
                              f"(e.g. --set paths.output_root=~/ragcourse-outputs).") from None


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` in one rename.

    A crash leaves the previous artifact untouched; a killed process leaves its ``.<name>.tmp-<host>-<pid>-...``
    folder, which the next run (:func:`clean_stale_temps`) removes.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{_host()}-{os.getpid()}-", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{_host()}-{os.getpid()}")
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


def restore_prebuilt(source: Path, name: str, target: Path, preset: str) -> bool:
    """Copy one artifact (``dataset``, ``adapter``, ``merged``, ``index``) from a pre-built folder or archive.

    ``source`` is a folder holding ``[<preset>/]<name>/manifest.json`` (e.g. an ``outputs`` folder copied from the
    instructor's machine), or a ``.tar.gz``/``.tgz``/``.zip`` of one. Returns False when it holds no such artifact;
    the caller then builds it as usual. The copy is atomic, like every artifact.
    """
    import tarfile
    import zipfile

    source = Path(source)
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
    print(f"Using the pre-built {name} from {source} (paths.prebuilt).")
    return True
