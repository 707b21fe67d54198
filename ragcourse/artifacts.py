"""Artifacts written atomically, each with a manifest (config, versions, input hashes)."""

from __future__ import annotations

import contextlib
import dataclasses
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

from .config import CourseConfig, project_root, resolve_path
from .env import versions

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


# A temporary folder of another host is a dead run's once nothing in it changed for this long. Colab gives every VM a
# new host name, so a merge cut off by a disconnect would leave its multi-GB folder on Drive forever; no Colab VM lives
# a day (12 h on the free tier, 24 h at most on paid ones), and a live writer on another machine touches its folder far
# more often (every saved shard or checkpoint), so after a day no running process can still own it.
OTHER_HOST_TEMP_MAX_AGE_S = 24 * 3600


def last_modified(path: Path) -> float:
    """The newest modification time of ``path`` and everything under it (seconds since the epoch)."""
    newest = path.stat().st_mtime
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(OSError):  # removed meanwhile
                newest = max(newest, os.stat(os.path.join(root, name), follow_symlinks=False).st_mtime)
    return newest


def _dead_writer(entry: Path, match: re.Match[str], now: float) -> bool:
    if match["host"] == _host():
        return int(match["pid"]) != os.getpid() and not pid_alive(int(match["pid"]))
    try:
        return now - last_modified(entry) > OTHER_HOST_TEMP_MAX_AGE_S
    except OSError:
        return False


def clean_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary folders that killed :func:`atomic_dir` processes left.

    This host's: named with a pid that no longer runs (a live writer's is kept). Another host's (a shared disk, or
    Drive seen from a new Colab VM): only when nothing in it changed for :data:`OTHER_HOST_TEMP_MAX_AGE_S`. Anything
    not named by ``atomic_dir`` is kept. Returns what was removed.
    """
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    now = time.time()
    for entry in folder.iterdir():
        match = _TEMP.fullmatch(entry.name)
        if match and _dead_writer(entry, match, now):
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
        raise PermissionError(
            f"Cannot write artifacts to {folder}: {probe_at} is not a folder. Set paths.output_root to a folder "
            f"you can write (e.g. --set paths.output_root=~/ragcourse-outputs)."
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".write-probe-", dir=probe_at)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise PermissionError(
            f"Cannot write artifacts to {folder} ({exc.strerror or exc} in {probe_at}): make it writable "
            f"(chmod u+w) or set paths.output_root to a folder you can write "
            f"(e.g. --set paths.output_root=~/ragcourse-outputs)."
        ) from None


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


# -- what each artifact is made from: declared once, read by every saver and by the pipeline's freshness check ---

STEPS = ("index", "dataset", "adapter", "merged", "eval")  # the order run-all builds them in
# Upstream artifacts whose manifests are inputs of a step: a rebuilt upstream makes everything below it stale.
UPSTREAM: dict[str, tuple[str, ...]] = {
    "dataset": (),
    "adapter": ("dataset",),
    "merged": ("adapter",),
    "index": (),
    "eval": ("index", "dataset", "merged"),  # the index first: the dataset's distractor mining reuses its vectors
    "gguf": ("merged",),  # built on request only (ragcourse export, ragcourse.export): it needs ragcourse[gguf]
}


def corpus_files(cfg: CourseConfig) -> list[Path]:
    """Every file under ``data.corpus_dir`` (the documents notebook 01 loads)."""
    corpus = resolve_path(cfg.data.corpus_dir)
    return sorted(p for p in corpus.rglob("*") if p.is_file()) if corpus.is_dir() else []


def qa_files(cfg: CourseConfig) -> list[Path]:
    """The curated question/answer files (``data.qa_dir/*.jsonl``)."""
    qa = resolve_path(cfg.data.qa_dir)
    return sorted(qa.glob("*.jsonl")) if qa.is_dir() else []


def _pick(section: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(section).items() if k not in drop}


def _settings(cfg: CourseConfig, step: str) -> dict[str, Any]:
    """The config values an artifact depends on (and nothing else, so a change elsewhere keeps it fresh)."""
    rerank = cfg.rag.rerank
    if step == "dataset":
        # Every example holds the system prompt; the tokenizer counts chunk sizes and drops over-long examples; the
        # serving retriever picks the distractors; the seed draws the split.
        return {
            "data": _pick(cfg.data),
            "model": {
                "name": cfg.model.name,
                "revision": cfg.model.revision,
                "system_prompt": cfg.model.system_prompt,
                "max_length": cfg.model.max_length,
            },
            "embedding": cfg.embedding.name,
            "seed": cfg.training.seed,
            "distractors": {
                "retriever": cfg.rag.retriever,
                "dense_weight": cfg.rag.dense_weight,
                "bm25_tokenizer": cfg.rag.bm25_tokenizer,
                "rerank": rerank,
                "rerank_model": cfg.rag.rerank_model if rerank else None,
            },
            "filter_instructions": cfg.rag.filter_instructions,
        }
    if step == "adapter":
        return {
            "model": _pick(cfg.model, ("max_new_tokens", "system_prompt")),
            "lora": _pick(cfg.lora),
            "quantization": _pick(cfg.quantization),
            "training": _pick(cfg.training, ("torch_threads", "report_to")),
        }
    if step == "merged":
        return {"torch_dtype": cfg.model.torch_dtype}
    if step == "index":
        return {
            "chunk_size": cfg.data.chunk_size,
            "chunk_overlap": cfg.data.chunk_overlap,
            "tokenizer": cfg.model.name,
            "embedding": cfg.embedding.name,
            "vector_store": cfg.rag.vector_store,
            "vector_store_url": cfg.rag.vector_store_url,
        }
    # gguf: what its Modelfile carries; the quantized type is recorded in its manifest (export.quant_reason)
    if step == "gguf":
        return {
            "system_prompt": cfg.model.system_prompt,
            "max_new_tokens": cfg.model.max_new_tokens,
            "max_length": cfg.model.max_length,
        }
    if step == "eval":
        return {
            "evaluation": _pick(cfg.evaluation),
            "rag": _pick(cfg.rag),
            "model": {"max_new_tokens": cfg.model.max_new_tokens, "system_prompt": cfg.model.system_prompt},
        }
    raise ValueError(f"unknown artifact step {step!r}; the steps are: {', '.join(STEPS)}")


def _input_files(cfg: CourseConfig, step: str) -> list[Path]:
    if step == "dataset":
        return corpus_files(cfg) + qa_files(cfg)
    return corpus_files(cfg) if step == "index" else []


def _manifest_hash(folder: Path) -> str | None:
    path = Path(folder) / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def fingerprint(cfg: CourseConfig, step: str) -> dict[str, Any]:
    """What ``step``'s artifact is made from: input file hashes, the config values it depends on, and the
    manifests of the artifacts it is built from. Saved in its manifest; a difference means "rebuild"."""
    return {
        "files": file_hashes(_input_files(cfg, step), project_root()),
        "settings": json.loads(json.dumps(_settings(cfg, step), default=str)),
        "upstream": {name: _manifest_hash(cfg.artifact_dir(name)) for name in UPSTREAM[step]},
    }


def difference(built: Any, wanted: dict[str, Any]) -> str | None:
    """Why an artifact made from ``built`` (a manifest's ``inputs``) is not what ``wanted`` describes (None: same)."""
    if not isinstance(built, dict) or set(built) != set(wanted):
        return "its manifest comes from another version of the course"
    if built["files"] != wanted["files"]:
        changed = sorted(
            set(built["files"]) ^ set(wanted["files"])
            | {k for k in set(built["files"]) & set(wanted["files"]) if built["files"][k] != wanted["files"][k]}
        )
        return f"input files changed ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})"
    for key, value in wanted["settings"].items():
        if (built["settings"] or {}).get(key) != value:
            return f"the '{key}' settings changed"
    if built["settings"] != wanted["settings"]:
        return "its settings changed"
    for name, digest in wanted["upstream"].items():
        if built["upstream"].get(name) != digest:
            return f"the {name} it was built from has changed" if digest else f"the {name} it was built from is gone"
    return None


def write_manifest(
    folder: Path, cfg: CourseConfig, step: str, inputs: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """Write ``manifest.json`` for ``step``'s artifact: its inputs (:func:`fingerprint`), the config, versions."""
    manifest = {
        "step": step,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "preset": cfg.preset,
        "inputs": fingerprint(cfg, step) if inputs is None else inputs,
        "config": cfg.to_dict(),
        "versions": versions(),
        **extra,
    }
    (Path(folder) / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    return manifest


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest in ``folder``; None when it is missing, unreadable or not a JSON object."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def stale_reason(cfg: CourseConfig, step: str, folder: Path | None = None) -> str | None:
    """Why ``step``'s artifact cannot be reused (None when it can). The one freshness rule of the course.

    Missing, unreadable, foreign (another step's or an older course's) or incomplete manifests are all "stale",
    never a crash; so are changed input files, changed settings and a rebuilt upstream artifact.
    """
    folder = Path(folder or cfg.artifact_dir(step))
    if not (folder / MANIFEST).is_file():
        return f"no {step} at {folder}"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"its manifest ({folder / MANIFEST}) is unreadable"
    if manifest.get("step") != step:
        return f"its manifest is not a {step} manifest of this course version"
    return difference(manifest.get("inputs"), fingerprint(cfg, step))


def _prebuilt_member(names: Iterable[str], name: str, preset: str) -> str | None:
    """The folder (``[...]/<preset>/<name>`` or ``[...]/<name>``) under which an archive holds ``name``'s manifest."""
    for candidate in ([preset, name], [name]):
        tail = candidate + [MANIFEST]
        for member in names:
            parts = member.strip("/").split("/")
            if parts[-len(tail) :] == tail:
                return "/".join(parts[:-1])
    return None


def hub_repo_id(source: str | os.PathLike[str]) -> str | None:
    """``owner/name`` when ``source`` is ``hf://owner/name`` (also after ``config.resolve_path`` made it
    ``<root>/hf:/owner/name``), else None."""
    text = os.fspath(source)
    if text.startswith(HUB_PREFIX):
        return text[len(HUB_PREFIX) :].strip("/") or None
    parts = Path(text).parts
    if "hf:" in parts:
        return "/".join(parts[parts.index("hf:") + 1 :]) or None
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
        raise FileNotFoundError(
            f"paths.prebuilt points to {source}, which does not exist: fix the path in your config "
            f"or remove paths.prebuilt to build every artifact here."
        )
    if source.is_dir():
        folder = next((source / c / name for c in (preset, ".") if (source / c / name / MANIFEST).is_file()), None)
        if folder is None:
            return False
        with atomic_dir(target) as tmp:
            shutil.copytree(folder, tmp, dirs_exist_ok=True)
    else:
        is_zip = zipfile.is_zipfile(source)
        with zipfile.ZipFile(source) if is_zip else tarfile.open(source) as archive:
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
