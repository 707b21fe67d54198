"""Wall time and peak memory of every course notebook on a preset (issue 9): the whole course, as a learner runs it.

Two modes:

* default: execute each notebook top to bottom in a fresh kernel (nbclient, as ``ragcourse notebooks`` does, with
  ``RAGCOURSE_PRESET`` set) and, every 0.5 s, sample the resident memory of the kernel and everything it starts
  (psutil). Per notebook: wall seconds (kernel start to shutdown), the sum of the cells' own times, the slowest cells,
  the kernel's peak RSS (its ``VmHWM``, exact on Linux) and the peak of the whole process tree (sampled);
* ``--from-executed``: nothing runs; read the executed copies ``ragcourse notebooks`` wrote to
  ``outputs/<preset>/notebooks/`` and report the times nbclient recorded in each cell's metadata. Those copies hold
  no memory figures (``ragcourse.nbrun`` measures none), so peak memory stays empty in this mode.

Run it when nothing else uses the machine: another process on the same cores makes training steps many times slower.

    python benchmarks/course_run.py                      # all notebooks on cpu-smoke (expected.total_minutes)
    python benchmarks/course_run.py --from-executed      # times of the last `ragcourse notebooks` run
    python benchmarks/course_run.py --only 00_setup --output-root /tmp/course_run --results /tmp/course_run.json
    python benchmarks/course_run.py --isa avx2 --output-root /tmp/course_run_avx2   # as if the CPU had no AVX-512

``--isa avx2`` starts the kernels with torch, oneMKL, oneDNN and bitsandbytes held to AVX2 (``cpu_common.py`` says
how) and writes ``course_run_<preset>_avx2.*``.

Notebooks write their artifacts under ``paths.output_root`` (``outputs/``); ``--output-root`` points them elsewhere
(through a user config in ``RAGCOURSE_CONFIG``), so a measurement need not touch the artifacts you work with.

Writes benchmarks/results/course_run_<preset>.json and .md (``..._from_executed`` with ``--from-executed``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GIB = 2**30
SAMPLE_SECONDS = 0.5


# -- memory sampling ------------------------------------------------------------------------------------------------


def _vm_hwm(pid: int) -> int | None:
    """A process's peak resident memory so far (Linux ``VmHWM``), or None where /proc has no such line."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class TreeSampler:
    """Sample the resident memory of this process's descendants (the kernel and what it starts) in a thread."""

    def __init__(self, interval: float = SAMPLE_SECONDS):
        self.interval = interval
        self.peak_tree = 0  # largest sum of RSS over all descendants at one sample
        self.peak_process: dict[int, dict[str, Any]] = {}  # pid -> name, peak RSS (VmHWM where available)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            self.sample(me)
            self._stop.wait(self.interval)

    def sample(self, me: Any) -> None:
        import psutil

        total = 0
        for child in me.children(recursive=True):
            try:
                rss = child.memory_info().rss
                name = " ".join(child.cmdline()[:3])[:120]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            hwm = _vm_hwm(child.pid)
            peak = max(rss, hwm or 0)
            entry = self.peak_process.setdefault(child.pid, {"name": name, "peak_rss_bytes": 0, "hwm": hwm is not None})
            entry["peak_rss_bytes"] = max(entry["peak_rss_bytes"], peak)
        self.peak_tree = max(self.peak_tree, total)
        self.samples += 1


# -- cell times -----------------------------------------------------------------------------------------------------


def _ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def cell_times(nb: Any) -> list[dict[str, Any]]:
    """Seconds per executed code cell from nbclient's ``metadata.execution`` timestamps (execute_input → reply)."""
    out = []
    for index, cell in enumerate(nb.cells):
        meta = cell.get("metadata", {}).get("execution", {})
        if cell.get("cell_type") != "code" or "iopub.execute_input" not in meta or "shell.execute_reply" not in meta:
            continue
        seconds = (_ts(meta["shell.execute_reply"]) - _ts(meta["iopub.execute_input"])).total_seconds()
        source = cell.get("source", "")
        first = next((line for line in source.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
        out.append(
            {
                "index": index,
                "seconds": round(seconds, 2),
                "start": meta["iopub.execute_input"],
                "end": meta["shell.execute_reply"],
                "first_line": first.strip()[:80],
            }
        )
    return out


def summarize_cells(times: list[dict[str, Any]], top: int = 3) -> dict[str, Any]:
    if not times:
        return {"cells_executed": 0, "cells_seconds": 0.0, "span_seconds": None, "slowest_cells": []}
    span = (_ts(times[-1]["end"]) - _ts(times[0]["start"])).total_seconds()
    slowest = sorted(times, key=lambda t: -t["seconds"])[:top]
    return {
        "cells_executed": len(times),
        "cells_seconds": round(sum(t["seconds"] for t in times), 1),
        "span_seconds": round(span, 1),
        "slowest_cells": [{k: t[k] for k in ("index", "seconds", "first_line")} for t in slowest],
    }


def _errors(nb: Any) -> str | None:
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if output.get("output_type") == "error":
                return f"{output.get('ename')}: {output.get('evalue')}"[:300]
    return None


# -- the two modes --------------------------------------------------------------------------------------------------


def run_notebook(path: Path, out_dir: Path, timeout: int) -> dict[str, Any]:
    """Execute one notebook in a fresh kernel, sampling the kernel's memory; save the executed copy in ``out_dir``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    error = None
    start = time.perf_counter()
    with TreeSampler() as sampler:
        try:
            client.execute()
        except CellExecutionError as exc:
            error = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / path.name)
    kernel = max(sampler.peak_process.values(), key=lambda p: p["peak_rss_bytes"], default=None)
    return {
        "notebook": path.name,
        "ok": error is None,
        "error": error,
        "wall_seconds": round(seconds, 1),
        **summarize_cells(cell_times(nb)),
        "peak_rss_kernel_gib": round(kernel["peak_rss_bytes"] / GIB, 3) if kernel else None,
        "peak_rss_kernel_exact": bool(kernel and kernel["hwm"]),
        "peak_rss_tree_gib": round(sampler.peak_tree / GIB, 3),
        "processes_seen": len(sampler.peak_process),
        "memory_samples": sampler.samples,
        "executed_copy": str(out_dir / path.name),
    }


def read_executed(path: Path) -> dict[str, Any]:
    """Times nbclient recorded in an executed copy; no memory figures exist there."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    times = cell_times(nb)
    summary = summarize_cells(times)
    error = _errors(nb)
    # A copy saved after a failure holds the cells up to the failing one; `ragcourse notebooks` then stops.
    return {
        "notebook": path.name,
        "ok": error is None and summary["cells_executed"] > 0,
        "error": error,
        "wall_seconds": summary["span_seconds"],
        **summary,
        "peak_rss_kernel_gib": None,
        "peak_rss_tree_gib": None,
        "executed_at": times[0]["start"] if times else None,
        "executed_copy": str(path),
    }


def markdown(result: dict[str, Any]) -> str:
    rows = result["notebooks"]
    measured = result["mode"] == "measured"
    isa = "" if result.get("isa", "native") == "native" else f"; instruction sets held to {result['isa'].upper()}"
    lines = [
        f"Course run on `{result['preset']}` ({result['mode']}; {result['machine']}{isa}; {result['created_at']}).",
        "",
        "| notebook | ok | wall s | cells s | peak RSS kernel GiB | peak RSS tree GiB | slowest cell (s) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]

    def fmt(v: Any, f: str) -> str:
        return "n/a" if v is None else format(v, f)

    for r in rows:
        slow = r["slowest_cells"][0] if r["slowest_cells"] else None
        slow_txt = f"#{slow['index']} `{slow['first_line'][:50]}` ({slow['seconds']:.0f})" if slow else ""
        lines.append(
            f"| {r['notebook']} | {'yes' if r['ok'] else 'NO: ' + str(r['error'])[:60]} | "
            f"{fmt(r['wall_seconds'], '.0f')} | {fmt(r['cells_seconds'], '.0f')} | "
            f"{fmt(r['peak_rss_kernel_gib'], '.2f')} | {fmt(r['peak_rss_tree_gib'], '.2f')} | {slow_txt} |"
        )
    total = sum(r["wall_seconds"] or 0 for r in rows)
    peak = max((r["peak_rss_tree_gib"] or 0 for r in rows), default=0)
    lines += [
        "",
        f"Total: {total / 60:.1f} min"
        + (
            f", highest peak {peak:.2f} GiB"
            if measured
            else "; peak memory is not recorded in executed copies (run without --from-executed)"
        ),
    ]
    if result.get("expected"):
        e = result["expected"]
        lines.append(f"The preset promises about {e['total_minutes']:g} min and {e['peak_memory_gb']:g} GB peak.")
    return "\n".join(lines) + "\n"


def cpu_model() -> str:
    """The CPU's name (Linux /proc/cpuinfo): runs on different virtual machines differ by more than their code."""
    from cpu_common import cpu_record

    return cpu_record()["model"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=os.environ.get("RAGCOURSE_PRESET", "cpu-smoke"))
    parser.add_argument(
        "--from-executed",
        action="store_true",
        help="read outputs/<preset>/notebooks/*.ipynb instead of running (times only)",
    )
    parser.add_argument("--only", nargs="*", help="notebook names (00_setup or 00_setup.ipynb); default: all")
    parser.add_argument(
        "--output-root", help="artifact root the notebooks use (via a user config; default: the preset's)"
    )
    parser.add_argument(
        "--executed-dir", help="where executed copies go / are read (default: outputs/<preset>/notebooks)"
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    parser.add_argument(
        "--results", help="JSON path (default: benchmarks/results/course_run_<preset>[_from_executed].json)"
    )
    parser.add_argument("--keep-going", action="store_true", help="run the next notebooks after a failure")
    parser.add_argument(
        "--isa",
        choices=("native", "avx2"),
        default="native",
        help="avx2: run the kernels as on a CPU without AVX-512 (see cpu_common.py)",
    )
    args = parser.parse_args()

    from ragcourse import runtime
    from ragcourse.config import load_config, project_root
    from ragcourse.course import notebook_files

    root = project_root()
    cfg = load_config(args.preset)
    executed_dir = Path(args.executed_dir) if args.executed_dir else root / "outputs" / args.preset / "notebooks"
    wanted = {n.removesuffix(".ipynb") for n in args.only or []}
    rows: list[dict[str, Any]] = []
    if args.from_executed:
        paths = sorted(executed_dir.glob("[0-9][0-9]_*.ipynb"))
        paths = [p for p in paths if not wanted or p.stem in wanted]
        if not paths:
            print(f"no executed notebooks in {executed_dir}: run `ragcourse notebooks` first", file=sys.stderr)
            return 1
        for path in paths:
            rows.append(read_executed(path))
    else:
        os.environ["RAGCOURSE_PRESET"] = args.preset  # the kernels inherit this process's environment
        if args.isa != "native":
            from cpu_common import mode_env

            os.environ.update(mode_env(args.isa))
        if args.output_root:
            user = Path(tempfile.mkdtemp(prefix="course_run-")) / "user.yaml"
            user.write_text(f"paths:\n  output_root: {json.dumps(str(Path(args.output_root).resolve()))}\n")
            os.environ["RAGCOURSE_CONFIG"] = str(user)
        for path in notebook_files(root):
            if wanted and path.stem not in wanted:
                continue
            row = run_notebook(path, executed_dir, args.timeout)
            rows.append(row)
            print(
                f"{row['notebook']:28s} {row['wall_seconds']:7.1f} s  kernel peak {row['peak_rss_kernel_gib']} GiB  "
                f"tree peak {row['peak_rss_tree_gib']} GiB  {'ok' if row['ok'] else 'FAILED: ' + str(row['error'])}",
                flush=True,
            )
            if not row["ok"] and not args.keep_going:
                break
    result = {
        "preset": args.preset,
        "mode": "from executed copies" if args.from_executed else "measured",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu_model()}",
        "sample_seconds": SAMPLE_SECONDS,
        "expected": {"total_minutes": cfg.expected.total_minutes, "peak_memory_gb": cfg.expected.peak_memory_gb},
        "output_root": args.output_root,
        "executed_dir": str(executed_dir),
        "isa": args.isa,
        "notebooks": rows,
        "total_wall_seconds": round(sum(r["wall_seconds"] or 0 for r in rows), 1),
        "versions": runtime.versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    suffix = ("_from_executed" if args.from_executed else "") + ("" if args.isa == "native" else f"_{args.isa}")
    out = Path(args.results) if args.results else HERE / "results" / f"course_run_{args.preset}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"written to {out} and {out.with_suffix('.md')}")
    return 0 if rows and all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
