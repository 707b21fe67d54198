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
NOTEBOOK_PHASE = {
    "00": "serving",
    "01": "serving",
    "02": "train",
    "03": "train",
    "04": "merge",
    "05": "serving",
    "06": "evaluation",
}


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def prerequisites_table(notebook: str) -> str:
    """The Prerequisites table of one notebook: every preset's hardware, measured time and memory where a course run
    was measured, else the memory plan's peak for the phase the notebook runs (and, for 03, the recipe check)."""
    from .memory import phase_plan

    rows = [
        "| preset | hardware | this notebook | peak memory |"
        + (" training steps | validations |" if notebook == "03" else ""),
        "|---|---|---|---|" + ("---|---|" if notebook == "03" else ""),
    ]
    for preset in sorted(available_presets(), key=lambda p: (not p.startswith("cpu"), p)):  # cpu-smoke first
        cfg = load_config(preset)
        measured = course_run(preset).get(notebook)
        avx2 = course_run(preset, "avx2").get(notebook)
        if measured and avx2:  # the benchmark machine has AVX-512; the second run holds it to AVX2, like most laptops
            time = (
                f"{measured['wall_seconds'] / 60:.1f} min with AVX-512, {avx2['wall_seconds'] / 60:.1f} min with "
                "AVX2 only (measured)"
            )
        elif measured:
            time = f"{measured['wall_seconds'] / 60:.1f} min (measured)"
        if measured:
            memory = (
                f"{measured.get('peak_rss_tree_gib', measured.get('peak_rss_kernel_gib', 0)):.1f} GiB RAM (measured)"
            )
        else:
            time = "not measured yet"
            plan = phase_plan(cfg)
            phases = [
                p
                for p in plan.phases
                if p.phase == NOTEBOOK_PHASE[notebook] or (notebook == "06" and p.phase == "judge")
            ]
            gpu = max(p.gpu_bytes for p in phases)
            host = max(p.host_bytes for p in phases)
            memory = (
                f"{_gib(gpu)} GPU, {_gib(host)} RAM (planned)" if plan.target.gpu else f"{_gib(host)} RAM (planned)"
            )
        row = f"| `{preset}` | {cfg.expected.hardware} | {time} | {memory} |"
        if notebook == "03":
            from .recipe import check_recipe

            check = check_recipe(cfg, with_synthetic=False)
            row += f" {check.total_steps} | {check.evaluations} |"
        rows.append(row)
    note = (
        "Measured on the benchmark machine (`benchmarks/course_run.py`); planned figures come from "
        "`ragcourse.memory.phase_plan` (notebook 02)."
    )
    if notebook == "03":
        note += (
            " Steps and validations: `ragcourse.recipe.check_recipe` on the sample domain's curated pairs "
            "(notebook 01's synthetic pairs add more)."
        )
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
        rows.append(
            f"| {key} | {run['notebook'].removesuffix('.ipynb')[3:].replace('_', ' ')} | "
            f"{_duration(run['wall_seconds'])} | "
            f"{_duration(avx2[key]['wall_seconds']) if key in avx2 else 'not measured'} | {cell} |"
        )
    total = sum(r["wall_seconds"] for r in native.values())
    total_avx2 = sum(r["wall_seconds"] for r in avx2.values())
    rows.append(f"| | **all notebooks** | **{total / 60:.1f} min** | **{total_avx2 / 60:.1f} min** | |")
    return (
        "\n".join(rows)
        + "\n\nMeasured alone on a 2-core CPU (`benchmarks/course_run.py`; AVX2: the same run with the CPU held to "
        "AVX2).\n"
    )


def _result(name: str) -> dict:
    """One benchmark result (``benchmarks/results/NAME.json``); {} when it was never run."""
    try:
        return json.loads((project_root() / "benchmarks" / "results" / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _day(result: dict) -> str:
    return (result.get("created_at") or "")[:10] or "–"


def benchmark_headlines(_: str = "") -> str:
    """benchmarks/README.md's headline table: one row per benchmark, each number read from its result file, with the
    day it was measured (results of different days ran on different virtual machines)."""
    from .hardware import DEFAULT_GOMP_SPINCOUNT

    rows = ["| what | result | measured | result file |", "|---|---|---|---|"]

    def row(what: str, result: str, data: dict, source: str) -> None:
        rows.append(f"| {what} | {result} | {_day(data)} | `{source}` |")

    native, avx2 = course_run("cpu-smoke"), course_run("cpu-smoke", "avx2")
    if native:
        peak_key, peak = max(
            ((k, r.get("peak_rss_tree_gib") or r.get("peak_rss_kernel_gib") or 0) for k, r in native.items()),
            key=lambda kv: kv[1],
        )
        minutes = sum(r["wall_seconds"] for r in native.values()) / 60
        held = sum(r["wall_seconds"] for r in avx2.values()) / 60 if avx2 else None
        row(
            f"whole course on `cpu-smoke` ({len(native)} notebooks, from scratch)",
            f"**{minutes:.1f} min**"
            + (f", **{held:.1f} min** held to AVX2" if held else "")
            + f"; peak **{peak:.1f} GiB** RSS (notebook {peak_key})",
            _result("course_run_cpu-smoke"),
            "course_run_cpu-smoke{,_avx2}.json",
        )
    tp = _result("training_throughput")
    ratios = {r["comparison"]: r for r in tp.get("ratios", [])}
    one, two = ratios.get("course vs plain (4-bit, 1 thread)"), ratios.get("course vs plain (4-bit, 2 threads)")
    if one:
        row(
            "course's training step vs a plain Hugging Face recipe (4-bit)",
            f"**{one['useful_tok_per_s']:.2f}x** useful tokens/s at 1 thread"
            + (f", {two['useful_tok_per_s']:.2f}x at 2" if two else ""),
            tp,
            "training_throughput.json",
        )
    for comparison, what in (
        (
            "course vs TRL's default fused head on CPU (the fix)",
            "... of which scoring the loss positions only, instead of TRL's fused LM head on CPU",
        ),
        ("padding-free vs course default", "padding-free vs the course's padding (kept off)"),
        ("packing vs course default", "packing vs the course's padding (kept off)"),
        ("fp32 base vs 4-bit (course)", "fp32 base vs 4-bit on CPU (course recipe)"),
        ("2 threads vs 1 (course)", "2 threads vs 1, training on an idle machine"),
    ):
        if comparison in ratios:
            row(what, f"{ratios[comparison]['useful_tok_per_s']:.2f}x useful tokens/s", tp, "training_throughput.json")
    profile = _result("step_profile")
    train = next((r for r in profile.get("modes", {}).get("native", {}).get("rows", []) if r["phase"] == "train"), None)
    if train:
        row(
            "where a `cpu-smoke` training step's time goes (torch profiler)",
            f"matrix products {train['share']['matrix products']:.0%} of {train['s_per_step']:.1f} s, running at "
            f"{train['matmul_efficiency']:.0%} of their speed alone; attention {train['share']['attention']:.0%}, "
            f"4-bit dequantisation {train['share']['4-bit dequantize']:.0%}",
            profile,
            "step_profile.json",
        )
    shared = _result("shared_cpu").get("runs", {})
    ours = shared.get(f"t2-spin-{DEFAULT_GOMP_SPINCOUNT}")
    if ours:
        alone, busy = ours["alone"]["train"]["s_per_step"], ours["busy"]["train"]["s_per_step"]
        row(
            "training step alone / beside a busy process (the default threads and wait)",
            f"{alone:.1f} s / {busy:.1f} s",
            _result("shared_cpu"),
            "shared_cpu.json",
        )
    acc = _result("memory_accuracy").get("summary")
    if acc:
        row(
            f"memory estimator vs measured live peak, {acc['setups_live']} CPU setups",
            f"mean absolute error {acc['mean_abs_error_live_%']:.1f}% (max {acc['max_abs_error_live_%']:.1f}%)",
            _result("memory_accuracy"),
            "memory_accuracy.json",
        )
    quality = _result("retrieval_quality").get("corpora", {})
    try:
        sample = quality["sample"]["preset_chunking"]["sets"]["test"]["summary"]
        real = quality["real-docs"]["preset_chunking"]["sets"]["all"]["summary"]
        row(
            "hybrid vs dense retrieval, hit@5 (sample test split / real docs)",
            f"{sample['hybrid']['hit@5']:.2f} vs {sample['dense']['hit@5']:.2f} / "
            f"{real['hybrid']['hit@5']:.2f} vs {real['dense']['hit@5']:.2f}",
            _result("retrieval_quality"),
            "retrieval_quality.json",
        )
    except KeyError:
        pass
    speed = _result("retrieval_speed")
    if speed.get("stores"):
        stores = sorted(speed["stores"], key=lambda st: st["chunks"])
        sizes = " / ".join(f"{st['chunks'] // 1000}k" for st in stores)
        dense = " / ".join(f"{st['latency']['dense']['p50_ms']:,.0f}" for st in stores)
        bm25 = " / ".join(f"{st['latency']['bm25']['p50_ms']:.1f}" for st in stores)
        row(
            f"query p50, dense in-memory store, {sizes} chunks",
            f"{dense} ms (BM25: {bm25} ms)",
            speed,
            "retrieval_speed.json",
        )
        largest = stores[-1]["chunks"]
        vectors = [v for v in speed.get("vector_stores", []) if v["chunks"] == largest]
        if vectors:
            row(
                f"dense query p50 at {largest // 1000}k chunks: "
                + " / ".join(v["store"] for v in vectors)
                + " vs in-memory",
                " / ".join(f"{v['dense']['p50_ms']:.0f} ms ({v['dense_p50_vs_in_memory']:.2f}x)" for v in vectors)
                + "; same top-k on "
                + " / ".join(f"{v['same_top_k_as_in_memory']:.0%}" for v in vectors)
                + " of queries",
                speed,
                "retrieval_speed.json",
            )
        per_s = speed.get("embedding", {}).get("chunks_per_s", {})
        if per_s:
            row(
                f"MiniLM embedding, {' / '.join(per_s)} threads",
                " / ".join(f"{v:.0f}" for v in per_s.values()) + " chunks/s",
                speed,
                "retrieval_speed.json",
            )
    gpu = _result("gpu_qlora")
    if gpu:
        row("8B QLoRA on a GPU", "see `results/gpu_qlora.md`", gpu, "gpu_qlora.json")
    else:
        rows.append("| 8B QLoRA on a GPU (`gpu_qlora.py`) | not run: no GPU was lent to these sessions | – | – |")
    return "\n".join(rows) + "\n"


# The environments README's "Tested with" table lists: how each is made, and which libraries it shows.
ENVIRONMENT_ROWS = {
    "cpu": ("CPU (`make test`, `make demo`)", "`constraints-cpu.txt`"),
    "colab-twin": (
        "Colab twin (`make colab-twin`)",
        "Colab's snapshot of {snapshot_date} "
        "(`constraints/colab-snapshot.txt`), installed by the notebooks' setup cell; torch is Colab's version "
        "from PyPI (Colab's own `+cu128` build is on PyTorch's index)",
    ),
    "floors": (
        "Floors (`scripts/floors_env.py`)",
        "the lowest versions `pyproject.toml` allows for the direct dependencies",
    ),
}
TABLE_PACKAGES = (
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "sentence-transformers",
    "llama-index-core",
    "ragas",
    "numpy",
    "pandas",
)


def tested_with_table(_: str = "") -> str:
    """README's "Tested with" table: one row per environment that ran the tests, read from
    ``benchmarks/results/tested_with.json`` (``scripts/record_environment.py`` writes it after a run)."""
    runs = _result("tested_with")
    rows = [
        "| environment | Python | torch | the rest | what ran (passed, time, day) | where it comes from |",
        "|---|---|---|---|---|---|",
    ]
    for name, (label, source) in ENVIRONMENT_ROWS.items():
        run = runs.get(name)
        if run is None:
            rows.append(f"| {label} | – | – | – | not run yet | {source.format(snapshot_date='–')} |")
            continue
        v = run["versions"]
        rest = ", ".join(f"{p} {v[p]}" for p in TABLE_PACKAGES if v.get(p, "not installed") != "not installed")
        rows.append(
            f"| {label} | {v['python']} | {v['torch']} | {rest} | {run['ran']}: {run['passed']} passed, "
            f"{_duration(run['seconds'])}, {run['recorded']} | "
            f"{source.format(snapshot_date=run.get('snapshot_date', '–'))} |"
        )
    return "\n".join(rows) + "\n"


def gguf_export_sentence(_: str = "") -> str:
    """README's GGUF export figures, from ``benchmarks/results/gguf_export.json`` (``benchmarks/gguf_export.py``)."""
    r = _result("gguf_export")
    if not r:
        return "Not measured yet: `python benchmarks/gguf_export.py --build` writes the figures.\n"
    b, mb, cmp = r["build"], r["file_mb"], r["compare"]
    files = ", ".join(f"{mb[f'model-{q}.gguf']:.0f} MB as {q}" for q in ("f16", "q8_0", "q4_k_m"))
    same = ", ".join(f"{c['identical']} of {c['answers']} ({q})" for q, c in cmp.items())
    return (
        f"Measured {r['recorded']} on {b['cores']} cores: building llama-cpp-python {r['llama_cpp_python']} from its "
        f"source distribution took {b['wall_seconds'] / 60:.1f} min ({b['jobs']} parallel jobs, "
        f"{b['cpu_seconds'] / 60:.1f} CPU-min; wheel {b['wheel_mb']:.0f} MB). The {r['preset']} merged model "
        f"({r['merged_mb']:.0f} MB of fp32 safetensors) is {files}; llama.cpp's greedy answers to {r['preset']}'s "
        f"test prompts equal transformers' in {same}.\n"
    )


GENERATORS: dict[str, Callable[[str], str]] = {
    "prerequisites": prerequisites_table,
    "course-times": course_times_table,
    "benchmark-headlines": benchmark_headlines,
    "tested-with": tested_with_table,
    "gguf-export": gguf_export_sentence,
}
DOCS = (
    "docs/instructor.md",
    "benchmarks/README.md",
    "README.md",
)  # Markdown files with generated blocks, beside the notebooks


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
