"""Run the course notebooks top to bottom in fresh kernels (the README's main command)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .config import project_root
from .course import notebook_files


@dataclass
class NotebookRun:
    notebook: str
    seconds: float
    ok: bool
    error: str | None
    output: Path


def run_notebook(path: Path, out_dir: Path, preset: str, timeout: int = 1800) -> NotebookRun:
    """Execute one notebook in a fresh kernel with ``RAGCOURSE_PRESET`` set; save the executed copy."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    os.environ["RAGCOURSE_PRESET"] = preset  # the kernel inherits this process's environment
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).splitlines()[-1] if str(exc) else repr(exc)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    nbformat.write(nb, output)
    return NotebookRun(path.name, seconds, error is None, error, output)


def run_all(preset: str = "cpu-smoke", names: list[str] | None = None, out_dir: Path | None = None) -> list[NotebookRun]:
    """Run every course notebook (or those in ``names``) in order; stop at the first failure."""
    root = project_root()
    out_dir = out_dir or root / "outputs" / preset / "notebooks"
    runs = []
    for path in notebook_files(root):
        if names and path.stem not in names and path.name not in names:
            continue
        run = run_notebook(path, out_dir, preset)
        runs.append(run)
        status = "ok" if run.ok else f"FAILED: {run.error}"
        print(f"{run.notebook:32s} {run.seconds:7.1f} s  {status}", flush=True)
        if not run.ok:
            print(f"  executed copy with the error: {run.output}")
            break
    return runs
