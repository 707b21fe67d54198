"""QLoRA training of an 8B model on one CUDA GPU: tokens/s, peak memory, MFU, and the memory estimate (issue 9).

For whoever has a GPU: one script, no network, no weights to download, about 2-5 minutes (at most ``--time-limit``).

The model is Llama-3.1-8B's published architecture (``ragcourse/archs/llama-3.1-8b.json``, through
``ragcourse.lora.arch_config``) with **random weights**: built on the meta device, then every decoder linear layer
is drawn on the GPU and quantized at once to bitsandbytes NF4 with double quantization (one layer in 16-bit at a
time, so an 8B model fits a 24 GB card); embeddings, norms and the output head are drawn in bf16. Random weights
cost exactly what real ones do. Then the course's recipe on a GPU preset (``--preset``, default ``gpu-24gb``):
``peft.prepare_model_for_kbit_training`` (as ``ragcourse.train.load_model_for_training``; it upcasts the
non-quantized weights to fp32), LoRA from the preset (r=16, alpha 32, dropout 0.05, all linear layers), adapters in
bf16 (as TRL keeps them for QLoRA), bf16 autocast, gradient checkpointing (non-reentrant), paged 8-bit AdamW, and
TRL's fused LM head when trl is installed (else the model's own full-logits loss). Random tokens, no padding, the
loss on every position.

For each sequence length (default 512 and 2048): ``--warmup`` steps, then ``--steps`` timed steps (CUDA synchronised)
with the peak memory counters reset after warm-up. Reported per sequence length:

* tokens/s = batch × sequence length × steps / seconds;
* peak ``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` (bitsandbytes' paged optimizer states live in
  CUDA managed memory, outside both; for LoRA they are tens of MB) and the device's used memory (``mem_get_info``);
* model FLOPs utilisation, MFU = model FLOPs per token × tokens/s ÷ the GPU's dense bf16 peak, where for LoRA on a
  frozen base (our choice, stated in the output):

      FLOPs/token = 4·N_frozen + 6·N_lora + 12·L·d·T

  N_frozen: weights of every matmul (decoder linears and the output head; the embedding lookup is not a matmul),
  2 FLOPs per weight forward + 2 backward for the activation gradients, no weight gradients; N_lora: the adapters,
  2 + 2 + 2 (they do get weight gradients); 12·L·d·T: attention scores and weighted values over T positions (L
  layers, d = heads × head_dim), forward + backward, without the causal halving (PaLM's convention). Recomputation
  by gradient checkpointing is not counted (that would be hardware FLOPs utilisation). The usual "6N" number
  (6 · all parameters · tokens/s, as if fully fine-tuned) is printed beside it for comparison with other reports;
  it overstates LoRA's work by about 1.5x;
* the course's memory estimate (``ragcourse.memory.estimate``) for the same setup: its ``torch_allocated`` beside
  ``max_memory_allocated`` and its total (with 0.5 GiB CUDA context) beside reserved + context.

Published references (other recipes and hardware; context, not a like-for-like comparison):

* Unsloth's Hugging Face blog benchmark: Llama-2-7B QLoRA on a Colab T4, 1.95x faster and 43% less memory than
  plain transformers + peft (https://huggingface.co/blog/unsloth-trl);
* torchtune's README table: Llama-3.1-8B QLoRA on one RTX 4090, 7.4 GiB peak memory, 2,413 tokens/s
  (https://github.com/pytorch/torchtune; its own batch/sequence settings).

Without a CUDA GPU the script says so and exits with status 0 (nothing measured). Needs torch, transformers, peft,
accelerate, bitsandbytes (and optionally trl). On a machine without a package index:
``pip install --no-index --find-links <wheel folder> bitsandbytes trl``.

    python benchmarks/gpu_qlora.py                               # Llama-3.1-8B, seq 512 and 2048, batch from the preset
    python benchmarks/gpu_qlora.py --batch-size 2 --seq-lens 512 2048 4096 --peak-tflops 989
    python benchmarks/gpu_qlora.py --cpu-test                    # code-path check on a CPU: tiny model, 2 steps

Writes benchmarks/results/gpu_qlora.json and .md (``gpu_qlora_cpu_test.*`` with ``--cpu-test``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network; fail fast if something tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))  # ragcourse without installing it

GIB = 2**30
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, TFLOP/s; matched in order on the device name.
PEAK_BF16_TFLOPS: list[tuple[str, float | None]] = [  # None: not known here, pass --peak-tflops
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A10G", None),
    ("L40S", 362.05),
    ("L40", 181.05),
    ("L4", 121.0),
    ("A10", 125.0),
    ("A6000", 154.8),
    ("RTX 4090", 165.2),
    ("RTX 3090", 71.0),
]
PUBLISHED = [
    {
        "source": "Unsloth on the Hugging Face blog (https://huggingface.co/blog/unsloth-trl)",
        "setup": "Llama-2-7B QLoRA, Colab T4",
        "figure": "1.95x faster, 43% less memory than plain transformers",
    },
    {
        "source": "torchtune README (https://github.com/pytorch/torchtune)",
        "setup": "Llama-3.1-8B QLoRA, 1x RTX 4090",
        "figure": "7.4 GiB peak memory, 2,413 tokens/s",
    },
]


def peak_tflops(name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return value
    return None


# -- the model ------------------------------------------------------------------------------------------------------


def build_model(arch: str, device: str, dtype: Any, seed: int = 0) -> Any:
    """The architecture with random weights: decoder linears as NF4+double-quant ``bnb.nn.Linear4bit`` (drawn and
    quantized one at a time on ``device``), everything else drawn in ``dtype``."""
    import bitsandbytes as bnb
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    from ragcourse.lora import arch_config

    config = arch_config(arch)
    config.use_cache = False
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    head = model.get_output_embeddings()
    gen = torch.Generator(device=device).manual_seed(seed)
    std = getattr(config, "initializer_range", 0.02)
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear or child is head:
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=dtype,
                compress_statistics=True,
                quant_type="nf4",
                quant_storage=torch.uint8,
                device="meta",
            )
            w = torch.empty(child.out_features, child.in_features, dtype=dtype, device=device).normal_(
                0, std, generator=gen
            )
            q.weight = bnb.nn.Params4bit(
                w, requires_grad=False, quant_type="nf4", compress_statistics=True, quant_storage=torch.uint8, module=q
            ).to(device)
            del w
            if child.bias is not None:
                q.bias = torch.nn.Parameter(
                    torch.zeros(child.out_features, dtype=dtype, device=device), requires_grad=False
                )
            setattr(parent, child_name, q)
    for module in model.modules():
        is_norm = "norm" in type(module).__name__.lower()
        for name, param in list(module.named_parameters(recurse=False)):
            if param.device.type != "meta":
                continue
            data = torch.empty(param.shape, dtype=dtype, device=device)
            data.fill_(1.0) if is_norm else data.normal_(0, std, generator=gen)
            module._parameters[name] = torch.nn.Parameter(data, requires_grad=False)
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf is not None and buf.device.type != device:
                module._buffers[name] = buf.to(device)
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.is_loaded_in_4bit = True  # what transformers sets after a bitsandbytes load; peft reads it
    if device == "cpu":
        from ragcourse.models import disable_cpu_inference_repack

        disable_cpu_inference_repack(model)
    return model


def matmul_params(model: Any) -> tuple[int, int]:
    """(weights of the frozen matmuls: decoder linears + output head, trainable LoRA parameters)."""
    import torch

    frozen = 0
    for name, module in model.named_modules():
        # bnb.nn.Linear4bit is an nn.Linear; peft's wrappers are not (their base_layer is counted instead)
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            frozen += module.in_features * module.out_features
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return frozen, trainable


def total_params(model: Any) -> int:
    """Parameters of the base model, 4-bit layers counted as their unpacked size (tied weights once)."""
    import bitsandbytes as bnb

    total = sum(p.numel() for p in model.parameters() if not isinstance(p, bnb.nn.Params4bit))
    return total + sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))


# -- one sequence length --------------------------------------------------------------------------------------------


def measure(
    model: Any,
    optimizer: Any,
    batch: int,
    seq: int,
    warmup: int,
    steps: int,
    device: str,
    dtype: Any,
    fused: bool,
    vocab: int,
) -> dict[str, Any]:
    import torch

    cuda = device == "cuda"
    gen = torch.Generator(device="cpu").manual_seed(seq)
    autocast = torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32)

    def step() -> float:
        ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(device)
        with autocast:
            out = model(input_ids=ids, labels=ids, **({"fused_lm_head": True} if fused else {}))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())

    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    row: dict[str, Any] = {
        "seq_len": seq,
        "batch_size": batch,
        "tokens_per_step": batch * seq,
        "s_per_step": round(sum(times) / len(times), 4),
        "s_per_step_all": [round(t, 4) for t in times],
        "tokens_per_s": round(batch * seq * len(times) / sum(times), 1),
        "loss_last": round(losses[-1], 4),
    }
    if cuda:
        free, total = torch.cuda.mem_get_info()
        row.update(
            {
                "max_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
                "max_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 3),
                "device_used_gib_after": round((total - free) / GIB, 3),
            }
        )
    return row


def estimate_row(arch: str, cfg: Any, batch: int, seq: int, fused: bool, device: str) -> dict[str, Any]:
    from ragcourse import memory
    from ragcourse.lora import resolve_target_modules

    targets = resolve_target_modules(cfg.lora.target_modules)
    base = dict(
        model=arch,
        weights="nf4-dq" if cfg.quantization.bnb_4bit_use_double_quant else "nf4",
        compute_dtype="bfloat16" if device == "cuda" else "float32",
        lora_r=cfg.lora.r,
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        lora_dropout=cfg.lora.lora_dropout,
        batch_size=batch,
        seq_len=seq,
        gradient_checkpointing=cfg.training.gradient_checkpointing,
        optimizer="paged_adamw_8bit" if device == "cuda" else "adamw_torch",
        loss="fused" if fused else "full",
        padded=False,
        device="cuda" if device == "cuda" else "cpu",
    )
    upcast = memory.estimate(memory.MemorySpec(**base, upcast_non_quantized=True))
    plain = memory.estimate(memory.MemorySpec(**base))  # what memory.spec_from_config assumes (no upcast)
    return {
        "estimate_torch_allocated_gib": round(upcast.torch_allocated / GIB, 3),
        "estimate_total_gib": round(upcast.total / GIB, 3),
        "estimate_breakdown_gib": {k: round(v, 3) for k, v in upcast.breakdown().items()},
        "estimate_without_upcast_torch_allocated_gib": round(plain.torch_allocated / GIB, 3),
    }


# -- reporting ------------------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"QLoRA on {result['device']} ({result['created_at']}): {result['arch']} with random weights, "
        f"{result['recipe']}. MFU = ({result['flops_formula']}) × tokens/s ÷ {result['peak_tflops']} TFLOP/s "
        f"(dense bf16 peak{'' if result['peak_tflops'] else ': unknown, pass --peak-tflops'}).",
        "",
        "| seq | batch | s/step | tokens/s | MFU | 6N-MFU | max allocated GiB | estimate: allocated | "
        "max reserved GiB | device used GiB | estimate: total (+0.5 context) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}"

    def err(est: float, got: float | None) -> str:
        return "" if got is None else f" ({100 * (est - got) / got:+.0f}%)"

    for r in result["rows"]:
        if "error" in r:
            lines.append(
                f"| {r['seq_len']} | {r['batch_size']} | {r['error']} | | | | | "
                f"{num(r.get('estimate_torch_allocated_gib'))} | | | {num(r.get('estimate_total_gib'))} |"
            )
            continue
        alloc, used = r.get("max_allocated_gib"), r.get("device_used_gib_after")
        est_a, est_t = r["estimate_torch_allocated_gib"], r["estimate_total_gib"]
        lines.append(
            f"| {r['seq_len']} | {r['batch_size']} | {r['s_per_step']:.3f} | {r['tokens_per_s']:,.0f} | "
            f"{pct(r.get('mfu'))} | {pct(r.get('mfu_6n'))} | {num(alloc)} | {est_a:.2f}{err(est_a, alloc)} | "
            f"{num(r.get('max_reserved_gib'))} | {num(used)} | {est_t:.2f}{err(est_t, used)} |"
        )
    lines += ["", "Published references (other recipes; context, not like for like):", ""]
    lines += [f"- {p['setup']}: {p['figure']} — {p['source']}" for p in result["published"]]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="llama-3.1-8b", help="a ragcourse/archs name (default llama-3.1-8b)")
    parser.add_argument("--preset", default="gpu-24gb", help="LoRA/training settings from configs/<preset>.yaml")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--batch-size", type=int, help="default: the preset's per_device_train_batch_size")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak (default: from the device name)")
    parser.add_argument(
        "--loss",
        choices=["auto", "fused", "full"],
        default="auto",
        help="fused: TRL's chunked LM head (the course's SFTTrainer); full: model(labels=); auto: fused if trl imports",
    )
    parser.add_argument(
        "--time-limit", type=float, default=540, help="skip further sequence lengths after this many seconds"
    )
    parser.add_argument(
        "--cpu-test", action="store_true", help="check the code path on a CPU (smollm2-135m, seq 64, 1+1 steps)"
    )
    parser.add_argument("--results", help="JSON path (default benchmarks/results/gpu_qlora[_cpu_test].json)")
    args = parser.parse_args()
    started = time.perf_counter()

    try:
        import torch
    except ImportError:
        print("torch is not installed: nothing measured.")
        return 0
    if not torch.cuda.is_available() and not args.cpu_test:
        print(
            "No CUDA GPU here (torch.cuda.is_available() is False): nothing measured. Run this script on a machine "
            "with an NVIDIA GPU, or pass --cpu-test to check the code path on a CPU."
        )
        return 0
    try:
        import bitsandbytes  # noqa: F401
        import peft  # noqa: F401
    except ImportError as exc:
        print(
            f"{exc.name} is missing: pip install bitsandbytes peft (offline: pip install --no-index --find-links "
            "<wheel folder> bitsandbytes). Nothing measured."
        )
        return 2

    from peft import prepare_model_for_kbit_training

    from ragcourse import runtime
    from ragcourse.config import load_config
    from ragcourse.lora import get_peft_model, lora_config

    device = "cpu" if args.cpu_test else "cuda"
    if args.cpu_test:
        args.arch, args.seq_lens, args.warmup, args.steps = "smollm2-135m", [64], 1, 1
        args.batch_size = args.batch_size or 2
    cfg = load_config(args.preset)
    batch = args.batch_size or cfg.training.per_device_train_batch_size
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    fused = False
    if args.loss in ("auto", "fused"):
        try:
            from trl.trainer.utils import add_fused_lm_head

            fused = True
        except Exception as exc:  # trl missing, or an import error inside it
            if args.loss == "fused":
                print(f"--loss fused needs trl ({exc!r}).")
                return 2
            print(f"trl not importable ({exc.__class__.__name__}): using the model's full-logits loss")
    device_name = torch.cuda.get_device_name(0) if device == "cuda" else f"{platform.machine()} CPU (code-path test)"
    peak = args.peak_tflops or (peak_tflops(device_name) if device == "cuda" else None)
    print(f"{device_name}: building {args.arch} with random NF4 weights ...", flush=True)

    t0 = time.perf_counter()
    model = build_model(args.arch, device, dtype)
    build_s = time.perf_counter() - t0
    weights_gib = torch.cuda.memory_allocated() / GIB if device == "cuda" else None
    n_total = total_params(model)
    if fused:
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # as SFTTrainer does, before peft
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)  # as load_model_for_training
    if cfg.training.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model = get_peft_model(model, lora_config(cfg))
    if device == "cuda":
        for p in model.parameters():  # TRL keeps QLoRA adapters in bf16, and the course leaves them so with bf16
            if p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    if device == "cuda":
        import bitsandbytes as bnb

        optimizer = bnb.optim.PagedAdamW8bit(trainable, lr=cfg.training.learning_rate)
    else:
        optimizer = torch.optim.AdamW(trainable, lr=cfg.training.learning_rate)

    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    layers, heads = text.num_hidden_layers, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    n_frozen, n_lora = matmul_params(model)
    formula = "4·N_frozen + 6·N_lora + 12·L·d·T"
    rows = []
    for seq in args.seq_lens:
        if time.perf_counter() - started > args.time_limit:
            rows.append({"seq_len": seq, "batch_size": batch, "error": "skipped (time limit)"})
            continue
        est = estimate_row(args.arch, cfg, batch, seq, fused, device)
        try:
            row = measure(model, optimizer, batch, seq, args.warmup, args.steps, device, dtype, fused, text.vocab_size)
        except torch.cuda.OutOfMemoryError as exc:
            row = {"seq_len": seq, "batch_size": batch, "error": "out of memory", "detail": str(exc).splitlines()[0]}
            optimizer.zero_grad(set_to_none=True)
        row.update(est)
        if "tokens_per_s" in row:
            flops_token = 4 * n_frozen + 6 * n_lora + 12 * layers * heads * head_dim * seq
            row["model_flops_per_token"] = flops_token
            row["mfu"] = round(flops_token * row["tokens_per_s"] / (peak * 1e12), 4) if peak else None
            row["mfu_6n"] = round(6 * n_total * row["tokens_per_s"] / (peak * 1e12), 4) if peak else None
        rows.append(row)
        print({k: v for k, v in row.items() if k not in ("estimate_breakdown_gib", "s_per_step_all")}, flush=True)
        if device == "cuda":
            torch.cuda.empty_cache()

    result = {
        "device": device_name,
        "arch": args.arch,
        "preset": args.preset,
        "device_kind": device,
        "recipe": (
            f"NF4+DQ, LoRA r={cfg.lora.r} alpha={cfg.lora.lora_alpha} dropout={cfg.lora.lora_dropout} on "
            f"{cfg.lora.target_modules}, {'bf16 autocast, ' if device == 'cuda' else ''}"
            f"{'gradient checkpointing, ' if cfg.training.gradient_checkpointing else ''}"
            f"{'paged 8-bit AdamW' if device == 'cuda' else 'AdamW'}, "
            f"{'TRL fused LM head' if fused else 'full-logits loss'}"
        ),
        "peak_tflops": peak,
        "flops_formula": formula,
        "n_frozen_matmul_params": n_frozen,
        "n_lora_params": n_lora,
        "n_params_total": n_total,
        "build_seconds": round(build_s, 1),
        "weights_allocated_gib": None if weights_gib is None else round(weights_gib, 3),
        "rows": rows,
        "published": PUBLISHED,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "versions": {**runtime.versions(), "cuda": torch.version.cuda},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    out = (
        Path(args.results)
        if args.results
        else HERE / "results" / ("gpu_qlora_cpu_test.json" if args.cpu_test else "gpu_qlora.json")
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    print(f"written to {out} and {out.with_suffix('.md')} ({result['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
