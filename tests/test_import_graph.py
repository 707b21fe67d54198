"""The package's imports flow one way: config -> ... -> evaluate -> pipeline/cli (no cycles, nothing reaches back up).

Every import is counted, also those inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ragcourse"

# Lower layers first. A module may import modules of its own layer or below, never above.
LAYERS: list[set[str]] = [
    {"course", "config", "errors", "live_weights"},  # live_weights: the per-cell probe, run in notebook kernels
    {"env", "hardware", "prompts", "plots"},
    {"colab"},  # the Colab setup cell's work: install what Colab lacks, outputs on Drive
    {"scoring", "realdocs"},
    {"models", "artifacts"},
    {"runtime", "hub"},  # the first cell of every notebook (config, environment, seed); artifacts on the Hub
    {"retrieval"},  # the index, retrievers, reranker, retrieval metrics (takes chunks, never loads documents)
    {"data"},  # documents (load, chunk) and the dataset (Q&A, RAFT examples, split)
    {"lora", "memory", "recipe", "rehearsal"},  # LoRA sizing, memory plan, recipe checks, CPU stand-ins of GPU presets
    {"train"},
    {"merge", "export"},  # export: the merged model as GGUF (ragcourse[gguf]); built on request, not by the pipeline
    {"rag", "serve"},  # our model behind LlamaIndex, in-process or behind an OpenAI-compatible server
    {"evaluate"},
    {"pipeline"},
    {"workshop", "nbrun", "prose", "cli"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def package_imports(path: Path) -> set[str]:
    """The ``ragcourse`` modules one file imports, at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                out.add(node.module.split(".")[0])
            elif node.level == 1:
                out.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("ragcourse."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ragcourse."))
    return out - {path.stem}


def graph() -> dict[str, set[str]]:
    return {p.stem: package_imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}


def test_every_module_has_a_layer():
    assert set(graph()) == set(RANK), f"place new modules in LAYERS: {sorted(set(graph()) ^ set(RANK))}"


def test_no_module_imports_upward():
    upward = [
        f"{a} (layer {RANK[a]}) imports {b} (layer {RANK[b]})"
        for a, deps in graph().items()
        for b in deps
        if RANK[b] > RANK[a]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(g.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep) :] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for start in sorted(g):
        if start not in state:
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles}"


def test_importing_the_package_and_its_pipeline_loads_no_torch():
    code = "import sys, ragcourse, ragcourse.pipeline, ragcourse.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_one_function_per_name():
    """A name defined at module level in two modules (``build_index``, ``make_retriever``, ...) means two policies."""
    seen: dict[str, str] = {}
    twice = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("__"):
                if node.name in seen and node.name not in {"main"}:
                    twice.append(f"{node.name}: {seen[node.name]} and {path.stem}")
                seen.setdefault(node.name, path.stem)
    assert not twice, twice
