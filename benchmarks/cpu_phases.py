"""Where the time of a cpu-smoke course goes on this CPU, natively and with AVX2 only (issue 20).

Each mode runs in a fresh interpreter, because torch, oneMKL and oneDNN read their instruction-set variables once, at
start: **native** (whatever the CPU has) and **avx2** (``ATEN_CPU_CAPABILITY=avx2``, ``MKL_ENABLE_INSTRUCTIONS=AVX2``,
``ONEDNN_MAX_CPU_ISA=AVX2``, and bitsandbytes' scalar 4-bit dequantization: see ``cpu_common.py`` for why all four).
Each phase runs the package's own objects on the cpu-smoke preset:

* **import**: torch, transformers, peft, trl, bitsandbytes;
* **matmul**: one fp32 and one bf16 linear layer of the model's MLP shape (1024 tokens), in GFLOP/s;
* **load**: ``models.load_causal_lm`` in fp32, in 4-bit NF4 (the difference is the quantisation) and in bf16;
* **dequantize**: every 4-bit weight dequantized once, what each forward pass (and each backward) pays on a CPU;
* **generate**: the test split's RAG prompts (system prompt, 4 passages, question) at the preset's ``max_new_tokens``,
  8 per batch as ``models.generate`` batches them, and one at a time as a chat query runs; EOS is held back so every
  row decodes the same tokens;
* **train**: the course's trainer (``train.make_trainer``, as ``training_throughput.py`` runs it) on a 4-bit base as
  the preset trains, and on fp32 and bf16 bases (the candidate fixes), 1 warm-up step then ``--steps``;
* **embed**: ``retrieval.build_index`` on ``--chunks`` chunks of the sample corpus with the preset's MiniLM;
* **ragas**: RAGAS's non-LLM metrics (``evaluate.non_llm_scores``) on 8 test rows. The LLM-judged metrics are left out
  by default: with the 135M model as judge they take 40–60 s per sample and every score comes back NaN (FIELD-NOTES);
  their cost is generation at 256 new tokens, which the generate rows measure per token; ``--judge-samples N`` adds
  them.

bf16 phases run only where a bf16 matmul is at least half as fast as fp32 (``--bf16 auto``): without AVX512-BF16 or
AMX, oneDNN emulates bf16 and one training step would take minutes; the matmul row shows why.

    nice -n 19 python benchmarks/cpu_phases.py                 # both modes, about 5–7 min on an idle 2-core machine
    python benchmarks/cpu_phases.py --modes native --steps 1 --warmup 0 --prompts 2 --new-tokens 4 --chunks 16

The first run builds the dataset under /tmp/bench_out (2–3 min once). Writes benchmarks/results/cpu_phases.json and
.md (the markdown is made from the JSON: ``--markdown-only`` rewrites it).
"""

from __future__ import annotations

import argparse
import functools
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

WORKER_START = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_common as common  # noqa: E402

RESULTS_JSON = common.RESULTS / "cpu_phases.json"
SHARED_ABOVE_PERCENT = 25
BF16_USEFUL = 0.5  # run bf16 end to end when its matmul reaches this fraction of fp32's speed
MODE = "?"  # the worker's mode, shown on each progress line


# -- the worker: one mode, all phases, one process ------------------------------------------------------------------


class Phases:
    """Rows of (phase, variant, seconds, details), printed as they come."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def add(self, phase: str, variant: str, seconds: float | None, **details: Any) -> dict[str, Any]:
        row = {"phase": phase, "variant": variant, "seconds": None if seconds is None else round(seconds, 3), **details}
        self.rows.append(row)
        extra = ", ".join(f"{k} {v}" for k, v in details.items() if not isinstance(v, (list, dict)))
        shown = "skipped" if seconds is None else f"{seconds:8.2f} s"
        print(f"[{MODE}] {phase:10s} {variant:18s} {shown}  {extra}", flush=True)
        return row

    def timed(self, phase: str, variant: str, fn: Callable[[], Any], **details: Any) -> Any:
        t0 = time.perf_counter()
        value = fn()
        self.add(phase, variant, time.perf_counter() - t0, **details)
        return value


def matmul_gflops(dtype_name: str, repeats: int = 10) -> tuple[float, float]:
    """Seconds per call and GFLOP/s of one MLP-shaped linear layer (1024 tokens x 576 -> 1536)."""
    import torch

    dtype = getattr(torch, dtype_name)
    x, w = torch.randn(1024, 576, dtype=dtype), torch.randn(1536, 576, dtype=dtype)
    torch.nn.functional.linear(x, w)
    t0 = time.perf_counter()
    for _ in range(repeats):
        torch.nn.functional.linear(x, w)
    per_call = (time.perf_counter() - t0) / repeats
    return per_call, 2 * 1024 * 576 * 1536 / per_call / 1e9


def dequantize_all(model: Any) -> int:
    """Dequantize every 4-bit weight once (what a forward pass does layer by layer); returns the element count."""
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            count += F.dequantize_4bit(module.weight.data, module.weight.quant_state).numel()
    return count


def worker(args: argparse.Namespace) -> dict[str, Any]:
    global MODE
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401
    import trl  # noqa: F401

    import_s = time.perf_counter() - WORKER_START
    MODE = common.apply_mode()
    from ragcourse import models, runtime
    from ragcourse.hardware import detect_hardware

    p = Phases()
    p.add("import", "torch+hf+bnb", import_s)
    base = {"paths": {"output_root": common.BENCH_ROOT}}
    cfg = runtime.start("cpu-smoke", quiet=True, **base)
    hw = detect_hardware()
    gflops = {}
    for dtype in ("float32", "bfloat16"):
        per_call, gflops[dtype] = matmul_gflops(dtype)
        p.add("matmul", "fp32" if dtype == "float32" else "bf16", per_call, gflops=round(gflops[dtype], 1))
    bf16 = args.bf16 == "always" or (args.bf16 == "auto" and gflops["bfloat16"] >= BF16_USEFUL * gflops["float32"])
    bf16_cfg = runtime.start("cpu-smoke", quiet=True, model={"torch_dtype": "bfloat16"}, **base)
    why_not = f"bf16 matmul at {gflops['bfloat16']:.0f} GFLOP/s vs fp32 {gflops['float32']:.0f} (--bf16 {args.bf16})"

    path = models.resolve_model(cfg.model.name, cfg)
    tokenizer = models.load_tokenizer(cfg, path)
    from ragcourse.train import ensure_pad_token

    ensure_pad_token(tokenizer)
    models.load_causal_lm(cfg, quantize=False, path=path, hw=hw)  # untimed first load: files into the page cache
    loaded = {
        "fp32": p.timed("load", "fp32", lambda: models.load_causal_lm(cfg, quantize=False, path=path, hw=hw)),
        "4-bit": p.timed("load", "4-bit NF4", lambda: models.load_causal_lm(cfg, quantize=True, path=path, hw=hw)),
    }
    if bf16:
        loaded["bf16"] = p.timed(
            "load", "bf16", lambda: models.load_causal_lm(bf16_cfg, quantize=False, path=path, hw=hw)
        )
    else:
        p.add("load", "bf16", None, skipped=why_not)
    count = dequantize_all(loaded["4-bit"])  # warm-up
    p.timed("dequantize", "4-bit, all weights", functools.partial(dequantize_all, loaded["4-bit"]), elements=count)

    prompts = common.test_prompts(cfg, tokenizer, args.prompts)
    new_tokens = args.new_tokens or cfg.model.max_new_tokens
    runs = [
        ("4-bit", 8, prompts),
        ("fp32", 8, prompts),
        ("fp32", 1, prompts[: max(1, len(prompts) // 2)]),
        ("bf16", 8, prompts),
    ]
    common.fixed_generation(loaded["fp32"], tokenizer, prompts[:1], 2, 1)  # warm-up
    for name, batch, some in runs:
        if name not in loaded:
            p.add("generate", f"{name}, batch {batch}", None, skipped=why_not)
            continue
        g = common.fixed_generation(loaded[name], tokenizer, some, new_tokens, batch, max_time=args.max_generate_s)
        p.add("generate", f"{name}, batch {batch}", g.pop("seconds"), **g)
    del loaded
    models.free_memory()

    train_cfgs = {
        "4-bit NF4": cfg,
        "fp32": runtime.start("cpu-smoke", quiet=True, quantization={"load_in_4bit": False}, **base),
        "bf16": runtime.start(
            "cpu-smoke", quiet=True, quantization={"load_in_4bit": False}, model={"torch_dtype": "bfloat16"}, **base
        ),
    }
    for name, tcfg in train_cfgs.items():
        if name == "bf16" and not bf16:
            p.add("train", name, None, skipped=why_not)
            continue
        trainer, log = common.course_training(tcfg, tokenizer, args.warmup + args.steps)
        t = common.step_stats(log[args.warmup :])
        p.add("train", name, t.pop("s_per_step"), warmup_steps=args.warmup, **t)
        del trainer
        models.free_memory()

    embed(p, cfg, args.chunks)
    ragas_phase(p, cfg, args.judge_samples)
    return {
        "mode": MODE,
        "libraries": common.library_record(),
        "hardware": hw.summary(),
        "bf16_end_to_end": bf16,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "rows": p.rows,
    }


def embed(p: Phases, cfg: Any, n: int) -> None:
    from llama_index.core.schema import MetadataMode

    from ragcourse import data, retrieval

    nodes = data.corpus_chunks(cfg)[:n]
    model = p.timed("load", "MiniLM embedding", lambda: retrieval.embedding_model(cfg))
    model.get_text_embedding_batch([nodes[0].get_content(metadata_mode=MetadataMode.EMBED)])  # warm-up
    t0 = time.perf_counter()
    retrieval.build_index(nodes, model, cfg)
    seconds = time.perf_counter() - t0
    p.add("embed", f"{len(nodes)} chunks", seconds, chunks_per_s=round(len(nodes) / seconds, 1))


def ragas_phase(p: Phases, cfg: Any, judge_samples: int) -> None:
    from ragcourse import evaluate

    p.timed("import", "ragas", evaluate._ragas)
    examples = evaluate.test_examples(cfg)[:8]
    rows = [
        {
            **ex,
            "answer": ex["answer"],
            "contexts": list(ex["contexts"]),
            "reference": ex["answer"],
            "reference_contexts": list(ex["supporting_passages"]),
        }
        for ex in examples
    ]
    embeddings = p.timed("load", "RAGAS embeddings", lambda: evaluate.ragas_embeddings(cfg))
    p.timed("ragas", f"non-LLM, {len(rows)} rows", lambda: evaluate.non_llm_scores(rows, cfg, embeddings))
    if judge_samples:
        from ragcourse import models

        model, tokenizer = models.load_causal_lm(cfg, quantize=False), models.load_tokenizer(cfg)
        judge = evaluate.judge_llm(cfg, model, tokenizer)
        result = evaluate.llm_judged_scores(rows[:judge_samples], judge, cfg, embeddings)
        p.add("ragas", f"LLM-judged, {judge_samples} rows", result.seconds, parse_failures=result.parse_failures)
    else:
        p.add("ragas", "LLM-judged", None, skipped="--judge-samples 0 (135M judge: 40-60 s a sample, NaN scores)")


# -- the parent: both modes, then the tables ------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "–"


def seconds_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "–"
    if row["seconds"] is None:
        return "skipped"
    if row["phase"] == "generate":
        cut = " (cut short)" if row.get("cut_short") else ""
        return f"{row['seconds']:.1f}{cut}"
    if row["phase"] == "matmul":
        return f"{row['seconds'] * 1e3:.1f} ms"
    return f"{row['seconds']:.2f}"


def rate_cell(row: dict[str, Any] | None) -> str:
    if row is None or row["seconds"] is None:
        return ""
    if row["phase"] == "matmul":
        return f"{row['gflops']:.0f} GFLOP/s"
    if row["phase"] == "generate":
        return f"{row['s_per_prompt']:.2f} s/answer, {row['new_tok_per_s']:.1f} tok/s"
    if row["phase"] == "train":
        return f"{row['measured_steps']} steps, {row['tokens_per_step']:.0f} tok/step"
    if row["phase"] == "embed":
        return f"{row['chunks_per_s']:.0f} chunks/s"
    if row["phase"] == "dequantize":
        return f"{row['elements'] / row['seconds'] / 1e6:.0f} M weights/s"
    return ""


def markdown(result: dict[str, Any]) -> str:
    modes = [m for m in ("native", "avx2") if m in result["modes"]]
    cpu = result["cpu"]
    flags = ", ".join(f for f, on in cpu["flags"].items() if on) or "none of those listed"
    missing = ", ".join(f for f, on in cpu["flags"].items() if not on)
    lines = [
        f"Phases of the cpu-smoke course on {cpu['model']}, {cpu['cores']} cores ({result['created_at']}), "
        f"each mode in a fresh process; torch {result['modes'][modes[0]]['libraries']['torch']}, bitsandbytes "
        f"{result['modes'][modes[0]]['libraries'].get('bitsandbytes')}. {result['note']}".rstrip(),
        "",
        f"CPU flags: {flags}" + (f" (absent: {missing})" if missing else "") + ".",
        "",
        "| mode | torch kernels | oneMKL (fp32 GEMM) | oneDNN (bf16 GEMM) | bitsandbytes 4-bit dequant "
        "| CPU busy before |",
        "|---|---|---|---|---|---:|",
    ]
    for m in modes:
        r = result["modes"][m]
        isa = result["isa"].get(m, {})
        bnb = (
            "scalar loop (forced)"
            if r["libraries"]["env"].get(common.BNB_SCALAR_ENV) == "1"
            else "CPUID: " + ("AVX-512" if cpu["flags"].get("avx512f") else "scalar")
        )
        lines.append(
            f"| {m} | {r['libraries']['torch_cpu_capability']} | {common.short_isa(isa.get('mkl', '?'))} | "
            f"{common.short_isa(isa.get('onednn', '?'))} | {bnb} | "
            f"{result['busy_percent_before'].get(m, '?')}% |"
        )
    lines += [
        "",
        "| phase | variant | "
        + " | ".join(f"{m} s" for m in modes)
        + " | "
        + " | ".join(f"{m} rate" for m in modes)
        + (" | avx2 / native |" if len(modes) == 2 else " |"),
        "|---|---|" + "---:|" * (2 * len(modes)) + ("---:|" if len(modes) == 2 else ""),
    ]
    keys = []
    for m in modes:
        for row in result["modes"][m]["rows"]:
            if (row["phase"], row["variant"]) not in keys:
                keys.append((row["phase"], row["variant"]))
    index = {m: {(r["phase"], r["variant"]): r for r in result["modes"][m]["rows"]} for m in modes}
    for key in keys:
        rows = [index[m].get(key) for m in modes]
        cells = [seconds_cell(r) for r in rows] + [rate_cell(r) for r in rows]
        if len(modes) == 2:
            a, b = (r["seconds"] if r else None for r in rows)
            cells.append(ratio(b, a))
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    skipped = sorted(
        {
            f"{r['phase']} {r['variant']} ({m}): {r['skipped']}"
            for m in modes
            for r in result["modes"][m]["rows"]
            if r.get("skipped")
        }
    )
    lines += [
        "",
        "Generation rows: the test split's RAG prompts, EOS held back so each answer is "
        f"{result['settings']['new_tokens']} new tokens; s/answer is the batch's time per prompt. Train rows: "
        f"the course's trainer, batch {result['settings']['batch_size']}, {result['settings']['warmup']} warm-up "
        "step(s) not counted. Quantisation cost = load 4-bit − load fp32.",
    ]
    if skipped:
        lines += ["", "Skipped:"] + [f"- {s}" for s in skipped]
    busy = [v for v in result["busy_percent_before"].values() if isinstance(v, (int, float))]
    if busy and max(busy) > SHARED_ABOVE_PERCENT:
        lines += [
            "",
            f"**The machine was shared** (up to {max(busy):.0f}% busy before a mode): the times are upper bounds.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="*", default=["native", "avx2"], choices=sorted(common.MODES))
    parser.add_argument("--warmup", type=int, default=1, help="training steps not counted (default 1)")
    parser.add_argument("--steps", type=int, default=3, help="measured training steps per base (default 3)")
    parser.add_argument("--prompts", type=int, default=8, help="test prompts generated per row (default 8)")
    parser.add_argument("--new-tokens", type=int, default=0, help="new tokens per answer (default: the preset's)")
    parser.add_argument("--max-generate-s", type=float, default=90.0, help="cut a generation row after this")
    parser.add_argument("--chunks", type=int, default=256, help="chunks embedded (default 256)")
    parser.add_argument("--bf16", choices=("auto", "always", "never"), default="auto")
    parser.add_argument("--judge-samples", type=int, default=0, help="RAGAS LLM-judged samples (default 0: skipped)")
    parser.add_argument("--note", default="", help="free text stored with the results")
    args = common.parse_or_serve(parser, worker, RESULTS_JSON, markdown)
    if args is None:
        return
    from ragcourse import runtime

    start = time.perf_counter()
    cfg = common.bench_config()
    result: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "note": args.note,
        "cpu": common.cpu_record(),
        "settings": {
            "warmup": args.warmup,
            "steps": args.steps,
            "prompts": args.prompts,
            "chunks": args.chunks,
            "new_tokens": args.new_tokens or cfg.model.max_new_tokens,
            "bf16": args.bf16,
            "batch_size": cfg.training.per_device_train_batch_size,
        },
        "versions": runtime.versions(),
    }
    common.run_modes(Path(__file__), result, args.modes, RESULTS_JSON, markdown, start, probe=True)


if __name__ == "__main__":
    main()
