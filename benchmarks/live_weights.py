"""Live model weights after every notebook cell, in copies of the preset's model (issue 31).

The notebook tests count them: after each cell, ``conftest.py`` runs ``ragcourse.live_weights`` silently in the
notebook's kernel (the unique storages of every live ``nn.Module``, plus tensors of 1 MiB or more outside them) and
fails a cell that holds more than its notebook's phases of ``memory.phase_plan`` allow. This script runs those tests
in record-only mode, then writes the per-notebook table, with the preset-dependent cells rehearsed on the GPU presets'
tiny same-family models (``nbrun.live_copies_by_path``) and notebook 04's merge self-check at their 16-bit dtype::

    python benchmarks/live_weights.py --run                      # all notebooks on cpu-smoke, then the table
    python benchmarks/live_weights.py --after DIR --before DIR   # a table from recorded runs (one JSON per notebook)

Results: ``benchmarks/results/live_weights_<preset>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
GPU_PRESETS = ("colab-t4", "gpu-24gb", "gpu-80gb")


def run_notebooks(out: Path, preset: str, notebooks: list[str]) -> None:
    """The notebook tests (nbval) with the probe recording into ``out`` and no failing on excess (record mode)."""
    paths = sorted(
        str(p) for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb") if not notebooks or p.name[:2] in notebooks
    )
    env = {
        **os.environ,
        "RAGCOURSE_PRESET": preset,
        "RAGCOURSE_LIVE_WEIGHTS": "record",
        "RAGCOURSE_LIVE_WEIGHTS_DIR": str(out),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    subprocess.run(
        [sys.executable, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider"], cwd=ROOT, env=env, check=False
    )


def load_runs(folder: Path | None) -> dict[str, dict]:
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("[0-9][0-9]_*.json"))}


def _cell_text(notebook: str, cell_id: str | None) -> str:
    path = ROOT / "notebooks" / f"{notebook}.ipynb"
    try:
        cells = json.loads(path.read_text())["cells"]
        src = "".join(next(c for c in cells if c.get("id") == cell_id)["source"])
        return next((line for line in src.splitlines() if line.strip() and not line.startswith("#")), "")[:70]
    except (OSError, StopIteration, KeyError, ValueError):
        return ""


def _inside_cells(run: dict) -> dict:
    """The largest growth of resident memory *inside* a cell (its RSS high-water mark above the RSS before it), in
    copies: where two models coexisted for a moment that no count between cells sees. Not asserted: RSS also holds the
    allocator's cache, mapped checkpoint pages and activations."""
    cells, one = run["cells"], run["one_copy_bytes"]
    growth = [
        (max(0, c.get("peak_rss_bytes", 0) - prev.get("rss_bytes", 0)) / one, c["cell"])
        for prev, c in zip(cells, cells[1:])
        if c.get("peak_rss_bytes") and prev.get("rss_bytes")
    ]
    if not growth:
        return {"inside_cell_peak_copies": None, "inside_cell_peak_cell": None}
    most, cell = max(growth)
    return {"inside_cell_peak_copies": round(most, 2), "inside_cell_peak_cell": cell}


def summarize(run: dict) -> dict:
    cells = run["cells"]
    worst = max(cells, key=lambda c: c["copies"])
    holds = [
        f"{r['module']} {r['bytes'] / run['one_copy_bytes']:.2f}"
        for r in worst["roots"]
        if r["bytes"] >= 0.005 * run["one_copy_bytes"]
    ]
    holds += (
        [f"tensors {worst['large_tensor_bytes'] / run['one_copy_bytes']:.2f}"] if worst["large_tensor_bytes"] else []
    )
    return {
        "worst_copies": round(worst["copies"], 3),
        "worst_cell": worst["cell"],
        "worst_cell_id": worst["cell_id"],
        "worst_first_line": worst.get("first_line") or _cell_text(run["notebook"], worst["cell_id"]),
        "worst_holds": holds,
        "over_plan": worst["copies"] > run["planned_copies"] + 0.1,
        **_inside_cells(run),
        "per_cell": [round(c["copies"], 2) for c in cells],
        "probe_seconds": [round(c["overhead_seconds"], 3) for c in cells],
    }


def rehearsal_rows(workdir: Path) -> tuple[list[dict], list[dict]]:
    import torch

    from ragcourse import nbrun

    torch.set_num_threads(1)
    counts, checks = [], []
    for preset in ("cpu-smoke", *GPU_PRESETS):  # cpu-smoke: its own model, the same cells counted in-process
        counts += nbrun.live_copies_by_path(preset, workdir / preset)
        if preset != "cpu-smoke":
            checks.append(nbrun.rehearse_merge_self_check(preset, workdir / preset))
    return counts, checks


def improvement_rows() -> list[dict]:
    from ragcourse import evaluate
    from ragcourse.config import load_config

    return [{"preset": p, **evaluate.improvement_check(load_config(p)).__dict__} for p in ("cpu-smoke", *GPU_PRESETS)]


def merge_logits_rows() -> list[dict]:
    """Host bytes of the merge check's recorded logits per preset: whole prompts before, CHECK_TOKENS positions now."""
    from ragcourse import memory
    from ragcourse.config import load_config

    rows = []
    for preset in ("cpu-smoke", *GPU_PRESETS):
        cfg = load_config(preset)
        vocab = memory.arch_shapes(cfg.model.name).vocab
        per_position = vocab * 4
        rows.append(
            {
                "preset": preset,
                "vocab": vocab,
                "max_length": cfg.model.max_length,
                "before_gib_per_set": round(memory.CHECK_PROMPTS * cfg.model.max_length * per_position / memory.GIB, 3),
                "after_gib_per_set": round(memory.CHECK_PROMPTS * memory.CHECK_TOKENS * per_position / memory.GIB, 3),
                "planned_gib": round(memory.phase_plan(cfg).phase("merge").parts["check_logits"] / memory.GIB, 3),
            }
        )
    return rows


def write(preset: str, after: dict[str, dict], before: dict[str, dict], counts: list[dict], checks: list[dict]) -> None:
    any_run = next(iter({**before, **after}.values()))
    probe = [s for run in {**before, **after}.values() for s in summarize(run)["probe_seconds"] if s > 0.05]
    result = {
        "preset": preset,
        "model": any_run["model"],
        "one_copy_bytes": any_run["one_copy_bytes"],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "when": time.strftime("%Y-%m-%d"),
        "probe_seconds_per_cell": {
            "median": round(statistics.median(probe), 3),
            "max": round(max(probe), 3),
            "cells": len(probe),
            "total": round(sum(probe), 1),
        },
        "notebooks": [
            {
                "notebook": nb,
                "planned_copies": round((after.get(nb) or before[nb])["planned_copies"], 3),
                "after": summarize(after[nb]) if nb in after else None,
                "before": summarize(before[nb]) if nb in before else None,
            }
            for nb in sorted({*before, *after})
        ],
        "rehearsal": counts,
        "merge_self_check_16bit": checks,
        "merge_check_logits": merge_logits_rows(),
        "tuned_vs_base_checks": improvement_rows(),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"live_weights_{preset}.json").write_text(json.dumps(result, indent=1) + "\n")
    one_mb = result["one_copy_bytes"] / 2**20
    lines = [
        f"# Live model weights per notebook cell — `{preset}`",
        "",
        f"After every cell of the notebook tests, the kernel's live `nn.Module` weights (each storage once) and "
        f"tensors of 1 MiB or more outside them, in copies of the preset's model ({result['model']}, one copy = "
        f"{one_mb:,.0f} MiB in fp32). `planned` is the most the memory plan's phases for that notebook allow "
        f"between cells (`memory.planned_live_bytes`); the notebook tests fail a cell above it (+0.1 copy slack). "
        f"The last column "
        f"is the kernel's resident-memory high-water mark inside a cell above its RSS before the cell, in the same "
        f"units: it sees two models that coexist for a moment inside one cell, but also imports, the allocator's cache "
        f"and activations, so it is a pointer, not a count (not asserted). {result['machine']}, {result['when']}.",
        "",
        "| notebook | planned | before: most copies (cell) | after: most copies (cell) "
        "| what the worst cell holds (after) "
        "| RSS growth inside a cell, most (before → after) |",
        "|---|---:|---|---|---|---|",
    ]

    def inside(summary: dict | None) -> str:
        if not summary or summary["inside_cell_peak_copies"] is None:
            return "–"
        return f"{summary['inside_cell_peak_copies']:.2f} (#{summary['inside_cell_peak_cell']})"

    for row in result["notebooks"]:
        a, b = row["after"], row["before"]
        before_cell = (
            f"{b['worst_copies']:.2f} (#{b['worst_cell']}{', over plan' if b['over_plan'] else ''})"
            if b
            else "not recorded"
        )
        if a is None:  # only the run before the change was recorded
            lines.append(
                f"| {row['notebook']} | {row['planned_copies']:.2f} | {before_cell} `{b['worst_first_line']}` | "
                f"not recorded | {', '.join(b['worst_holds'])} (before) | {inside(b)} → – |"
            )
            continue
        lines.append(
            f"| {row['notebook']} | {row['planned_copies']:.2f} | {before_cell} | {a['worst_copies']:.2f} "
            f"(#{a['worst_cell']} `{a['worst_first_line']}`) | {', '.join(a['worst_holds'])} | "
            f"{inside(b)} → {inside(a)} |"
        )
    lines += ["", "Per cell, copies by code-cell index (after; before where recorded):", ""]
    for row in result["notebooks"]:
        if row["after"]:
            lines.append(f"- {row['notebook']}: " + " ".join(f"{c:.2f}" for c in row["after"]["per_cell"]))
        if row["before"]:
            lines.append(
                ("  - before: " if row["after"] else f"- {row['notebook']} (before): ")
                + " ".join(f"{c:.2f}" for c in row["before"]["per_cell"])
            )
    p = result["probe_seconds_per_cell"]
    lines += [
        "",
        f"Probe overhead: median {p['median']:.2f} s per cell, max {p['max']:.2f} s, {p['total']:.0f} s over "
        f"{p['cells']} cells (a full garbage collection, then one pass over the collector's objects).",
        "",
        "## The preset-dependent cells on the GPU presets' rehearsals (and on cpu-smoke in-process)",
        "",
        "Tiny random-weight models of each preset's family (`nbrun.live_copies_by_path`; cpu-smoke: its own model), "
        "counted as the growth "
        "over what was live before, in copies of the tiny model in fp32; `planned` leaves out the retrieval models "
        "(loaded by none of these cells). Notebook 04's planned figure is large because the check's logits "
        "(128 positions x 151k vocabulary) outweigh a tiny model many times.",
        "",
        "| preset | notebook | cell | copies | planned |",
        "|---|---|---|---:|---:|",
    ]
    lines += [
        f"| {r['preset']} | {r['notebook']} | {r['cell']} | {r['copies']:.2f} | {r['planned_copies']:.2f} |"
        for r in counts
    ]
    lines += [
        "",
        "## Notebook 04's merge self-check at each GPU preset's 16-bit dtype (rehearsal)",
        "",
        "| preset | dtype | max logit difference | tolerance | answers differ | at a near-tie | ok |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {c['preset']} | {c['dtype']} | {c['max_logit_difference']:.4f} | {c['tolerance']:g} | "
        f"{c['answers_differ']}/{c['answers']} | {c['near_ties']} | {'yes' if c['ok'] else 'NO'} |"
        for c in checks
    ]
    lines += [
        "",
        "## The merge check's logits on the host, per preset (4 prompts, fp32)",
        "",
        "| preset | vocabulary | whole prompts of max_length, per set (before) | last 128 positions, per set (after) | "
        "planned (two sets) |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['preset']} | {r['vocab']:,} | {r['before_gib_per_set']:.2f} GiB ({r['max_length']} tokens) | "
        f"{r['after_gib_per_set']:.2f} GiB | {r['planned_gib']:.2f} GiB |"
        for r in result["merge_check_logits"]
    ]
    lines += ["", "## Tuned beats base: asserted or reported, per preset (notebooks 03 and 06)", ""]
    lines += [f"- `{r['preset']}`: {r['reason']}" for r in result["tuned_vs_base_checks"]]
    (RESULTS / f"live_weights_{preset}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-smoke")
    parser.add_argument("--run", action="store_true", help="run the notebook tests first, recording into --after")
    parser.add_argument("--notebooks", nargs="*", default=[], help="two-digit prefixes (default: all)")
    parser.add_argument("--after", type=Path, help="recorded run (default with --run: a temporary folder)")
    parser.add_argument("--before", type=Path, help="a recorded run of the notebooks before a change, for comparison")
    args = parser.parse_args()
    after = args.after or Path(tempfile.mkdtemp(prefix="live-weights-"))
    if args.run:
        run_notebooks(after, args.preset, args.notebooks)
    with tempfile.TemporaryDirectory() as tmp:
        counts, checks = rehearsal_rows(Path(tmp))
    write(args.preset, load_runs(after), load_runs(args.before), counts, checks)


if __name__ == "__main__":
    main()
