"""What the first cells of every notebook do: config, environment, seed, versions (notebook 00)."""

from __future__ import annotations

import json
from typing import Any

from .config import CourseConfig, load_config, print_config, project_root
from .env import needs_network, prepare_environment, versions  # noqa: F401  (versions: runtime.versions() in benchmarks)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (``transformers.set_seed``), so reruns give the same numbers."""
    from transformers import set_seed

    set_seed(seed)


def start(
    preset: str | None = None,
    user_config: str | None = None,
    quiet: bool = False,
    writes: bool = True,
    loads_model: bool = True,
    **overrides: Any,
) -> CourseConfig:
    """Load the config, set the offline/no-telemetry environment, seed, and print what this run uses.

    Without a preset (argument, ``$RAGCOURSE_PRESET`` or ``preset:`` in the user YAML) the preset is
    picked from the hardware: ``cpu-smoke`` without a GPU (with a line saying why when an NVIDIA driver is there but
    torch cannot use it), else by GPU memory. When the run ``loads_model`` (trains, merges, answers or judges with the
    preset's model), a GPU preset on a runtime without a usable GPU stops here with the reason
    (``hardware.check_preset_hardware``); commands that only print, index or copy artifacts pass ``False``. When the
    run ``writes`` artifacts, the output folder is probed first (a read-only one fails now, not after the work) and the
    temporary folders of killed runs are removed.
    """
    from .artifacts import check_writable, clean_stale_temps
    from .hardware import auto_preset, check_preset_hardware, cpu_fallback_note, detect_hardware

    hw = detect_hardware()
    picked = auto_preset(hw)
    cfg = load_config(preset, user_config, fallback=picked, **overrides)
    note = cpu_fallback_note(hw) if cfg.preset == picked else None  # cpu-smoke although a driver is there
    if note:
        print(note)
    if loads_model:
        check_preset_hardware(cfg.preset, cfg.expected.needs_cuda, hw)
    if writes:
        check_writable(cfg.output_dir)
        clean_stale_temps(cfg.output_dir)
    prepare_environment(offline=not needs_network(cfg.model.name, cfg.embedding.name))
    from . import hardware

    threads = cfg.training.torch_threads or hardware.DEFAULT_TORCH_THREADS
    if threads:
        hardware.set_torch_threads(threads)
    seed_everything(cfg.training.seed)
    if not quiet:
        print_config(cfg)
    return cfg


def tested_with() -> str:
    """The "tested with" line printed at the end of every notebook."""
    return "Tested with " + ", ".join(f"{k} {v}" for k, v in versions().items())


def course_run(preset: str, isa: str = "native") -> dict[str, dict[str, Any]]:
    """The measured whole-course run of ``benchmarks/course_run.py`` (``benchmarks/results/course_run_<preset>.json``;
    ``isa="avx2"``: the run with the CPU held to AVX2, ``..._avx2.json``): each notebook that ran (key ``"03"``) with
    its wall time and peak memory; {} when the preset was never measured so."""
    suffix = "" if isa == "native" else f"_{isa}"
    path = project_root() / "benchmarks" / "results" / f"course_run_{preset}{suffix}.json"
    try:
        runs = json.loads(path.read_text(encoding="utf-8"))["notebooks"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {r["notebook"][:2]: r for r in runs if r.get("ok")}
