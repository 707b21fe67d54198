"""Training throughput of the course's recipe (notebook 03) against a plain Hugging Face recipe, on this CPU (issue 9).

Both recipes train the same model (the preset's, 4-bit NF4 unless a variant says otherwise), with the same LoRA
config, optimizer, learning rate, batch size and seed, on the same examples in the same order:

* **plain** — ``transformers.Trainer``: every example padded to ``model.max_length``, no packing, the loss on the
  whole sequence (``labels = input_ids``, padding set to -100), the model's own full-logits cross-entropy;
* **course** — ``ragcourse.train.make_trainer`` unchanged: TRL ``SFTTrainer`` on the prompt/completion columns
  (completion-only loss, padding to the longest example of the batch, TRL's chunked "fused" LM head);
* course variants: ``padding_free=True`` (the batch flattened into one row, no padding), ``packing=True`` (BFD
  packing to ``max_length``, which implies padding-free), a 16/32-bit base instead of 4-bit, 2 torch threads;
* ``course-trl-head``: the course recipe with TRL's own choice for its fused LM head, which on a CPU scores every
  position (the course before ``train.score_loss_positions_only``; on CUDA/XPU TRL scores only the loss-carrying
  positions, which is what the course now does everywhere; see the README).

Each variant: a fresh model, ``--warmup`` steps not counted, then ``--steps`` measured steps, all in this one process
(so ratios compare like with like). Per step: wall seconds (``on_step_begin`` → ``on_step_end``: forward, backward,
optimizer step), this process's CPU seconds, tokens processed (``input_ids.numel()``, padding included), useful
tokens (non-padding) and loss-carrying tokens. Throughput = tokens of the measured steps / their seconds.

On a shared machine the wall-clock numbers are noisy (run it under ``nice``; another process on the same cores can
make steps several times slower); "useful tokens per CPU-second" of the 1-thread variants is the steadier figure,
and ratios within one run are more reliable than absolute numbers.

    nice -n 19 python benchmarks/training_throughput.py                         # all variants, 3 + 5 steps each
    python benchmarks/training_throughput.py --warmup 2 --steps 4 --variants plain course course-padding-free

Writes benchmarks/results/training_throughput.json and .md (rewritten after every variant).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_JSON = HERE / "results" / "training_throughput.json"
RESULTS_MD = HERE / "results" / "training_throughput.md"
BENCH_ROOT = "/tmp/bench_out"  # artifacts (dataset, trainer output_dir) stay out of outputs/


@dataclass
class Variant:
    name: str
    recipe: str  # "plain" | "course"
    quantized: bool = True
    dtype: str = "auto"  # model.torch_dtype: auto (fp32 on CPU) | bfloat16
    threads: int = 1
    sft: dict[str, Any] = field(default_factory=dict)  # SFTConfig overrides for the course recipe
    trl_head: bool = False  # TRL's own fused-head choice (every position on a CPU) instead of the course's
    note: str = ""


VARIANTS = {
    v.name: v
    for v in [
        Variant("plain", "plain", note="transformers Trainer, padded to max_length, full-sequence loss"),
        Variant("course", "course", note="ragcourse.train.make_trainer as the notebook runs it"),
        Variant(
            "course-padding-free",
            "course",
            sft={"padding_free": True, "max_length": None},
            note="padding_free=True (TRL needs max_length=None without packing; every example fits max_length)",
        ),
        Variant(
            "course-packing",
            "course",
            sft={"packing": True},
            note="packing=True, BFD to max_length (implies padding-free)",
        ),
        Variant(
            "course-trl-head",
            "course",
            trl_head=True,
            note="TRL's default fused LM head, scoring every position on a CPU (the course before its fix)",
        ),
        Variant("plain-fp32", "plain", quantized=False, note="plain recipe, fp32 base (no 4-bit)"),
        Variant("course-fp32", "course", quantized=False, note="course recipe, fp32 base (no 4-bit)"),
        Variant("course-bf16", "course", quantized=False, dtype="bfloat16", note="course recipe, bf16 base (no 4-bit)"),
        Variant("plain-2threads", "plain", threads=2, note="plain recipe, 2 torch threads"),
        Variant("course-2threads", "course", threads=2, note="course recipe, 2 torch threads"),
    ]
}
DEFAULT_VARIANTS = [
    "plain",
    "course",
    "course-padding-free",
    "course-packing",
    "course-trl-head",
    "course-fp32",
    "plain-fp32",
    "course-2threads",
    "plain-2threads",
]


# -- measuring ------------------------------------------------------------------------------------------------------


def _batch_stats(inputs: dict[str, Any], pad_id: int) -> dict[str, int]:
    ids = inputs["input_ids"]
    processed = int(ids.numel())
    if "attention_mask" in inputs and inputs["attention_mask"] is not None:
        useful = int(inputs["attention_mask"].sum())
    else:  # padding-free: one row, no attention mask; only pad_to_multiple_of could add pad tokens
        useful = int((ids != pad_id).sum()) if pad_id is not None else processed
    labels = inputs.get("labels")
    loss_tokens = int((labels[..., 1:] != -100).sum()) if labels is not None else 0
    return {
        "rows": int(ids.shape[0]),
        "width": int(ids.shape[-1]),
        "processed": processed,
        "useful": useful,
        "loss_tokens": loss_tokens,
    }


def _instrument(trainer: Any, pad_id: int) -> list[dict[str, Any]]:
    """Record each step's batch (inside ``training_step``) and its wall/CPU seconds (step begin → step end)."""
    from transformers import TrainerCallback

    steps: list[dict[str, Any]] = []
    pending: dict[str, Any] = {}
    original = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        pending.update(_batch_stats(inputs, pad_id))
        loss = original(model, inputs, *args, **kwargs)
        pending["loss"] = float(loss)
        return loss

    trainer.training_step = training_step

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            pending.clear()
            pending["_t"], pending["_c"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            wall, cpu = time.perf_counter() - pending.pop("_t"), time.process_time() - pending.pop("_c")
            steps.append({**pending, "wall_s": wall, "cpu_s": cpu})

    trainer.add_callback(StepTimer())
    return steps


def _plain_dataset(dataset: Any, tokenizer: Any, max_length: int) -> Any:
    """The plain recipe's data: chat template applied to prompt + completion, padded to ``max_length``, labels = ids."""

    def encode(example: dict[str, Any]) -> dict[str, Any]:
        text = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
        enc = tokenizer(text, add_special_tokens=False, padding="max_length", truncation=True, max_length=max_length)
        enc["labels"] = [t if m else -100 for t, m in zip(enc["input_ids"], enc["attention_mask"])]
        return enc

    return dataset.map(encode, remove_columns=dataset.column_names)


def _plain_trainer(
    cfg: Any, model: Any, tokenizer: Any, dataset: Any, output_dir: Path, max_steps: int, hw: Any
) -> Any:
    from transformers import Trainer, TrainingArguments, default_data_collator

    from ragcourse.train import ensure_pad_token, optimizer_name

    ensure_pad_token(tokenizer)
    t = cfg.training
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        optim=optimizer_name(cfg, hw),
        activation_checkpointing=t.gradient_checkpointing,
        use_cpu=hw.device == "cpu",
        eval_strategy="no",
        save_strategy="no",
        logging_steps=10_000,
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    train = _plain_dataset(dataset["train"], tokenizer, cfg.model.max_length)
    return Trainer(model=model, args=args, train_dataset=train, data_collator=default_data_collator)


def _course_trainer(
    cfg: Any, model: Any, tokenizer: Any, dataset: Any, output_dir: Path, max_steps: int, hw: Any, sft: dict[str, Any]
) -> Any:
    from transformers import EarlyStoppingCallback

    from ragcourse.train import make_trainer

    # The course's trainer as is, minus evaluation and checkpoints (not part of a training step).
    trainer = make_trainer(
        cfg,
        model,
        tokenizer,
        dataset,
        output_dir,
        hw=hw,
        max_steps=max_steps,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        logging_steps=10_000,
        disable_tqdm=True,
        **sft,
    )
    trainer.remove_callback(EarlyStoppingCallback)
    return trainer


def run_variant(variant: Variant, warmup: int, steps: int) -> dict[str, Any]:
    import torch

    from ragcourse import pipeline, runtime
    from ragcourse.hardware import detect_hardware
    from ragcourse.models import load_tokenizer
    from ragcourse.train import ensure_pad_token, load_model_for_training

    overrides: dict[str, Any] = {"paths": {"output_root": BENCH_ROOT}, "training": {"torch_threads": variant.threads}}
    if not variant.quantized:
        overrides["quantization"] = {"load_in_4bit": False}
    if variant.dtype != "auto":
        overrides["model"] = {"torch_dtype": variant.dtype}
    cfg = runtime.start("cpu-smoke", quiet=True, **overrides)
    torch.set_num_threads(variant.threads)
    hw = detect_hardware()
    dataset = pipeline.load(cfg, "dataset")
    tokenizer = load_tokenizer(cfg)
    ensure_pad_token(tokenizer)
    t0 = time.perf_counter()
    model = load_model_for_training(cfg, hw)
    load_s = time.perf_counter() - t0
    out = Path(BENCH_ROOT) / "training_throughput" / variant.name
    total = warmup + steps
    if variant.recipe == "plain":
        trainer = _plain_trainer(cfg, model, tokenizer, dataset, out, total, hw)
    else:
        trainer = _course_trainer(cfg, model, tokenizer, dataset, out, total, hw, variant.sft)
    log = _instrument(trainer, tokenizer.pad_token_id)
    import trl.trainer.utils as trl_utils

    use_triton = trl_utils._use_triton  # make_trainer has set the course's choice (loss positions only)
    if variant.trl_head:
        trl_utils._use_triton = getattr(use_triton, "_original", use_triton)
    try:
        trainer.train()
    finally:
        trl_utils._use_triton = use_triton
    measured = log[warmup:]
    if len(measured) < steps:
        raise RuntimeError(f"{variant.name}: {len(log)} steps ran, {total} expected (dataset too small for the batch?)")
    wall = sum(s["wall_s"] for s in measured)
    cpu = sum(s["cpu_s"] for s in measured)
    tok = {k: sum(s[k] for s in measured) for k in ("processed", "useful", "loss_tokens")}
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    result = {
        **asdict(variant),
        "torch_threads_in_use": torch.get_num_threads(),
        "warmup_steps": warmup,
        "measured_steps": len(measured),
        "load_s": round(load_s, 2),
        "trainable_params": trainable,
        "train_rows": len(trainer.train_dataset),
        "batch_size": cfg.training.per_device_train_batch_size,
        "s_per_step_median": round(statistics.median(s["wall_s"] for s in measured), 3),
        "s_per_step_mean": round(wall / len(measured), 3),
        "cpu_s_per_step_mean": round(cpu / len(measured), 3),
        "processed_tokens_per_step": round(tok["processed"] / len(measured), 1),
        "useful_tokens_per_step": round(tok["useful"] / len(measured), 1),
        "loss_tokens_per_step": round(tok["loss_tokens"] / len(measured), 1),
        "padding_%": round(100 * (1 - tok["useful"] / tok["processed"]), 1),
        "processed_tok_per_s": round(tok["processed"] / wall, 1),
        "useful_tok_per_s": round(tok["useful"] / wall, 1),
        "useful_tok_per_cpu_s": round(tok["useful"] / cpu, 1),
        "steps": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in s.items()} for s in log],
    }
    del trainer, model
    import gc

    gc.collect()
    return result


# -- reporting ------------------------------------------------------------------------------------------------------


RATIOS = [  # (label, numerator, denominator)
    ("course vs plain (4-bit, 1 thread)", "course", "plain"),
    ("course vs plain (fp32, 1 thread)", "course-fp32", "plain-fp32"),
    ("course vs plain (4-bit, 2 threads)", "course-2threads", "plain-2threads"),
    ("padding-free vs course default", "course-padding-free", "course"),
    ("packing vs course default", "course-packing", "course"),
    ("course vs TRL's default fused head on CPU (the fix)", "course", "course-trl-head"),
    ("fp32 base vs 4-bit (course)", "course-fp32", "course"),
    ("fp32 base vs 4-bit (plain)", "plain-fp32", "plain"),
    ("bf16 base vs 4-bit (course)", "course-bf16", "course"),
    ("2 threads vs 1 (course)", "course-2threads", "course"),
    ("2 threads vs 1 (plain)", "plain-2threads", "plain"),
]


def ratios(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for label, a, b in RATIOS:
        if a in rows and b in rows:
            ra, rb = rows[a], rows[b]
            out.append(
                {
                    "comparison": label,
                    "numerator": a,
                    "denominator": b,
                    "useful_tok_per_s": round(ra["useful_tok_per_s"] / rb["useful_tok_per_s"], 2),
                    "processed_tok_per_s": round(ra["processed_tok_per_s"] / rb["processed_tok_per_s"], 2),
                    "useful_tok_per_cpu_s": round(ra["useful_tok_per_cpu_s"] / rb["useful_tok_per_cpu_s"], 2),
                    "s_per_step": round(ra["s_per_step_mean"] / rb["s_per_step_mean"], 2),
                }
            )
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = result["variants"]
    lines = [
        f"Training throughput on {result['machine']} ({result['created_at']}); "
        f"{result['warmup_steps']} warm-up + {result['measured_steps']} measured steps per variant, batch "
        f"{next(iter(rows.values()))['batch_size']}, SmolLM2-135M (cpu-smoke), LoRA {result.get('lora', '')}. "
        f"{result['note']}",
        "",
        "| variant | base | threads | s/step | processed tok/s | useful tok/s | useful tok/CPU-s | padding | "
        "tokens/step (loss) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        base = "4-bit NF4" if r["quantized"] else ("bf16" if r["dtype"] == "bfloat16" else "fp32")
        lines.append(
            f"| {r['name']} | {base} | {r['threads']} | {r['s_per_step_mean']:.2f} | {r['processed_tok_per_s']:.0f} | "
            f"{r['useful_tok_per_s']:.0f} | {r['useful_tok_per_cpu_s']:.0f} | {r['padding_%']:.1f}% | "
            f"{r['processed_tokens_per_step']:.0f} ({r['loss_tokens_per_step']:.0f}) |"
        )
    rat = result["ratios"]
    if rat:
        lines += [
            "",
            "| ratio (A / B) | useful tok/s | processed tok/s | useful tok/CPU-s | s/step |",
            "|---|---:|---:|---:|---:|",
        ]
        for r in rat:
            lines.append(
                f"| {r['comparison']} ({r['numerator']} / {r['denominator']}) | {r['useful_tok_per_s']:.2f} | "
                f"{r['processed_tok_per_s']:.2f} | {r['useful_tok_per_cpu_s']:.2f} | {r['s_per_step']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=int, default=3, help="steps per variant not counted (default 3)")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per variant (default 5)")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=DEFAULT_VARIANTS,
        choices=sorted(VARIANTS),
        help=f"default: {' '.join(DEFAULT_VARIANTS)}",
    )
    parser.add_argument("--note", default="", help="free text stored with the results (e.g. 'machine shared, nice 19')")
    args = parser.parse_args()

    from ragcourse import runtime

    result: dict[str, Any] = {
        "machine": f"{platform.machine()} CPU, {__import__('os').cpu_count()} cores",
        "note": args.note,
        "warmup_steps": args.warmup,
        "measured_steps": args.steps,
        "variants": {},
        "ratios": [],
        "versions": runtime.versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    from ragcourse.config import load_config

    lora = load_config("cpu-smoke").lora
    targets = lora.target_modules if isinstance(lora.target_modules, str) else "/".join(lora.target_modules)
    result["lora"] = f"r={lora.r}, alpha {lora.lora_alpha} on {targets}"
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        t0 = time.perf_counter()
        r = run_variant(VARIANTS[name], args.warmup, args.steps)
        result["variants"][name] = r
        result["ratios"] = ratios(result["variants"])
        RESULTS_JSON.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        RESULTS_MD.write_text(markdown(result), encoding="utf-8")
        print(
            f"{name:22s} {r['s_per_step_mean']:6.2f} s/step  processed {r['processed_tok_per_s']:6.0f} tok/s  "
            f"useful {r['useful_tok_per_s']:6.0f} tok/s  useful/CPU-s {r['useful_tok_per_cpu_s']:6.0f}  "
            f"padding {r['padding_%']:4.1f}%  loss {r['steps'][-1]['loss']:.3f}  ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    print(markdown(result))
    print(f"written to {RESULTS_JSON} and {RESULTS_MD}")


if __name__ == "__main__":
    sys.exit(main())
