"""Where the time of a cpu-smoke training step and of a batch of answers goes, and how much of it is left to win
(issue 20): torch's profiler over the course's own objects, natively and with AVX2 only.

For each mode (a fresh interpreter, as in ``cpu_phases.py``):

* **train**: the course's trainer (``cpu_common.course_training``: ``train.make_trainer`` on the 4-bit base, batch 4),
  ``--warmup`` steps, then ``--steps`` steps under the profiler;
* **prefill**: one forward pass over the test split's RAG prompts, all in one batch as ``models.generate`` sends them on
  a CPU (``hardware.generation_batch``), with the model as the course answers (fp32 weights);
* **answer**: the same prompts answered greedily, ``--new-tokens`` each (EOS held back), prefill and decoding.

Each phase's wall time is split by kind of operation, from the profiler's self time per op: matrix products
(``aten::mm``, ``addmm``, ``bmm``, ``baddbmm``), attention (``scaled_dot_product`` kernels), 4-bit dequantization
(``bitsandbytes::``), every other op (norms, activations, copies, the optimizer), and the rest of the wall time
outside ops (Python, the Trainer, the tokenizer). Then **the same matrix products, alone**: every product the profiler
recorded (shape and count) is run again by itself on random fp32 tensors of its shape, in the fastest of its four
memory layouts (the profiler records shapes, not layouts); their time is
the floor for that phase's products on this CPU, and "efficiency" is that floor over the time they took in the phase.
An efficiency near 100% means the products already run as fast as this CPU multiplies such matrices: only doing fewer of
them (fewer tokens, steps or passages) or a cheaper number format could make the phase faster.

    python benchmarks/step_profile.py                       # both modes, about 6 min on an idle 2-core machine
    python benchmarks/step_profile.py --modes native --steps 1 --prompts 4 --new-tokens 4

Run it alone. Writes benchmarks/results/step_profile.json and .md (``--markdown-only`` rewrites the .md from the JSON).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cpu_common as common  # noqa: E402

RESULTS_JSON = common.RESULTS / "step_profile.json"
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_")
KINDS = ("matrix products", "attention", "4-bit dequantize", "other ops", "outside ops")
MODE = "?"  # the worker's mode, shown on each progress line


def kind_of(op: str) -> str:
    if op in MATMUL_OPS:
        return "matrix products"
    if "scaled_dot_product" in op or "flash_attention" in op:
        return "attention"
    if op.startswith("bitsandbytes::"):
        return "4-bit dequantize" if "dequantize" in op else "other ops"
    return "other ops"


def product_shapes(op: str, shapes: list[list[int]]) -> tuple[int, int, int, int] | None:
    """(batch, m, k, n) of one recorded matrix product, from the profiler's input shapes."""
    if op in ("aten::mm",) and len(shapes) >= 2 and len(shapes[0]) == 2 and len(shapes[1]) == 2:
        return 1, shapes[0][0], shapes[0][1], shapes[1][1]
    if op in ("aten::addmm", "aten::addmm_") and len(shapes) >= 3 and len(shapes[1]) == 2 and len(shapes[2]) == 2:
        return 1, shapes[1][0], shapes[1][1], shapes[2][1]
    if op == "aten::bmm" and len(shapes) >= 2 and len(shapes[0]) == 3 and len(shapes[1]) == 3:
        return shapes[0][0], shapes[0][1], shapes[0][2], shapes[1][2]
    if op == "aten::baddbmm" and len(shapes) >= 3 and len(shapes[1]) == 3 and len(shapes[2]) == 3:
        return shapes[1][0], shapes[1][1], shapes[1][2], shapes[2][2]
    return None


def alone_seconds(b: int, m: int, k: int, n: int, repeats: int = 3) -> float:
    """The fastest run of one fp32 product of this shape, over ``repeats`` runs (after a warm-up) of each of the four
    memory layouts (either operand stored transposed, as ``nn.Linear``'s weight and the backward's gradients are):
    the profiler records shapes, not layouts, and oneMKL is faster on some than on others."""
    import torch

    best = float("inf")
    for x in (torch.randn(b, m, k), torch.randn(b, k, m).transpose(1, 2)):
        for w in (torch.randn(b, k, n), torch.randn(b, n, k).transpose(1, 2)):
            mul = (lambda: torch.mm(x[0], w[0])) if b == 1 else (lambda: torch.bmm(x, w))
            mul()
            for _ in range(repeats):
                t0 = time.perf_counter()
                mul()
                best = min(best, time.perf_counter() - t0)
    return best


def profiled(phase: str, wall: float, prof: Any) -> dict[str, Any]:
    """One phase's row: wall seconds by kind of op, and its matrix products against the same products run alone."""
    seconds = dict.fromkeys(KINDS, 0.0)
    products: dict[tuple[int, int, int, int], int] = {}
    unmatched = 0.0
    others: dict[str, float] = {}
    for ev in prof.key_averages(group_by_input_shape=True):
        kind = kind_of(ev.key)
        seconds[kind] += ev.self_cpu_time_total / 1e6
        if kind == "other ops":
            others[ev.key] = others.get(ev.key, 0.0) + ev.self_cpu_time_total / 1e6
        if kind == "matrix products":
            shape = product_shapes(ev.key, [list(s) for s in ev.input_shapes])
            if shape is None:
                unmatched += ev.self_cpu_time_total / 1e6
            else:
                products[shape] = products.get(shape, 0) + ev.count
    seconds["outside ops"] = max(0.0, wall - sum(seconds[k] for k in KINDS if k != "outside ops"))
    flops = sum(2 * b * m * k * n * count for (b, m, k, n), count in products.items())
    floor = sum(alone_seconds(*shape) * count for shape, count in products.items())
    in_phase = seconds["matrix products"] - unmatched
    row = {
        "phase": phase,
        "wall_s": round(wall, 2),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
        "share": {k: round(v / wall, 3) for k, v in seconds.items()},
        "matmul_gflop": round(flops / 1e9, 1),
        "matmul_gflops_in_phase": round(flops / in_phase / 1e9, 1) if in_phase else None,
        "matmul_alone_s": round(floor, 3),
        "matmul_gflops_alone": round(flops / floor / 1e9, 1) if floor else None,
        "matmul_efficiency": round(floor / in_phase, 3) if in_phase else None,
        "distinct_shapes": len(products),
        "products": sum(products.values()),
        "unmatched_matmul_s": round(unmatched, 3),
        "top_other_ops": {k: round(v, 3) for k, v in sorted(others.items(), key=lambda kv: -kv[1])[:6]},
    }
    print(
        f"[{MODE}] {phase:8s} {wall:7.2f} s  "
        + "  ".join(f"{k} {v:.0%}" for k, v in row["share"].items())
        + f"  matmul {row['matmul_gflops_in_phase']} GFLOP/s (alone {row['matmul_gflops_alone']})",
        flush=True,
    )
    return row


def profile(fn: Callable[[], Any]) -> tuple[float, Any]:
    import torch

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
    return wall, prof


def worker(args: argparse.Namespace) -> dict[str, Any]:
    global MODE
    import torch

    MODE = common.apply_mode()
    from ragcourse import models, runtime
    from ragcourse.hardware import generation_batch
    from ragcourse.train import ensure_pad_token

    cfg = runtime.start("cpu-smoke", quiet=True, paths={"output_root": common.BENCH_ROOT})
    tokenizer = models.load_tokenizer(cfg)
    ensure_pad_token(tokenizer)
    rows = []

    # Training: the profiler runs from the end of the warm-up steps to the end of the last step.
    state: dict[str, Any] = {}

    def after_step(log: list[dict[str, Any]], model: Any) -> bool:
        if len(log) == args.warmup:
            state["prof"] = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            state["prof"].__enter__()
            state["t0"] = time.perf_counter()
        elif len(log) == args.warmup + args.steps:
            state["wall"] = time.perf_counter() - state["t0"]
            state["prof"].__exit__(None, None, None)
            return True
        return False

    trainer, log = common.course_training(cfg, tokenizer, args.warmup + args.steps, after_step=after_step)
    train_row = profiled("train", state["wall"], state["prof"])
    train_row.update(
        steps=args.steps,
        **{
            k: v
            for k, v in common.step_stats(log[args.warmup :]).items()
            if k in ("s_per_step", "tokens_per_step", "steps_s")
        },
    )
    rows.append(train_row)
    del trainer, state["prof"]
    models.free_memory()

    model = models.load_causal_lm(cfg, quantize=False)  # fp32 weights, as the course answers on a CPU
    prompts = common.test_prompts(cfg, tokenizer, args.prompts)
    batch_size = generation_batch("cpu")
    common.fixed_generation(model, tokenizer, prompts[:1], 2, 1)  # warm-up
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts[:batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        wall, prof = profile(lambda: model(**batch, logits_to_keep=1))  # as generate() prefills
    rows.append(
        {
            **profiled("prefill", wall, prof),
            "prompts": len(prompts[:batch_size]),
            "prompt_tokens": int(batch["attention_mask"].sum()),
            "padded_tokens": int(batch["input_ids"].numel()),
        }
    )
    gen: dict[str, Any] = {}
    wall, prof = profile(
        lambda: gen.update(common.fixed_generation(model, tokenizer, prompts, args.new_tokens, batch_size))
    )
    rows.append(
        {
            **profiled("answer", wall, prof),
            "prompts": gen["prompts"],
            "new_tokens": gen["new_tokens"],
            "s_per_prompt": gen["s_per_prompt"],
        }
    )
    return {"mode": MODE, "libraries": common.library_record(), "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    cpu = result["cpu"]
    s = result["settings"]
    answered = next(
        (r["prompts"] for res in result["modes"].values() for r in res.get("rows", []) if r["phase"] == "answer"),
        s["prompts"],
    )
    lines = [
        f"Where the time goes on {cpu['model']}, {cpu['cores']} cores ({result['created_at']}), each mode in a "
        f"fresh process: the cpu-smoke training step (batch {s['batch_size']}, {s['steps']} profiled after "
        f"{s['warmup']} warm-up), one forward pass over the test split's {answered} RAG prompts in one batch "
        f"(prefill), and the same prompts answered with {s['new_tokens']} new tokens each. Shares of the wall "
        "time, from torch's profiler (self time per op).",
        "",
        "| mode | phase | wall s | matrix products | attention | 4-bit dequantize | other ops | outside ops | "
        "products GFLOP/s | the same products alone | efficiency |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for mode, res in result["modes"].items():
        for r in res.get("rows", []):
            wall = r["wall_s"] / r["steps"] if r["phase"] == "train" else r["wall_s"]
            label = (
                f"train (per step, {r['tokens_per_step']:.0f} tokens)"
                if r["phase"] == "train"
                else (
                    f"prefill ({r['prompt_tokens']} tokens)"
                    if r["phase"] == "prefill"
                    else f"answer ({r['prompts']} × {r['new_tokens'] // max(r['prompts'], 1)} tokens)"
                )
            )
            shares = " | ".join(f"{100 * r['share'][k]:.0f}%" for k in KINDS)
            eff = r["matmul_efficiency"]
            lines.append(
                f"| {mode} | {label} | {wall:.2f} | {shares} | {r['matmul_gflops_in_phase']} | "
                f"{r['matmul_gflops_alone']} | {'' if eff is None else f'{100 * eff:.0f}%'} |"
            )
    for mode, res in result["modes"].items():
        for r in res.get("rows", []):
            if r["phase"] == "train" and r.get("top_other_ops"):
                ops = ", ".join(f"`{k}` {v / r['steps']:.2f} s" for k, v in r["top_other_ops"].items())
                lines.append(f"\nOther ops of a training step ({mode}), the largest: {ops}.")
    lines += [
        "",
        "Products GFLOP/s: the phase's matrix products (2·m·k·n each, as recorded) over the time they took "
        "in the phase. The same products alone: each recorded shape run again by itself, as many times, on fp32 "
        "tensors (fastest of 3), the floor this CPU sets for them. Efficiency = that floor ÷ their time in the "
        "phase.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="*", default=["native", "avx2"], choices=sorted(common.MODES))
    parser.add_argument("--warmup", type=int, default=1, help="training steps not profiled (default 1)")
    parser.add_argument("--steps", type=int, default=2, help="profiled training steps (default 2)")
    parser.add_argument("--prompts", type=int, default=32, help="test prompts answered (default: the split, 31)")
    parser.add_argument("--new-tokens", type=int, default=48, help="new tokens per answer (default 48, the preset's)")
    args = common.parse_or_serve(parser, worker, RESULTS_JSON, markdown)
    if args is None:
        return
    from ragcourse import runtime

    start = time.perf_counter()
    cfg = common.bench_config()
    result: dict[str, Any] = {
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpu": common.cpu_record(),
        "settings": {
            "warmup": args.warmup,
            "steps": args.steps,
            "prompts": args.prompts,
            "new_tokens": args.new_tokens,
            "batch_size": cfg.training.per_device_train_batch_size,
        },
        "versions": runtime.versions(),
    }
    common.run_modes(Path(__file__), result, args.modes, RESULTS_JSON, markdown, start)


if __name__ == "__main__":
    main()
