"""Numbers in prose, generated: each notebook's "Prerequisites" table comes from the presets, the memory plan, the
recipe check and the measured course run, never typed by hand (``ragcourse prose``; ``--check`` runs in the tests).

A generated block sits between ``<!-- generated: NAME -->`` and ``<!-- /generated -->`` in a Markdown cell; running
``ragcourse prose`` rewrites every block from the current code and ``benchmarks/results/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from .config import available_presets, load_config, project_root
from .runtime import course_run

BLOCK = re.compile(r"(<!-- generated: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /generated -->)", re.S)
# The memory-plan phase each notebook runs (notebooks 00–02 load the model and generate, as serving does).
NOTEBOOK_PHASE = {"00": "serving", "01": "serving", "02": "train", "03": "train", "04": "merge", "05": "serving",
                  "06": "evaluation"}


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def prerequisites_table(notebook: str) -> str:
    """The Prerequisites table of one notebook: every preset's hardware, measured time and memory where a course run
    was measured, else the memory plan's peak for the phase the notebook runs (and, for 03, the recipe check)."""
    from .memory import phase_plan

    rows = ["| preset | hardware | this notebook | peak memory |" + (" training steps | validations |" if notebook == "03" else ""),
            "|---|---|---|---|" + ("---|---|" if notebook == "03" else "")]
    for preset in sorted(available_presets(), key=lambda p: (not p.startswith("cpu"), p)):  # cpu-smoke first
        cfg = load_config(preset)
        measured = course_run(preset).get(notebook)
        avx2 = course_run(preset, "avx2").get(notebook)
        if measured and avx2:  # the benchmark machine has AVX-512; the second run holds it to AVX2, like most laptops
            time = (f"{measured['wall_seconds'] / 60:.1f} min with AVX-512, {avx2['wall_seconds'] / 60:.1f} min with "
                    "AVX2 only (measured)")
        elif measured:
            time = f"{measured['wall_seconds'] / 60:.1f} min (measured)"
        if measured:
            memory = f"{measured.get('peak_rss_tree_gib', measured.get('peak_rss_kernel_gib', 0)):.1f} GiB RAM (measured)"
        else:
            time = "not measured yet"
            plan = phase_plan(cfg)
            phases = [p for p in plan.phases if p.phase == NOTEBOOK_PHASE[notebook]
                      or (notebook == "06" and p.phase == "judge")]
            gpu = max(p.gpu_bytes for p in phases)
            host = max(p.host_bytes for p in phases)
            memory = (f"{_gib(gpu)} GPU, {_gib(host)} RAM (planned)" if plan.target.gpu else f"{_gib(host)} RAM (planned)")
        row = f"| `{preset}` | {cfg.expected.hardware} | {time} | {memory} |"
        if notebook == "03":
            from .recipe import check_recipe

            check = check_recipe(cfg, with_synthetic=False)
            row += f" {check.total_steps} | {check.evaluations} |"
        rows.append(row)
    note = ("Measured on the benchmark machine (`benchmarks/course_run.py`); planned figures come from "
            "`ragcourse.memory.phase_plan` (notebook 02).")
    if notebook == "03":
        note += (" Steps and validations: `ragcourse.recipe.check_recipe` on the sample domain's curated pairs "
                 "(notebook 01's synthetic pairs add more).")
    return "\n".join(rows) + "\n\n" + note + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def course_times_table(_: str = "") -> str:
    """docs/instructor.md's run times on ``cpu-smoke``: each notebook in the measured course runs, on both kernel sets,
    with its slowest cell."""
    native, avx2 = course_run("cpu-smoke"), course_run("cpu-smoke", "avx2")
    rows = ["| # | notebook | AVX-512 | AVX2 only | slowest cell (AVX-512) |", "|---|---|---:|---:|---|"]
    for key in sorted(native):
        run = native[key]
        slowest = (run.get("slowest_cells") or [None])[0]
        cell = f"`{slowest['first_line'][:48].strip()}` ({_duration(slowest['seconds'])})" if slowest else ""
        rows.append(f"| {key} | {run['notebook'].removesuffix('.ipynb')[3:].replace('_', ' ')} | {_duration(run['wall_seconds'])} | "
                    f"{_duration(avx2[key]['wall_seconds']) if key in avx2 else 'not measured'} | {cell} |")
    total = sum(r["wall_seconds"] for r in native.values())
    total_avx2 = sum(r["wall_seconds"] for r in avx2.values())
    rows.append(f"| | **all notebooks** | **{total / 60:.1f} min** | **{total_avx2 / 60:.1f} min** | |")
    return "\n".join(rows) + "\n\nMeasured alone on a 2-core CPU (`benchmarks/course_run.py`; AVX2: the same run with the CPU held to AVX2).\n"


GENERATORS: dict[str, Callable[[str], str]] = {"prerequisites": prerequisites_table, "course-times": course_times_table}
DOCS = ("docs/instructor.md",)  # Markdown files with generated blocks, beside the notebooks


def render(text: str, notebook: str) -> str:
    """``text`` with every generated block rewritten."""
    return BLOCK.sub(lambda m: m.group(1) + GENERATORS[m.group("name")](notebook) + m.group(4), text)


def notebook_paths() -> list[Path]:
    return sorted((project_root() / "notebooks").glob("0*.ipynb"))


def regenerate(check: bool = False) -> list[Path]:
    """Rewrite the generated blocks of every notebook and of :data:`DOCS` (``check``: write nothing); returns the
    files that changed."""
    changed = []
    for path in notebook_paths():
        raw = path.read_text(encoding="utf-8")
        nb = json.loads(raw)
        dirty = False
        for cell in nb["cells"]:
            if cell["cell_type"] != "markdown":
                continue
            text = "".join(cell["source"])
            if "<!-- generated:" not in text:
                continue
            new = render(text, path.name[:2])
            if new != text:
                lines = new.split("\n")
                cell["source"] = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
                dirty = True
        if dirty:
            changed.append(path)
            if not check:
                path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    for doc in DOCS:
        path = project_root() / doc
        text = path.read_text(encoding="utf-8")
        new = render(text, "")
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new, encoding="utf-8")
    return changed
