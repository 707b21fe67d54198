"""GGUF export of the cpu-smoke merged model: build time of ragcourse[gguf], file sizes, llama.cpp vs transformers
(issue 32, item 2; notebook 04, section 6; ``ragcourse export --format gguf``).

1. ``--build``: the source distribution of llama-cpp-python (the one ``make gguf`` keeps) built into a wheel with the
   Makefile's flags (``GGUF_CMAKE_ARGS``), timed: what a first ``make gguf`` costs before the wheel is kept.
2. The trained cpu-smoke adapter (``--adapter``, default ``outputs/cpu-smoke/adapter``, with its dataset) merged by
   ``merge.build_merged`` into a temporary output folder, then ``export.build_gguf`` (f16 + q8_0 from the converter)
   and ``q4_k_m`` from llama.cpp's quantizer; sizes read from the files.
3. ``export.compare_greedy`` on the dataset's test prompts (``merge.check_prompts``): transformers' greedy answers
   against llama.cpp's for each file.

    python benchmarks/gguf_export.py --build        # needs ragcourse[gguf] (make gguf); run it alone on the machine
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's ragcourse

import ragcourse  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)

RESULTS = HERE / "results"
PRESET = "cpu-smoke"


def makefile_cmake_args() -> str:
    """The Makefile's GGUF_CMAKE_ARGS (one source for the build flags)."""
    text = (HERE.parent / "Makefile").read_text().replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.startswith("GGUF_CMAKE_ARGS"))
    return " ".join(line.split("?=", 1)[1].split())


def build_wheel(sdist: Path, jobs: int) -> dict:
    """pip wheel of the sdist with the Makefile's flags into a temporary folder: wall and CPU seconds, wheel size."""
    cmake_args = makefile_cmake_args()
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "CMAKE_BUILD_PARALLEL_LEVEL": str(jobs)}
    with tempfile.TemporaryDirectory() as out:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, str(sdist)], env=env, check=True
        )
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        wheel = next(Path(out).glob("*.whl"))
        return {
            "wall_seconds": round(wall, 1),
            "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
            "jobs": jobs,
            "cores": os.cpu_count(),
            "cmake_args": cmake_args,
            "sdist": sdist.name,
            "sdist_mb": round(sdist.stat().st_size / 2**20, 1),
            "wheel": wheel.name,
            "wheel_mb": round(wheel.stat().st_size / 2**20, 1),
        }


def timed_build(log: Path, wheel: Path, jobs: int) -> dict:
    """The same build, timed earlier by ``/usr/bin/time -v`` (``--build-time-log``): its wall and CPU seconds."""
    text = log.read_text()

    def field(name: str) -> str:
        return next(line.split(": ", 1)[1] for line in text.splitlines() if line.strip().startswith(name))

    minutes, seconds = field("Elapsed (wall clock) time").rsplit(":", 1)
    return {
        "wall_seconds": round(int(minutes.split(":")[-1]) * 60 + float(seconds), 1),
        "cpu_seconds": round(float(field("User time (seconds)")) + float(field("System time (seconds)")), 1),
        "jobs": jobs,
        "cores": os.cpu_count(),
        "cmake_args": makefile_cmake_args(),
        "wheel": wheel.name,
        "wheel_mb": round(wheel.stat().st_size / 2**20, 1),
        "timed_by": "/usr/bin/time -v pip wheel (log given with --build-time-log)",
    }


def summary(rows: list[dict]) -> dict:
    return {
        "answers": len(rows),
        "identical": sum(r["identical"] for r in rows),
        "same_tokenization": sum(r["same_tokenization"] for r in rows),
        "max_first_step_logit_difference": round(max(r["first_step_max_logit_difference"] for r in rows), 4),
        "differences": [
            {
                "first_difference": r["first_difference"],
                "margin": r["margin_at_difference"],
                "transformers": r["transformers"],
                "llama_cpp": r["llama_cpp"],
            }
            for r in rows
            if not r["identical"]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true", help="also time the wheel build from the kept sdist")
    parser.add_argument("--jobs", type=int, default=2, help="CMAKE_BUILD_PARALLEL_LEVEL for --build (default 2)")
    parser.add_argument("--build-time-log", help="instead of --build: a `/usr/bin/time -v` log of the same build")
    parser.add_argument("--adapter", default=str(HERE.parent / "outputs" / PRESET / "adapter"))
    parser.add_argument("--prompts", type=int, default=8, help="test prompts compared (default 8)")
    parser.add_argument("--out", default=str(RESULTS / "gguf_export.json"))
    args = parser.parse_args()

    from ragcourse import export, merge
    from ragcourse.config import load_config

    result: dict = {
        "recorded": time.strftime("%Y-%m-%d"),
        "preset": PRESET,
        "llama_cpp_python": export.llama_cpp_version(),
        "threads": int(os.environ.get("OMP_NUM_THREADS", 0)),
    }
    if args.build:
        version = export.llama_cpp_version()
        result["build"] = build_wheel(export.sdist_cache() / f"llama_cpp_python-{version}.tar.gz", args.jobs)
        print("build:", result["build"], flush=True)
    elif args.build_time_log:
        version = export.llama_cpp_version()
        wheel = next(export.sdist_cache().glob(f"llama_cpp_python-{version}-*.whl"))
        result["build"] = timed_build(Path(args.build_time_log), wheel, args.jobs)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        adapter = Path(args.adapter)
        for step in ("adapter", "dataset"):
            shutil.copytree(adapter.parent / step, root / PRESET / step)
        cfg = load_config(PRESET, paths={"output_root": str(root)})
        t0 = time.perf_counter()
        merge.build_merged(cfg)
        result["merge_seconds"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        folder = export.build_gguf(cfg, "q8_0")
        result["export_seconds"] = round(time.perf_counter() - t0, 1)  # two converter runs (f16, q8_0) + Modelfile
        t0 = time.perf_counter()
        export.quantize(folder / export.gguf_name("f16"), folder / export.gguf_name("q4_k_m"), "q4_k_m")
        result["q4_k_m_seconds"] = round(time.perf_counter() - t0, 1)
        result["merged_mb"] = round(merge.folder_mb(cfg.artifact_dir("merged")), 1)
        result["file_mb"] = {name: round(mb, 1) for name, mb in export.file_mb(folder).items()}
        result["modelfile"] = (folder / "Modelfile").read_text()

        model, tokenizer = merge.load_merged(cfg)
        texts = merge.check_prompts(cfg, tokenizer, n=args.prompts)
        result["max_new_tokens"] = cfg.model.max_new_tokens
        result["compare"] = {}
        for quant in ("f16", "q8_0", "q4_k_m"):
            t0 = time.perf_counter()
            rows = export.compare_greedy(
                model, tokenizer, folder / export.gguf_name(quant), texts, cfg.model.max_new_tokens
            )
            result["compare"][quant] = {**summary(rows), "seconds": round(time.perf_counter() - t0, 1)}
            print(quant, {k: v for k, v in result["compare"][quant].items() if k != "differences"}, flush=True)
        result["example"] = {"transformers": rows[0]["transformers"], "llama_cpp_q4_k_m": rows[0]["llama_cpp"]}

    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
