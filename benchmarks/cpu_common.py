"""What ``cpu_phases.py`` and ``shared_cpu.py`` share (issue 20): the forced-AVX2 mode, fresh-process workers, the
record of the machine, and a generation of fixed length.

**Forcing AVX2 on an AVX-512 machine takes more than ``ATEN_CPU_CAPABILITY``.** That variable picks ATen's own
vectorised kernels (element-wise ops, softmax, norms) only. The matrix products, where most of the time goes, come from
two other libraries that dispatch on the CPU themselves: oneMKL for fp32 (``MKL_ENABLE_INSTRUCTIONS=AVX2``) and oneDNN
for bf16 (``ONEDNN_MAX_CPU_ISA=AVX2``). The avx2 mode sets all three.

**bitsandbytes has no such switch.** Its CPU library (0.50) dequantizes 4-bit weights with an AVX-512 loop when
``__builtin_cpu_supports("avx512f")`` says so, and with a scalar loop otherwise (``csrc/cpu_ops.cpp``,
``dequantizeBlockwise4bitCpu``); no environment variable changes that answer. The same scalar loop also runs when a
row's length is not a multiple of 16, so the avx2 mode calls the library with the same weights viewed as rows of 2
values: the scalar path of an AVX2 laptop, bit for bit the same result. ``avx2_site/sitecustomize.py`` does that in
every process started with the mode's environment (it puts that folder on ``PYTHONPATH``), notebook kernels included
(``course_run.py --isa avx2``). (bitsandbytes' other CPU choices follow torch:
``torch.backends.cpu.get_cpu_capability()`` for the int8 matmul, ``has_avx512bf16()`` (CPUID) for the packed
inference layout, which the course switches off anyway: ``models.disable_cpu_inference_repack``.)

What the mode cannot imitate: another chip's clock, caches and memory bandwidth, and oneMKL's choice of kernels on an
AMD CPU. Read its numbers as "this machine without its AVX-512", not as a given laptop.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's ragcourse, also where another one is installed (a worktree)
from avx2_site.sitecustomize import BNB_DEQUANT, BNB_SCALAR_ENV  # noqa: E402

RESULTS = HERE / "results"
# The dataset and trainer folders (shared with training_throughput.py), not outputs/.
BENCH_ROOT = os.environ.get("RAGCOURSE_BENCH_ROOT", "/tmp/bench_out")

AVX2_ENV = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
MODES: dict[str, dict[str, str]] = {"native": {}, "avx2": {**AVX2_ENV, BNB_SCALAR_ENV: "1"}}
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_bf16",
    "avx_vnni",
)


# -- the forced-AVX2 mode -----------------------------------------------------------------------------------------


AVX2_SITE = HERE / "avx2_site"  # its sitecustomize.py switches bitsandbytes to the scalar loop in every new process


def apply_mode() -> str:
    """In a worker: the mode this process was started in (its environment did the rest)."""
    if os.environ.get(BNB_SCALAR_ENV) == "1":
        from bitsandbytes.cextension import lib

        if not all(getattr(getattr(lib, name), "scalar", False) for name in BNB_DEQUANT):
            raise RuntimeError(f"{AVX2_SITE}/sitecustomize.py did not run: is it on PYTHONPATH?")
        return "avx2"
    return "native"


def mode_env(mode: str, extra: dict[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment with ``mode``'s variables (and none of the other mode's), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in AVX2_ENV and k != BNB_SCALAR_ENV and k not in drop}
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p) != AVX2_SITE]
    if mode == "avx2":
        paths.insert(0, str(AVX2_SITE))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return {**env, **MODES[mode], **(extra or {})}


# -- fresh processes ----------------------------------------------------------------------------------------------


def run_worker(script: Path, args: Sequence[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Run ``script --worker-out FILE args`` in a fresh interpreter with ``env``; its JSON result, or an error."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, str(script), "--worker-out", str(out), *args],
                env=env,
                timeout=timeout,
                cwd=HERE.parent,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if proc.returncode != 0 or not out.is_file():
            return {"error": f"worker exited with code {proc.returncode}"}
        result = json.loads(out.read_text())
        result["process_wall_s"] = round(time.perf_counter() - start, 1)
        return result


def write_worker_result(path: str, result: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def write_results(
    result: dict[str, Any], json_path: Path, markdown: Callable[[dict[str, Any]], str], final: bool = False
) -> None:
    """The JSON, and the markdown made from it (after every run, so an interrupted benchmark keeps what it had)."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    text = markdown(result)
    json_path.with_suffix(".md").write_text(text, encoding="utf-8")
    if final:
        print(text)
        print(f"{result.get('total_s', 0):.0f} s; written to {json_path} and {json_path.with_suffix('.md')}")


def parse_or_serve(
    parser: Any, worker: Callable[[Any], dict[str, Any]], json_path: Path, markdown: Callable[[dict[str, Any]], str]
) -> Any:
    """Parse a mode-comparing benchmark's arguments, adding ``--markdown-only`` (rewrite the .md from the .json) and
    the hidden ``--worker-out`` (run one mode's worker in this process). Returns the arguments, or None when one of
    those two has already done the work."""
    import argparse

    parser.add_argument("--markdown-only", action="store_true", help="rewrite the .md from the .json, run nothing")
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker_out:
        write_worker_result(args.worker_out, worker(args))
        return None
    if args.markdown_only:
        json_path.with_suffix(".md").write_text(markdown(json.loads(json_path.read_text())), encoding="utf-8")
        return None
    return args


def bench_config() -> Any:
    """The cpu-smoke config writing under :data:`BENCH_ROOT`, its dataset built once before anything is timed."""
    from ragcourse import pipeline, runtime

    cfg = runtime.start("cpu-smoke", quiet=True, paths={"output_root": BENCH_ROOT})
    pipeline.ensure(cfg, "dataset", quiet=True)
    return cfg


def run_modes(
    script: Path,
    result: dict[str, Any],
    modes: Sequence[str],
    json_path: Path,
    markdown: Callable[[dict[str, Any]], str],
    started: float,
    probe: bool = False,
) -> None:
    """Run ``script``'s worker once per mode, each in a fresh process with that mode's environment and the same
    arguments, alone on the machine (its busy share recorded first); write the results after each mode."""
    forwarded = [a for a in sys.argv[1:] if a != "--markdown-only"]
    for mode in modes:
        if probe:
            result.setdefault("isa", {})[mode] = isa_probe(mode)
        result.setdefault("busy_percent_before", {})[mode] = machine_busy()
        isa = f"{result['isa'][mode]}, " if probe else ""
        print(f"== {mode}: {isa}CPU {result['busy_percent_before'][mode]}% busy", flush=True)
        result.setdefault("modes", {})[mode] = run_worker(script, forwarded, mode_env(mode), timeout=1800)
        if "error" in result["modes"][mode]:
            sys.exit(f"{mode}: {result['modes'][mode]['error']}")
        write_results(result, json_path, markdown)
    result["total_s"] = round(time.perf_counter() - started, 1)
    write_results(result, json_path, markdown, final=True)


# -- the machine --------------------------------------------------------------------------------------------------


def cpu_record() -> dict[str, Any]:
    """CPU model, cores and the instruction-set flags that decide the speed of these phases (Linux /proc/cpuinfo)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in CPU_FLAGS}}


def library_record() -> dict[str, Any]:
    """Versions and CPU dispatch as this process sees them (call it inside a worker, after ``apply_mode``)."""
    import torch

    record: dict[str, Any] = {
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "env": {
            k: os.environ.get(k)
            for k in (*AVX2_ENV, BNB_SCALAR_ENV, "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
        },
    }
    try:
        import bitsandbytes
        from bitsandbytes.functional import has_avx512bf16

        record["bitsandbytes"] = bitsandbytes.__version__
        record["bitsandbytes_avx512bf16"] = bool(has_avx512bf16())
    except ImportError:
        record["bitsandbytes"] = None
    return record


ISA_PROBE = """
import torch
a = torch.randn(64, 576)
torch.nn.functional.linear(a, torch.randn(1536, 576))
torch.nn.functional.linear(a.bfloat16(), torch.randn(1536, 576).bfloat16())
"""


def isa_probe(mode: str) -> dict[str, str]:
    """The instruction set oneMKL (fp32 GEMM) and oneDNN (bf16 GEMM) report in ``mode``, from their verbose logs."""
    env = mode_env(mode, {"MKL_VERBOSE": "1", "ONEDNN_VERBOSE": "1"})
    try:
        proc = subprocess.run([sys.executable, "-c", ISA_PROBE], env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    # No oneDNN line: torch found no bf16 support in oneDNN and multiplied bf16 with its own (slow) code.
    out = {"mkl": "not reported", "onednn": "not used (torch's own bf16 GEMM)"}
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("MKL_VERBOSE oneMKL") and out["mkl"] == "not reported":
            out["mkl"] = line.split(" architecture ", 1)[-1].split(", Lnx")[0].strip()
        elif ",info,cpu,isa:" in line and out["onednn"].startswith("not used"):
            out["onednn"] = line.split(",info,cpu,isa:", 1)[1].strip()
    return out


def short_isa(text: str) -> str:
    """ "AVX-512 + AMX", "AVX2", ... from oneMKL's or oneDNN's long description of the code path it runs."""
    if text.startswith("not "):
        return text
    found = [
        name
        for name, marks in (("AVX2", ("AVX2",)), ("AVX-512", ("AVX-512", "AVX512", "AVX10")), ("AMX", ("AMX",)))
        if any(m in text for m in marks)
    ]
    if "AVX-512" in found and "AVX2" in found:
        found.remove("AVX2")
    return " + ".join(found) or text


def machine_busy(seconds: float = 3.0) -> float:
    """Percent of all cores other processes used over ``seconds`` (the course's own probe, notebook 00)."""
    from ragcourse.hardware import cpu_busy_percent

    return round(cpu_busy_percent(seconds), 1)


# -- the course's objects -----------------------------------------------------------------------------------------


def test_prompts(cfg: Any, tokenizer: Any, count: int) -> list[str]:
    """The first ``count`` test questions with their passages, templated as the model reads them (RAG prompts as
    notebooks 05 and 06 send them: system prompt, 4 numbered passages, question)."""
    from ragcourse import pipeline

    test = pipeline.load(cfg, "dataset", quiet=True)["test"]
    return [
        tokenizer.apply_chat_template(test[i]["prompt"], tokenize=False, add_generation_prompt=True)
        for i in range(min(count, test.num_rows))
    ]


def fixed_generation(
    model: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int, batch_size: int, max_time: float | None = None
) -> dict[str, Any]:
    """Greedy generation as ``models.generate`` runs it (left padding, no sampling), with EOS held back until
    ``new_tokens`` so every run decodes the same number of tokens. ``max_time`` cuts a slow run short; the row then
    says how many tokens it reached. The model's mode and the tokenizer's padding side are restored."""
    side, was_training = tokenizer.padding_side, model.training
    tokenizer.padding_side = "left"
    model.eval()
    try:
        return _fixed_generation(model, tokenizer, prompts, new_tokens, batch_size, max_time)
    finally:
        tokenizer.padding_side = side
        model.train(was_training)


def _fixed_generation(
    model: Any, tokenizer: Any, prompts: Sequence[str], new_tokens: int, batch_size: int, max_time: float | None
) -> dict[str, Any]:
    import torch

    seconds, generated, prompt_tokens, done, cut = 0.0, 0, 0, 0, False
    for start in range(0, len(prompts), batch_size):
        if max_time is not None and seconds >= max_time:
            cut = True
            break
        batch = tokenizer(
            list(prompts[start : start + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **batch,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                max_time=None if max_time is None else max_time - seconds,
            )
        seconds += time.perf_counter() - t0
        new = out.shape[1] - batch["input_ids"].shape[1]
        generated, done = generated + new * out.shape[0], done + out.shape[0]
        prompt_tokens += int(batch["attention_mask"].sum())
        if new < new_tokens:  # max_time stopped it
            cut = True
            break
    return {
        "prompts": done,
        "batch_size": batch_size,
        "prompt_tokens": prompt_tokens,
        "new_tokens": generated,
        "new_tokens_per_prompt": new_tokens,
        "seconds": round(seconds, 2),
        # per prompt at the full length; when cut short, extrapolated from the tokens reached (an upper bound)
        "s_per_prompt": round(seconds * new_tokens / generated, 2) if generated else None,
        "new_tok_per_s": round(generated / seconds, 1) if seconds else None,
        "cut_short": cut,
    }


def course_training(
    cfg: Any, tokenizer: Any, steps: int, after_step: Callable[[list[dict[str, Any]], Any], bool] | None = None
) -> tuple[Any, list[dict[str, Any]]]:
    """The course's trainer (``train.make_trainer`` as ``training_throughput.py`` runs it) on ``cfg``'s base for
    ``steps`` steps. ``after_step(log, model)`` runs after each step, outside its timing; True stops the training.
    Returns the trainer and one record per step (wall and CPU seconds, tokens, loss)."""
    from training_throughput import _course_trainer, _instrument
    from transformers import TrainerCallback

    from ragcourse import pipeline
    from ragcourse.hardware import detect_hardware
    from ragcourse.train import load_model_for_training

    hw = detect_hardware()
    dataset = pipeline.load(cfg, "dataset", quiet=True)
    trainer = _course_trainer(
        cfg, load_model_for_training(cfg, hw), tokenizer, dataset, Path(BENCH_ROOT) / "cpu_benchmarks", steps, hw, {}
    )
    log = _instrument(trainer, tokenizer.pad_token_id)

    class AfterStep(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if after_step is not None and after_step(log, kwargs["model"]):
                control.should_training_stop = True

    trainer.add_callback(AfterStep())  # after _instrument's timer: the step that just ended is in the log
    trainer.train()
    return trainer, log


def step_stats(steps: Sequence[dict[str, Any]], asked: int | None = None) -> dict[str, Any]:
    """Seconds per step (mean), CPU seconds, tokens and the last loss of some of ``course_training``'s steps."""
    import statistics

    return {
        "s_per_step": round(statistics.mean(s["wall_s"] for s in steps), 3),
        "measured_steps": len(steps),
        "cut_short": asked is not None and len(steps) < asked,
        "steps_s": [round(s["wall_s"], 2) for s in steps],
        "cpu_s_per_step": round(statistics.mean(s["cpu_s"] for s in steps), 3),
        "loss": round(steps[-1]["loss"], 3),
        "tokens_per_step": round(statistics.mean(s["processed"] for s in steps), 1),
    }
