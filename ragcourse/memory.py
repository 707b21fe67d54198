"""Will it fit? Peak training memory predicted from the configuration alone (notebook 02, section 4).

Nothing is loaded: the model is built on the meta device (shapes only), accelerate's
``calculate_maximum_sizes`` gives the 16-bit size of the whole model and of its largest layer, and the
rest is arithmetic over what PyTorch, peft and bitsandbytes keep in memory during a LoRA training step:

==================== ==============================================================================
weights              frozen base weights: 32/16-bit, int8 (bitsandbytes ``Linear8bitLt``) or 4-bit NF4;
                     embeddings, norms and the output head stay in the compute dtype
quant_constants      int8: one fp32 scale per output row. NF4: one fp32 absmax per 64 weights (0.5 bit
                     per weight); with double quantization an 8-bit absmax plus one fp32 per 256 blocks
                     (0.127 bit per weight), plus each layer's small code tables
lora_params          ``r · (in + out)`` per adapted layer, in the adapter dtype
gradients            one per LoRA parameter (the base model is frozen: no gradients there)
optimizer_states     AdamW: two states per LoRA parameter (param dtype for torch, fp32 for bitsandbytes'
                     32-bit ones); 8-bit AdamW: two bytes per parameter (+ block scales). Paged optimizers
                     can spill these to CPU RAM
activations          what autograd saves for the backward pass, per token and layer (norm inputs in fp32,
                     adapter inputs, q/k/v/output of memory-efficient attention, the three MLP tensors),
                     or only each layer's input with gradient checkpointing (plus one layer recomputed);
                     the loss (full logits, or TRL's fused LM head); the largest dequantized weight
overhead             CUDA context and kernels (0.5 GiB, not counted by ``torch.cuda.memory_allocated``),
                     or on a CPU the Python process with torch/transformers/peft imported (0.45 GiB)
==================== ==============================================================================

The per-layer terms were checked tensor by tensor with ``torch.autograd.graph.saved_tensors_hooks``
on SmolLM2 (``tests/test_memory.py``), and the whole estimate against published figures
(:data:`PUBLISHED`) and against peak RSS while training on this CPU (:func:`measure_cpu_training_peak`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Sequence

GIB = 2**30
MIB = 2**20
CUDA_OVERHEAD_BYTES = int(0.5 * GIB)  # CUDA context + kernel images; outside torch's allocator
CPU_OVERHEAD_BYTES = int(0.45 * GIB)  # python + torch + transformers + peft + bitsandbytes imported: 430 MiB measured
FITS_FRACTION = 0.9  # below 90% of the card: room for allocator fragmentation and longer-than-usual batches

WEIGHT_FORMATS = ("float32", "bfloat16", "float16", "int8", "nf4", "nf4-dq")
WEIGHT_LABELS = {
    "float32": "32-bit",
    "bfloat16": "16-bit",
    "float16": "16-bit",
    "int8": "8-bit",
    "nf4": "4-bit NF4",
    "nf4-dq": "4-bit NF4 + double quant",
}
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit")
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
_INPUT_GROUPS = {
    "q_proj": "attn_in",
    "k_proj": "attn_in",
    "v_proj": "attn_in",
    "o_proj": "o_in",
    "gate_proj": "mlp_in",
    "up_proj": "mlp_in",
    "down_proj": "down_in",
}
_NF4_BLOCK, _DQ_BLOCK, _ADAM8_BLOCK, _ADAM8_MIN_SIZE = 64, 256, 256, 4096
_FUSED_TOKEN_TILE, _FUSED_VOCAB_TILE = 4096, 32768  # TRL's chunked log-prob kernel tiles


@dataclass(frozen=True)
class GpuClass:
    """A GPU size class and the memory CUDA reports for its common cards (section 4)."""

    name: str
    memory_gib: float
    examples: str


GPU_CLASSES = (
    GpuClass("T4 16 GB", 15.0, "Colab's free T4 (15.0 GiB usable)"),
    GpuClass("24 GB", 22.5, "L4, A10G (22.5 GiB usable; RTX 3090/4090 show 24.0)"),
    GpuClass("40 GB", 39.4, "A100 40GB"),
    GpuClass("80 GB", 79.2, "A100 / H100 80GB"),
)


@dataclass(frozen=True)
class MemorySpec:
    """One training setup to predict (section 4). Field names follow the course config and TRL.

    ``adapter_dtype="auto"`` follows the libraries: float32 adapters (peft's default) except on a quantized
    base with 16-bit compute, where the adapters are kept in the compute dtype (as TRL does for QLoRA).
    ``loss``: ``"fused"`` is TRL's SFTTrainer (chunked LM head, no full logits); ``"full"`` is a plain
    ``model(input_ids, labels=...)`` that materializes the logits. ``padded`` batches carry an attention
    mask, which makes transformers repeat the key/value heads for grouped-query attention.
    """

    model: str = "embedded:smollm2-135m-instruct"
    weights: str = "nf4-dq"
    compute_dtype: str = "bfloat16"
    lora_r: int = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    lora_dropout: float = 0.0
    adapter_dtype: str = "auto"
    batch_size: int = 4
    seq_len: int = 1024
    gradient_checkpointing: bool = True
    optimizer: str = "paged_adamw_8bit"
    loss: str = "fused"
    padded: bool = True
    device: str = "cuda"
    upcast_non_quantized: bool = False  # peft.prepare_model_for_kbit_training casts non-quantized params to fp32

    def __post_init__(self) -> None:
        if not isinstance(self.target_modules, str):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_FORMATS)}, got {self.weights!r}.")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.compute_dtype not in _DTYPE_BYTES:
            raise ValueError(f"compute_dtype must be float32, bfloat16 or float16, got {self.compute_dtype!r}.")
        if self.loss not in {"fused", "full"}:
            raise ValueError(f"loss must be 'fused' (TRL's SFTTrainer) or 'full', got {self.loss!r}.")
        if self.device not in {"cuda", "cpu"}:
            raise ValueError(f"device must be cuda or cpu, got {self.device!r}.")

    @property
    def quantized(self) -> bool:
        return self.weights in {"int8", "nf4", "nf4-dq"}

    @property
    def resolved_adapter_dtype(self) -> str:
        if self.adapter_dtype != "auto":
            return self.adapter_dtype
        if self.quantized and _DTYPE_BYTES[self.compute_dtype] == 2:
            return self.compute_dtype
        return "float32"


@dataclass
class MemoryEstimate:
    """Predicted peak memory of one training step, in bytes, broken down (section 4)."""

    spec: MemorySpec
    weights: int
    quant_constants: int
    lora_params: int
    gradients: int
    optimizer_states: int
    activations: int
    overhead: int
    trainable_params: int
    activation_parts: dict[str, int] = field(default_factory=dict)

    COMPONENTS = (
        "weights",
        "quant_constants",
        "lora_params",
        "gradients",
        "optimizer_states",
        "activations",
        "overhead",
    )

    @property
    def total(self) -> int:
        return sum(getattr(self, c) for c in self.COMPONENTS)

    @property
    def torch_allocated(self) -> int:
        """What PyTorch's allocator holds at the peak (``torch.cuda.max_memory_allocated``): total minus overhead."""
        return self.total - self.overhead

    @property
    def pageable(self) -> int:
        """Bytes a paged optimizer can move to CPU RAM when the GPU runs short."""
        return self.optimizer_states if self.spec.optimizer.startswith("paged") else 0

    def breakdown(self, unit: int = GIB) -> dict[str, float]:
        """Each component (and the total) in GiB, or in ``unit`` bytes."""
        out = {c: getattr(self, c) / unit for c in self.COMPONENTS}
        out["total"] = self.total / unit
        return out

    def verdict(self, gpu: GpuClass) -> str:
        """ "fits", "tight", "fits with paging" or "does not fit" on one GPU class."""
        capacity = gpu.memory_gib * GIB
        if self.total <= FITS_FRACTION * capacity:
            return "fits"
        if self.total <= capacity:
            return "tight"
        if self.pageable and self.total - self.pageable <= capacity:
            return "fits with paging"
        return "does not fit"

    def verdicts(self, gpus: Sequence[GpuClass] = GPU_CLASSES) -> dict[str, str]:
        return {gpu.name: self.verdict(gpu) for gpu in gpus}

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v:.2f}" for k, v in self.breakdown().items() if k != "total")
        return f"{self.total / GIB:.2f} GiB ({parts})"


# -- the model's shapes -------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchShapes:
    """The numbers of an architecture the estimate needs, read from its meta-device model (section 4)."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    quantizable: tuple[tuple[str, int, int], ...]  # decoder linear layers: (name, in, out)
    other_params: int  # embeddings, norms, biases, an untied output head: never quantized
    total_params: int
    fp32_bytes: int  # accelerate's calculate_maximum_sizes on the fp32 meta model
    largest_layer_bytes: int


_SHAPES: dict[str, ArchShapes] = {}


def arch_shapes(model: str) -> ArchShapes:
    """Shapes of ``model`` (a shipped architecture name or model reference) from its config alone (section 4)."""
    if model in _SHAPES:
        return _SHAPES[model]
    from accelerate.utils import calculate_maximum_sizes

    from .lora import empty_model, linear_layers

    meta = empty_model(model)
    config = meta.config.get_text_config()
    linears = linear_layers(meta)
    quantizable = tuple((layer.name, layer.in_features, layer.out_features) for layer in linears)
    total = sum(p.numel() for p in meta.parameters())
    fp32_bytes, (largest, _) = calculate_maximum_sizes(meta)
    heads = config.num_attention_heads
    shapes = ArchShapes(
        hidden=config.hidden_size,
        intermediate=config.intermediate_size,
        layers=config.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(config, "num_key_value_heads", None) or heads,
        head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
        vocab=config.vocab_size,
        quantizable=quantizable,
        other_params=total - sum(i * o for _, i, o in quantizable),
        total_params=total,
        fp32_bytes=int(fp32_bytes),
        largest_layer_bytes=int(largest),
    )
    _SHAPES[model] = shapes
    return shapes


# -- the estimate -----------------------------------------------------------------------------


def _weight_bytes(shapes: ArchShapes, spec: MemorySpec) -> tuple[int, int]:
    """(weights, quantization constants)."""
    e = _DTYPE_BYTES[spec.compute_dtype]
    if not spec.quantized:
        return shapes.total_params * _DTYPE_BYTES[spec.weights], 0
    other = shapes.other_params * (4 if spec.upcast_non_quantized else e)
    weights, constants = other, 0
    for _, n_in, n_out in shapes.quantizable:
        n = n_in * n_out
        if spec.weights == "int8":
            weights += n
            constants += 4 * n_out  # SCB: one fp32 scale per output row
            continue
        weights += (n + 1) // 2  # two 4-bit values per byte
        blocks = -(-n // _NF4_BLOCK)
        constants += 16 * 4  # the NF4 code table, one per layer
        if spec.weights == "nf4":
            constants += 4 * blocks
        else:  # double quantization: 8-bit absmax, fp32 absmax per 256 blocks, offset, 8-bit code table
            constants += blocks + 4 * -(-blocks // _DQ_BLOCK) + 4 + 256 * 4
    return weights, constants


def _optimizer_bytes(lora_shapes: list[int], param_bytes: int, optimizer: str) -> int:
    if optimizer in {"adamw_torch", "adamw_torch_fused"}:
        return sum(2 * n * param_bytes for n in lora_shapes)  # exp_avg, exp_avg_sq in the parameter dtype
    if optimizer == "paged_adamw_32bit":
        return sum(2 * n * 4 for n in lora_shapes)  # bitsandbytes keeps 32-bit states in fp32
    total = 2 * 256 * 4  # the shared 8-bit quantization maps
    for n in lora_shapes:
        if n >= _ADAM8_MIN_SIZE:  # bitsandbytes keeps small tensors in 32-bit
            total += 2 * n + 2 * 4 * -(-n // _ADAM8_BLOCK)
        else:
            total += 2 * n * 4
    return total


def layer_activation_bytes(spec: MemorySpec, shapes: ArchShapes | None = None) -> dict[str, int]:
    """Bytes autograd saves per token in one decoder layer, by part (section 4; checked with saved-tensor hooks).

    * ``norms``: both RMSNorms save their input in fp32 (the upcast copy under 16-bit) and 1/rms;
    * ``adapter_inputs``: what each adapter's ``lora_A`` saves. One shared copy per input when adapters
      and activations have the same dtype and no dropout; else one copy per adapted layer (the dtype cast,
      or the dropout output plus its mask). int8 base layers save their input whether adapted or not;
      NF4 and 16-bit frozen layers save nothing. The ``o_proj`` input is the attention output itself;
    * ``lora_hidden``: each adapter's ``r`` wide intermediate;
    * ``attention``: q, k, v and the output of memory-efficient attention, and its fp32 log-sum-exp
      (k and v repeated to all heads when a padding mask is passed);
    * ``mlp``: gate output, its activation and the up projection.
    """
    shapes = shapes or arch_shapes(spec.model)
    from .lora import adapted_layers

    h, i, heads, kv, d = shapes.hidden, shapes.intermediate, shapes.heads, shapes.kv_heads, shapes.head_dim
    e = _DTYPE_BYTES[spec.compute_dtype]
    a = _DTYPE_BYTES[spec.resolved_adapter_dtype]
    autocast = spec.device == "cuda" and e == 2 and a == 4  # Trainer's bf16/fp16 mixed precision
    c = e if autocast else a
    per_module_copy = spec.lora_dropout > 0 or autocast or c != e
    mask_bytes = 1 if spec.device == "cuda" else c

    first_layer = [layer for layer in adapted_layers(spec.model, spec.target_modules) if ".layers.0." in layer.name]
    groups: dict[str, list[int]] = {}
    for layer in first_layer:
        groups.setdefault(_INPUT_GROUPS.get(layer.short_name, layer.name), []).append(layer.in_features)
    widths = {"attn_in": h, "o_in": heads * d, "mlp_in": h, "down_in": i}
    shared_saved = set()
    adapter_inputs = lora_hidden = 0
    for group, ins in groups.items():
        lora_hidden += len(ins) * spec.lora_r * c
        if spec.lora_dropout > 0:
            adapter_inputs += sum(w * (c + mask_bytes) for w in ins)
        elif per_module_copy:
            adapter_inputs += sum(w * c for w in ins)
        elif group != "o_in":
            adapter_inputs += ins[0] * e
            shared_saved.add(group)
    if spec.weights == "int8":  # MatMul8bitLt keeps its input for the backward pass
        adapter_inputs += sum(w * e for g, w in widths.items() if g != "o_in" and g not in shared_saved)
    kv_saved = heads if (spec.padded and kv < heads) else kv
    return {
        "norms": 2 * (4 * h + 4),
        "adapter_inputs": adapter_inputs,
        "lora_hidden": lora_hidden,
        "attention": (2 * heads * d + 2 * kv_saved * d) * e + 4 * heads,
        "mlp": 3 * i * e,
    }


def _loss_bytes(spec: MemorySpec, shapes: ArchShapes, tokens: int) -> tuple[int, int]:
    """(saved for backward, extra transient at the loss's backward)."""
    e = _DTYPE_BYTES[spec.compute_dtype]
    if spec.loss == "full":
        # log_softmax keeps its fp32 output; its backward holds the incoming gradient and its own result
        return tokens * (4 * shapes.vocab + 8), tokens * 8 * shapes.vocab
    tile = min(tokens, _FUSED_TOKEN_TILE) * min(shapes.vocab, _FUSED_VOCAB_TILE) * e
    return tokens * (shapes.hidden * e + 16), tile + tokens * 4 * shapes.hidden


def _shared_saved_bytes(spec: MemorySpec, shapes: ArchShapes) -> int:
    """Saved once for all layers: the final norm's input, rotary cos/sin, and the 4-D attention mask."""
    e = _DTYPE_BYTES[spec.compute_dtype]
    shared = spec.batch_size * spec.seq_len * (4 * shapes.hidden + 4) + 2 * spec.seq_len * shapes.head_dim * e
    if spec.padded:
        shared += spec.batch_size * spec.seq_len**2 * e
    return shared


def saved_bytes_without_checkpointing(spec: MemorySpec) -> int:
    """What autograd holds at the end of the forward pass without checkpointing (no transients; section 4):
    the quantity :func:`saved_activation_bytes` measures."""
    shapes = arch_shapes(spec.model)
    tokens = spec.batch_size * spec.seq_len
    per_layer = sum(layer_activation_bytes(spec, shapes).values())
    return shapes.layers * tokens * per_layer + _loss_bytes(spec, shapes, tokens)[0] + _shared_saved_bytes(spec, shapes)


def estimate(spec: MemorySpec) -> MemoryEstimate:
    """Predicted peak memory of a LoRA/QLoRA training step for ``spec``, from the configuration alone (section 4)."""
    from .lora import adapted_layers

    shapes = arch_shapes(spec.model)
    e = _DTYPE_BYTES[spec.compute_dtype]
    a = _DTYPE_BYTES[spec.resolved_adapter_dtype]
    weights, constants = _weight_bytes(shapes, spec)

    lora_tensors = []
    for layer in adapted_layers(spec.model, spec.target_modules):
        lora_tensors += [spec.lora_r * layer.in_features, spec.lora_r * layer.out_features]
    trainable = sum(lora_tensors)

    tokens = spec.batch_size * spec.seq_len
    per_layer = layer_activation_bytes(spec, shapes)
    layer_total = sum(per_layer.values())
    # Gradients flowing back through one layer: a few hidden- and intermediate-sized tensors at once.
    workspace = tokens * (2 * shapes.intermediate + 3 * shapes.hidden) * e
    loss_saved, loss_transient = _loss_bytes(spec, shapes, tokens)
    shared = _shared_saved_bytes(spec, shapes)
    parts: dict[str, int] = {}
    if spec.gradient_checkpointing:
        parts["checkpoints"] = shapes.layers * tokens * shapes.hidden * e
        recompute = tokens * layer_total + workspace
        parts["loss"] = loss_saved + loss_transient
        parts["recomputed_layer"] = max(0, recompute - parts["loss"])
    else:
        for name, value in per_layer.items():
            parts[name] = shapes.layers * tokens * value
        parts["loss"] = loss_saved + max(loss_transient, workspace)
    parts["shared"] = shared
    if spec.quantized:  # bitsandbytes dequantizes one layer's weight to the compute dtype at a time
        parts["dequantized_weight"] = max(i * o for _, i, o in shapes.quantizable) * e
    return MemoryEstimate(
        spec=spec,
        weights=weights,
        quant_constants=constants,
        lora_params=trainable * a,
        gradients=trainable * a,
        optimizer_states=_optimizer_bytes(lora_tensors, a, spec.optimizer),
        activations=sum(parts.values()),
        overhead=CUDA_OVERHEAD_BYTES if spec.device == "cuda" else CPU_OVERHEAD_BYTES,
        trainable_params=trainable,
        activation_parts=parts,
    )


def lora_input_activation_bytes(spec: MemorySpec) -> int:
    """What the adapters' backward needs from the forward pass (section 4), for all layers: every adapted layer's
    input (shared inputs once; the ``o_proj`` input counted here although attention keeps it anyway) and the
    ``r`` wide intermediate. This is what the QLoRA paper calls the "LoRA input gradients" (its Figure 6
    estimates them "only for adapters and the base model weights (no attention)")."""
    from .lora import adapted_layers

    shapes = arch_shapes(spec.model)
    e = _DTYPE_BYTES[spec.compute_dtype]
    first = [layer for layer in adapted_layers(spec.model, spec.target_modules) if ".layers.0." in layer.name]
    inputs = {_INPUT_GROUPS.get(layer.short_name, layer.name): layer.in_features for layer in first}
    per_token = sum(inputs.values()) * e + len(first) * spec.lora_r * e
    return shapes.layers * spec.batch_size * spec.seq_len * per_token


# -- from the course config -----------------------------------------------------------------------


def spec_from_config(cfg: Any, device: str | None = None, **overrides: Any) -> MemorySpec:
    """The :class:`MemorySpec` of a course preset (section 4): model, 4-bit or 16-bit, LoRA, batch, ``max_length``,
    gradient checkpointing and optimizer ("auto": paged 8-bit AdamW on a GPU, AdamW on a CPU).

    ``device`` ("cuda" or "cpu") defaults to this runtime's: a CUDA GPU if there is one, else the CPU.
    """
    from .lora import resolve_target_modules

    if device is None:
        from .hardware import detect_hardware

        device = "cuda" if detect_hardware().device == "cuda" else "cpu"
    compute = (
        cfg.model.torch_dtype if cfg.model.torch_dtype != "auto" else ("float32" if device == "cpu" else "bfloat16")
    )
    q = cfg.quantization
    weights = ("nf4-dq" if q.bnb_4bit_use_double_quant else "nf4") if q.load_in_4bit else compute
    optim = cfg.training.optim
    if optim == "auto":
        optim = "paged_adamw_8bit" if device == "cuda" else "adamw_torch"
    targets = resolve_target_modules(cfg.lora.target_modules)
    values = dict(
        model=cfg.model.name,
        weights=weights,
        compute_dtype=compute,
        lora_r=cfg.lora.r,
        target_modules=targets if isinstance(targets, str) else tuple(targets),
        lora_dropout=cfg.lora.lora_dropout,
        batch_size=cfg.training.per_device_train_batch_size,
        seq_len=cfg.model.max_length,
        gradient_checkpointing=cfg.training.gradient_checkpointing,
        optimizer=optim,
        device=device,
        # the course loads 4-bit models through peft.prepare_model_for_kbit_training, which casts embeddings, norms and
        # the LM head to fp32 (ragcourse.train.load_model_for_training)
        upcast_non_quantized=q.load_in_4bit,
    )
    values.update(overrides)
    return MemorySpec(**values)


def estimate_table(specs: dict[str, MemorySpec], gpus: Sequence[GpuClass] = GPU_CLASSES) -> Any:
    """One row per named spec: the breakdown in GiB, the total and a verdict per GPU class (section 4)."""
    import pandas as pd

    rows = []
    for label, spec in specs.items():
        est = estimate(spec)
        rows.append({"setup": label, **{k: round(v, 2) for k, v in est.breakdown().items()}, **est.verdicts(gpus)})
    return pd.DataFrame(rows).set_index("setup")


# -- every phase: the memory plan ----------------------------------------------------------------

HOST_GPU_PROCESS_BYTES = int(3.0 * GIB)  # a Jupyter kernel with torch (CUDA initialised), transformers, peft imported
CHECKPOINT_SHARD_BYTES = 5 * 10**9  # hub checkpoints come in shards of at most 5 GB (Qwen2.5: ~4 GB; Llama 3.1: 5 GB)
MERGED_MAX_SHARD_SIZE = "2GB"  # save_pretrained(max_shard_size=...) for the merged model: transformers' default is 50GB
JUDGE_PROMPT_EXTRA_TOKENS = 1024  # a RAGAS judge prompt: instructions and few-shot examples around the sample
CHECK_PROMPTS, CHECK_TOKENS = 4, 128  # merge's logit check: a few prompts, their logits kept
RETRIEVAL_MODEL_PARAMS = 22_713_216  # all-MiniLM-L6-v2 (and the MiniLM-L6 cross-encoder: the same shapes), fp32


@dataclass(frozen=True)
class HardwareTarget:
    """What a preset is written for (notebook 02, section 4b): a GPU class and the host RAM beside it."""

    gpu: GpuClass | None  # None: a CPU-only preset
    host_gib: float
    host_note: str


PRESET_TARGETS: dict[str, HardwareTarget] = {
    "cpu-smoke": HardwareTarget(None, 8.0, "a laptop with 8 GiB"),
    "colab-t4": HardwareTarget(GPU_CLASSES[0], 12.7, "Colab's free tier: 12.7 GiB RAM"),
    "gpu-24gb": HardwareTarget(
        GPU_CLASSES[1], 16.0, "the smallest L4/A10G cloud machines (g6.xlarge, g5.xlarge): 16 GiB"
    ),
    "gpu-80gb": HardwareTarget(GPU_CLASSES[3], 64.0, "a single-GPU A100/H100 80GB machine: 64 GiB or more"),
}


def this_machine(hw: Any = None) -> HardwareTarget:
    """The runtime's own GPU and RAM as a target (``hardware.detect_hardware``), so :func:`phase_plan` can say where
    this machine merges or judges (notebook 04 and ``merge`` ask it; section 4b)."""
    if hw is None:
        from .hardware import detect_hardware

        hw = detect_hardware()
    gpu = GpuClass(hw.gpu_name or "GPU", hw.gpu_total_gb, "this machine's GPU") if hw.device == "cuda" else None
    return HardwareTarget(gpu, hw.ram_gb, "this machine")


@dataclass
class PhasePlan:
    """Predicted peak of one phase of the course on its preset's hardware (notebook 02, section 4b)."""

    phase: str
    notebook: str
    where: str  # "GPU", "CPU", "GPU, model under test freed first", ...
    gpu_bytes: int
    host_bytes: int
    parts: dict[str, int]
    note: str = ""


@dataclass
class MemoryPlan:
    """Every phase of one preset against its :class:`HardwareTarget` (notebook 02, section 4b)."""

    preset: str
    model: str
    target: HardwareTarget
    phases: list[PhasePlan]

    def phase(self, name: str) -> PhasePlan:
        return next(p for p in self.phases if p.phase == name)

    def spare(self, phase: PhasePlan) -> dict[str, float | None]:
        """Fraction of the GPU and of the host RAM left at the phase's peak (None: no GPU in this preset)."""
        gpu = None if self.target.gpu is None else 1 - phase.gpu_bytes / (self.target.gpu.memory_gib * GIB)
        return {"gpu": gpu, "host": 1 - phase.host_bytes / (self.target.host_gib * GIB)}

    def fits(self, margin: float = 1 - FITS_FRACTION) -> bool:
        """Every phase leaves at least ``margin`` (10%) of the GPU and of the host RAM."""
        return all(v is None or v >= margin for p in self.phases for v in self.spare(p).values())

    def table(self) -> Any:
        """One row per phase: where it runs, GPU and host GiB, spare room, and why (pandas)."""
        import pandas as pd

        rows = []
        for p in self.phases:
            spare = self.spare(p)
            rows.append(
                {
                    "phase": p.phase,
                    "notebook": p.notebook,
                    "where": p.where,
                    "GPU GiB": None if self.target.gpu is None else round(p.gpu_bytes / GIB, 1),
                    "GPU spare %": None if spare["gpu"] is None else round(100 * spare["gpu"]),
                    "host GiB": round(p.host_bytes / GIB, 1),
                    "host spare %": round(100 * spare["host"]),
                    "note": p.note,
                }
            )
        return pd.DataFrame(rows).set_index("phase")


def kv_cache_bytes(model: str, tokens: int, dtype: str = "bfloat16") -> int:
    """Keys and values of ``tokens`` cached positions (all sequences of a batch together; section 4b)."""
    s = arch_shapes(model)
    return 2 * s.layers * s.kv_heads * s.head_dim * _DTYPE_BYTES[dtype] * tokens


def inference_activation_bytes(model: str, batch: int, seq_len: int, dtype: str = "bfloat16") -> int:
    """Transient tensors of a no-grad prefill over ``batch`` × ``seq_len`` tokens (section 4b): the residual stream and
    a layer's normed input, the larger of the MLP (gate, up, their product) and attention (q, k, v, output), the padding
    mask, and the last position's logits in fp32 (``generate`` computes no others)."""
    s = arch_shapes(model)
    e = _DTYPE_BYTES[dtype]
    tokens = batch * seq_len
    attention = (2 * s.heads + 2 * s.kv_heads) * s.head_dim
    return (
        tokens * (2 * s.hidden + max(3 * s.intermediate, attention)) * e + batch * seq_len**2 + 2 * batch * s.vocab * 4
    )


def weights_bytes(model: str, weights: str, compute_dtype: str = "bfloat16") -> int:
    """Bytes of a model's weights in ``weights`` format, quantization constants included (section 4b)."""
    w, constants = _weight_bytes(
        arch_shapes(model), MemorySpec(model=model, weights=weights, compute_dtype=compute_dtype)
    )
    return w + constants


def _compute_dtype(cfg: Any) -> str:
    return cfg.model.torch_dtype if cfg.model.torch_dtype != "auto" else "bfloat16"


def _load_stream_bytes(model: str, dtype: str) -> int:
    """Host memory a 16-bit checkpoint passes through on its way to the GPU: one mapped shard, one converted tensor."""
    s = arch_shapes(model)
    full = s.total_params * _DTYPE_BYTES[dtype]
    return min(full, CHECKPOINT_SHARD_BYTES) + s.largest_layer_bytes // 2


def _merged_shard_bytes() -> int:
    return int(MERGED_MAX_SHARD_SIZE.removesuffix("GB")) * 10**9


def judge_model(cfg: Any) -> str | None:
    """The local model that judges, or None (no judge, the model under test itself, or an OpenAI-compatible server)."""
    judge = cfg.evaluation.judge
    return None if judge in {"none", "preset", "openai"} else judge


def _judge_parts(cfg: Any, dtype: str) -> tuple[dict[str, int], str]:
    """The judge's weights, KV cache and prefill (nothing when no local judge is loaded), and a note saying which."""
    judge = judge_model(cfg)
    if judge is None:
        return {}, {
            "preset": "judge: the model under test",
            "openai": "judge: an OpenAI-compatible server",
            "none": "no judge",
        }.get(cfg.evaluation.judge, "")
    from .env import needs_network
    from .lora import arch_for_model
    from .scoring import judge_max_new_tokens

    if arch_for_model(judge) is None and needs_network(judge):  # a local folder is sized from its config.json
        raise ValueError(
            f"evaluation.judge {judge!r} has no architecture config in ragcourse/archs: add one, so the "
            f"memory plan can size it."
        )
    q = cfg.quantization
    fmt = ("nf4-dq" if q.bnb_4bit_use_double_quant else "nf4") if q.load_in_4bit else dtype
    tokens = cfg.model.max_length + JUDGE_PROMPT_EXTRA_TOKENS + judge_max_new_tokens(cfg.model.max_new_tokens)
    parts = {
        "judge_weights": weights_bytes(judge, fmt, dtype),
        "judge_kv_cache": kv_cache_bytes(judge, tokens, dtype),
        "judge_activations": inference_activation_bytes(judge, 1, tokens, dtype),
    }
    return parts, f"judge: {judge} ({WEIGHT_LABELS[fmt]}), beside the model under test"


def phase_plan(cfg: Any, target: HardwareTarget | None = None) -> MemoryPlan:
    """Predicted GPU and host peak of every phase of the course for a preset (notebook 02, section 4b).

    * **load** (notebooks 00-03): one 16-bit model at a time (met in 00, the teacher of 01, wrapped in LoRA in 02,
      measured in 03 and freed before the 4-bit one loads), a generation batch, the retrieval models.
    * **train** (notebook 03): :func:`estimate` on the GPU; the host streams the 16-bit checkpoint into 4-bit.
    * **merge** (notebook 04): the 16-bit base and the adapter, merged in place (one copy of the weights), the
      largest layer's update in fp32, a few prompts' logits for the check; saved in ``MERGED_MAX_SHARD_SIZE``
      shards, each copied to the host while it is written. When the GPU cannot hold the 16-bit model, the merge
      runs on the CPU (the whole model in host RAM), or shard by shard when the host cannot hold it either.
    * **evaluation** (notebook 06): one 16-bit model (base answers with the adapter disabled), the KV cache of a
      generation batch of ``hardware.generation_batch`` (GPU or CPU) × (``max_length`` + ``max_new_tokens``), the
      retrieval models.
    * **judge** (notebook 06): a local judge model (``evaluation.judge``) beside the model under test, or alone when
      both do not fit (``where`` then says the model under test must be freed before the judge loads).
    * **serving** (notebook 05): one model answering one question at a time behind the retriever (the adapter model,
      switched off for the base; the merged model is what ``ragcourse serve`` serves, from its own process).

    Between cells a notebook may hold no more than the :data:`LIVE_PARTS` of its phases (:func:`planned_live_bytes`):
    the notebook tests count what every cell leaves alive (``ragcourse.live_weights``) and fail a cell above it.

    Host figures rest on ``HOST_GPU_PROCESS_BYTES`` for a CUDA process with the libraries imported: an allowance,
    not a measurement (no GPU on the development machine); the GPU terms follow :func:`estimate` and the KV cache is
    checked against a real cache in ``tests/test_memory.py``.
    """
    from .lora import adapted_layers

    target = target or PRESET_TARGETS.get(cfg.preset) or HardwareTarget(GPU_CLASSES[1], 16.0, "assumed")
    gpu = target.gpu is not None
    model = cfg.model.name
    shapes = arch_shapes(model)
    dtype = _compute_dtype(cfg) if gpu else "float32"
    overhead = CUDA_OVERHEAD_BYTES if gpu else 0
    host_base = HOST_GPU_PROCESS_BYTES if gpu else CPU_OVERHEAD_BYTES
    full = weights_bytes(model, dtype, dtype)
    stream = _load_stream_bytes(model, "bfloat16") if gpu else full
    adapter = (
        sum(
            cfg.lora.r * (layer.in_features + layer.out_features)
            for layer in adapted_layers(model, cfg.lora.target_modules)
        )
        * 4
    )  # fp32 adapters (peft's default)
    retrieval = 2 * RETRIEVAL_MODEL_PARAMS * 4
    largest_update = 2 * max(i * o for _, i, o in shapes.quantizable) * 4
    phases = []

    # train
    train = estimate(spec_from_config(cfg, device="cuda" if gpu else "cpu"))
    train_parts = {k: getattr(train, k) for k in MemoryEstimate.COMPONENTS}
    phases.append(
        PhasePlan(
            "train",
            "03",
            "GPU" if gpu else "CPU",
            train.total if gpu else 0,
            host_base + stream if gpu else train.total,
            train_parts,
            "the 16-bit checkpoint streams through host RAM shard by shard"
            + (", quantized to 4-bit on the GPU" if cfg.quantization.load_in_4bit else "")
            if gpu
            else "",
        )
    )

    # merge
    check = CHECK_PROMPTS * CHECK_TOKENS * shapes.vocab * 4 * 2  # the adapter model's logits, then the merged one's
    merge_parts = {
        "weights_16bit": full,
        "adapter": adapter,
        "largest_update_fp32": largest_update,
        "check_logits": check,
        "overhead": overhead,
    }
    merge_gpu = sum(merge_parts.values())
    save = min(full, _merged_shard_bytes())
    if gpu and merge_gpu <= FITS_FRACTION * target.gpu.memory_gib * GIB:
        phases.append(
            PhasePlan(
                "merge",
                "04",
                "GPU",
                merge_gpu,
                host_base + max(stream, save),
                merge_parts,
                f"merged in place; saved in {MERGED_MAX_SHARD_SIZE} shards",
            )
        )
    else:
        host = host_base + full + adapter + largest_update + check
        where, note = (
            ("CPU", "the GPU cannot hold the 16-bit model: merged on the CPU") if gpu else ("CPU", "merged in place")
        )
        if host > FITS_FRACTION * target.host_gib * GIB:
            host = host_base + min(full, CHECKPOINT_SHARD_BYTES) + adapter + largest_update + save
            where, note = (
                "CPU, shard by shard",
                "neither the GPU nor the host holds the 16-bit model: merged one shard at a time",
            )
        phases.append(PhasePlan("merge", "04", where, overhead if gpu else 0, host, merge_parts, note))

    # evaluation and serving
    from .hardware import generation_batch

    batch, tokens = generation_batch("cuda" if gpu else "cpu"), cfg.model.max_length + cfg.model.max_new_tokens
    eval_parts = {
        "weights_16bit": full,
        "adapter": adapter,
        "kv_cache": kv_cache_bytes(model, batch * tokens, dtype),
        "activations": inference_activation_bytes(model, batch, tokens, dtype),
        "retrieval_models": retrieval,
        "overhead": overhead,
    }
    eval_total = sum(eval_parts.values())
    phases.append(
        PhasePlan(
            "evaluation",
            "06",
            "GPU" if gpu else "CPU",
            eval_total if gpu else 0,
            host_base + stream if gpu else host_base + eval_total,
            eval_parts,
            f"one {WEIGHT_LABELS[dtype]} model, adapter on and off; generation batch {batch} x {tokens} tokens",
        )
    )
    judge_parts, judge_note = _judge_parts(cfg, dtype)
    if judge_parts:
        beside = {**eval_parts, "kv_cache": 0, "activations": 0, **judge_parts}
        where = "GPU" if gpu else "CPU"
        if gpu and sum(beside.values()) > FITS_FRACTION * target.gpu.memory_gib * GIB:
            beside = {**judge_parts, "retrieval_models": retrieval, "overhead": overhead}
            where, judge_note = (
                "GPU, model under test freed first",
                judge_note.replace("beside the model under test", "after the model under test is freed"),
            )
        judge_total = sum(beside.values())
        judge_stream = _load_stream_bytes(judge_model(cfg), "bfloat16") if gpu else sum(judge_parts.values())
        phases.append(
            PhasePlan(
                "judge",
                "06",
                where,
                judge_total if gpu else 0,
                host_base + judge_stream if gpu else host_base + judge_total,
                beside,
                judge_note,
            )
        )
    # load: notebooks 00-02 meet the 16-bit model (answers, the teacher that writes questions, LoRA wrapped around it)
    # and notebook 03 measures its footprint before loading the 4-bit one; one model at a time, never two
    load_parts = {
        "weights_16bit": full,
        "kv_cache": kv_cache_bytes(model, batch * tokens, dtype),
        "activations": inference_activation_bytes(model, batch, tokens, dtype),
        "retrieval_models": retrieval,
        "overhead": overhead,
    }
    load_total = sum(load_parts.values())
    phases.insert(
        0,
        PhasePlan(
            "load",
            LOAD_NOTEBOOKS,
            "GPU" if gpu else "CPU",
            load_total if gpu else 0,
            host_base + stream if gpu else host_base + load_total,
            load_parts,
            f"one {WEIGHT_LABELS[dtype]} model at a time: met, asked, wrapped, measured",
        ),
    )
    serve_parts = {
        "weights_16bit": full,
        "kv_cache": kv_cache_bytes(model, tokens, dtype),
        "activations": inference_activation_bytes(model, 1, tokens, dtype),
        "retrieval_models": retrieval,
        "overhead": overhead,
    }
    serve_total = sum(serve_parts.values())
    phases.append(
        PhasePlan(
            "serving",
            "05",
            "GPU" if gpu else "CPU",
            serve_total if gpu else 0,
            host_base + stream if gpu else host_base + serve_total,
            serve_parts,
            f"one model (the adapter switched off for the base), one question of up to {tokens} tokens at a time",
        )
    )
    return MemoryPlan(cfg.preset, model, target, phases)


# -- what each notebook may hold between cells (issue 31; checked after every cell by the notebook tests) ----------

LOAD_NOTEBOOKS = "00, 01, 02, 03"
# Parts that stay in memory between cells; activations, KV caches, the merge's fp32 update and the CUDA context
# exist only while a cell runs (or outside torch's tensors).
LIVE_PARTS = (
    "weights",
    "quant_constants",
    "lora_params",
    "gradients",
    "optimizer_states",
    "weights_16bit",
    "adapter",
    "check_logits",
    "retrieval_models",
    "judge_weights",
)
# Slack in copies of the model: tokenizers' and LlamaIndex's small tensors, a LoRA state of a few MB.
LIVE_SLACK_COPIES = 0.1


def one_copy_bytes(cfg: Any, target: HardwareTarget | None = None) -> int:
    """One copy of the preset's model in the dtype its plan counts (16-bit on a GPU, fp32 on a CPU): the unit the
    per-cell counts of ``ragcourse.live_weights`` are expressed in."""
    return phase_plan(cfg, target).phase("merge").parts["weights_16bit"]


def planned_live_bytes(plan: MemoryPlan, notebook: str, exclude: Sequence[str] = ()) -> int:
    """The most a notebook (``"04"`` or ``"04_adapter_merge"``) may hold between cells: the largest sum of
    :data:`LIVE_PARTS` (less ``exclude``) over the phases that run in it (``PhasePlan.notebook``)."""
    key = notebook[:2]
    phases = [p for p in plan.phases if key in [n.strip() for n in p.notebook.split(",")]]
    if not phases:
        raise ValueError(f"No phase of the memory plan runs in notebook {notebook}: add one to memory.phase_plan.")
    return max(sum(v for k, v in p.parts.items() if k in LIVE_PARTS and k not in exclude) for p in phases)


def live_excess(plan: MemoryPlan, notebook: str, record: dict[str, Any], one_copy: int | None = None) -> str | None:
    """None when a cell's count (``live_weights.live_bytes``) is within what its notebook's phases plan, else the
    one-line reason: how many copies the cell holds, which modules and tensors, and what the plan allows."""
    one_copy = one_copy or plan.phase("merge").parts["weights_16bit"]
    held = (record["module_bytes"] + record["large_tensor_bytes"]) / one_copy
    planned = planned_live_bytes(plan, notebook) / one_copy
    if held <= planned + LIVE_SLACK_COPIES:
        return None
    what = ", ".join(
        [f"{r['module']} {r['bytes'] / one_copy:.2f}" for r in record.get("roots", [])]
        + [f"tensor {t['tensor']} {t['bytes'] / one_copy:.2f}" for t in record.get("large_tensors", [])][:4]
    )
    return (
        f"holds {held:.2f} copies of the model ({what}); the memory plan's phases for notebook {notebook[:2]} "
        f"allow {planned:.2f} (+{LIVE_SLACK_COPIES} slack): free a model before loading the next, or plan it in "
        f"memory.phase_plan"
    )


def measured_course_peak(preset: str) -> str:
    """The largest whole-notebook peak measured by ``benchmarks/course_run.py`` for ``preset``, or "not measured
    yet"."""
    from .runtime import course_run

    runs = list(course_run(preset).values())
    if not runs:
        return "not measured yet"
    top = max(runs, key=lambda r: r["peak_rss_tree_gib"])
    return f"{top['peak_rss_tree_gib']:.1f} GiB RAM (notebook {top['notebook'][:2]})"


def presets_table(presets: Sequence[str] | None = None) -> str:
    """README's presets table, generated from each preset's memory plan (``python scripts/presets_table.py --check``
    keeps it current)."""
    from .config import available_presets, load_config
    from .lora import arch_for_model, arch_info

    lines = [
        "| preset | model | precision | written for | train | merge | evaluation | judge | serving | measured | "
        "all notebooks |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in presets or sorted(available_presets(), key=lambda n: (n != "cpu-smoke", n)):
        cfg = load_config(name)
        plan = phase_plan(cfg)
        arch = arch_for_model(cfg.model.name)
        model = (
            f"{arch_info(arch)['name']}-Instruct (embedded)"
            if cfg.model.name.startswith("embedded:") and arch
            else cfg.model.name.split("/")[-1]
        )
        gpu = plan.target.gpu is not None
        dtype = (_compute_dtype(cfg) if gpu else "float32").replace("bfloat", "bf").replace("float", "fp")
        precision = f"4-bit NF4, {dtype} compute" if cfg.quantization.load_in_4bit else f"{dtype} LoRA"
        written_for = (
            f"{plan.target.gpu.name} GPU + {plan.target.host_gib:g} GiB RAM"
            if gpu
            else f"CPU, {plan.target.host_gib:g} GiB RAM"
        )
        cells = []
        for phase in ("train", "merge", "evaluation", "judge", "serving"):
            p = next((p for p in plan.phases if p.phase == phase), None)
            if p is None:
                cells.append("–")
                continue
            cells.append(
                f"{p.gpu_bytes / GIB:.1f} / {p.host_bytes / GIB:.1f}" if gpu else f"– / {p.host_bytes / GIB:.1f}"
            )
        lines.append(
            f"| `{name}` | {model} | {precision} | {written_for} | {' | '.join(cells)} | "
            f"{measured_course_peak(name)} | ~{cfg.expected.total_minutes:g} min"
            + (f" (AVX2: ~{cfg.expected.total_minutes_avx2:g})" if cfg.expected.total_minutes_avx2 else "")
            + " |"
        )
    return "\n".join(lines)


PRESETS_TABLE_MARKERS = ("<!-- presets-table -->", "<!-- /presets-table -->")


def with_presets_table(readme: str) -> str:
    """``readme`` with the text between :data:`PRESETS_TABLE_MARKERS` replaced by :func:`presets_table` (section 4b)."""
    start, end = PRESETS_TABLE_MARKERS
    if start not in readme or end not in readme:
        raise ValueError(f"README.md lacks the markers {start} ... {end} around the presets table.")
    head, rest = readme.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{presets_table()}\n{end}{tail}"


# -- published figures ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishedFigure:
    """A memory figure someone published, the setup it describes, and how far off we may be (section 4)."""

    source: str
    what: str
    value_bytes: int
    spec: MemorySpec
    quantity: str  # which of our numbers it is compared with
    tolerance: float | None  # the relative error we accept (tests/test_memory.py checks it); None: not comparable
    note: str


def _qlora_7b(**kw: Any) -> MemorySpec:
    base = dict(
        model="llama-2-7b",
        weights="nf4-dq",
        compute_dtype="bfloat16",
        lora_r=64,
        target_modules="all-linear",
        batch_size=1,
        seq_len=512,
        gradient_checkpointing=False,
        optimizer="paged_adamw_32bit",
        loss="full",
        padded=False,
        upcast_non_quantized=True,
    )
    base.update(kw)
    return MemorySpec(**base)


def _torchtune(**kw: Any) -> MemorySpec:
    base = dict(
        model="llama-2-7b",
        compute_dtype="bfloat16",
        adapter_dtype="bfloat16",
        lora_r=8,
        lora_dropout=0.05,
        batch_size=2,
        seq_len=512,
        gradient_checkpointing=True,
        optimizer="adamw_torch",
        loss="full",
        padded=True,
    )
    base.update(kw)
    return MemorySpec(**base)


PUBLISHED = (
    PublishedFigure(
        "QLoRA paper (Dettmers et al. 2023), §2",
        "LLaMA 7B 4-bit base model",
        5_048 * 10**6,
        _qlora_7b(),
        "weights+quant_constants",
        0.20,
        "NF4 + double quant; the non-quantized embeddings, output head and norms in fp32 as the paper's code "
        "(peft's prepare_model_for_kbit_training) leaves them. MB read as 10^6 bytes. "
        "LLaMA-1 7B has Llama-2-7B's shapes.",
    ),
    PublishedFigure(
        "QLoRA paper (Dettmers et al. 2023), §2",
        "LLaMA 7B LoRA input gradients, batch 1",
        567 * 10**6,
        _qlora_7b(),
        "lora_inputs",
        0.40,
        "Adapters on every linear layer (r=64 as in the paper), sequence length 512 (Figure 6), no gradient "
        "checkpointing, bf16. The paper gives no formula; we count each adapted layer's input, including the "
        "MLP down-projection's 11,008-wide one.",
    ),
    PublishedFigure(
        "torchtune QLoRA tutorial (Llama-2-7B, peak memory reserved, training)",
        "LoRA, bf16",
        int(15.57 * GIB),
        _torchtune(weights="bfloat16", target_modules=("q_proj", "v_proj")),
        "torch_allocated",
        0.20,
        "7B_lora_single_device: r=8 on q,v, dropout 0.05, batch 2, alpaca max_seq_len 512, activation "
        "checkpointing, whole model in bf16, torch AdamW. torchtune's GB are GiB (bytes / 1024^3). Reserved "
        "memory includes the allocator's cache; its model-init peak was already 13.98 GiB.",
    ),
    PublishedFigure(
        "torchtune QLoRA tutorial (Llama-2-7B, peak memory reserved, training)",
        "QLoRA, NF4",
        int(9.29 * GIB),
        _torchtune(weights="nf4-dq", target_modules="all-linear", lora_dropout=0.0),
        "torch_allocated",
        None,
        "7B_qlora_single_device: r=8 on all linear layers, batch 2, seq 512, checkpointing. Not comparable "
        "as a training figure: the same run's model-init peak reserved was 9.13 GiB (the bf16 checkpoint passes "
        "through the GPU while it is quantized) and the caching allocator keeps that memory reserved.",
    ),
)


def _quantity(est: MemoryEstimate, quantity: str) -> int:
    if quantity == "weights+quant_constants":
        return est.weights + est.quant_constants
    if quantity == "lora_inputs":
        return lora_input_activation_bytes(est.spec)
    if quantity == "torch_allocated":
        return est.torch_allocated
    return getattr(est, quantity)


def published_comparison() -> Any:
    """The estimator's figure next to each published one, with the relative error (section 4)."""
    import pandas as pd

    rows = []
    for fig in PUBLISHED:
        ours = _quantity(estimate(fig.spec), fig.quantity)
        rows.append(
            {
                "source": fig.source,
                "figure": fig.what,
                "published_GiB": round(fig.value_bytes / GIB, 2),
                "estimate_GiB": round(ours / GIB, 2),
                "error_%": round(100 * (ours - fig.value_bytes) / fig.value_bytes, 1),
                "tolerance_%": None if fig.tolerance is None else round(100 * fig.tolerance),
                "note": fig.note,
            }
        )
    return pd.DataFrame(rows)


# -- measuring on this CPU ------------------------------------------------------------------------


def measure_cpu_training_peak(
    spec: MemorySpec,
    steps: int = 3,
    threads: int = 1,
    timeout: int = 1200,
    return_freed_memory: bool = True,
    release_checkpoint_mapping: bool | None = None,
) -> dict[str, Any]:
    """Train the embedded SmolLM2 for a few steps on random tokens in a fresh Python process and return
    its peak resident memory (the kernel's high-water mark, ``VmHWM``) with the prediction next to it (section 6).

    A fresh process per measurement: the high-water mark of this kernel would include everything it
    did before. Only CPU specs of the embedded model (fp32 compute, torch AdamW) can be measured here.

    ``return_freed_memory`` fixes glibc's mmap threshold (``MALLOC_MMAP_THRESHOLD_``), so freed tensors go
    back to the OS and the peak is the peak of *live* memory, which is what the estimate predicts. With
    glibc's default the threshold rises after the first large free, freed blocks stay in the heap and the
    peak RSS climbs for a few steps: the CPU's version of CUDA's "reserved" above "allocated".

    ``release_checkpoint_mapping`` (default: for quantized weights) copies the non-quantized weights out of
    the memory-mapped safetensors file. transformers leaves the file mapped while any weight points into it,
    and after quantizing on a CPU the fp32 pages it read stay resident (and counted in RSS) although no tensor
    uses them: a loading artifact that the OS can reclaim and a GPU run never has. Unquantized weights are
    used straight from the mapping, so there it stays. ``checkpoint_mapped_bytes`` reports what was mapped.
    """
    if release_checkpoint_mapping is None:
        release_checkpoint_mapping = spec.quantized
    if spec.device != "cpu":
        raise ValueError("measure_cpu_training_peak measures a CPU run: pass a spec with device='cpu'.")
    payload = json.dumps(
        {
            "spec": asdict(spec),
            "steps": steps,
            "threads": threads,
            "release_checkpoint_mapping": release_checkpoint_mapping,
        }
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    if return_freed_memory:
        env["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    proc = subprocess.run(
        [sys.executable, "-m", "ragcourse.memory", "--measure", payload],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"The measuring process failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    measured = json.loads(lines[-1])
    # The imports' share is the child's own, measured before loading: a CUDA build of torch (Colab's, in the Colab
    # twin) maps about 0.4 GiB more libraries than the CPU build CPU_OVERHEAD_BYTES was measured with, and the
    # estimate is of what training adds to that.
    predicted = replace(estimate(spec), overhead=measured.get("rss_after_imports_bytes", CPU_OVERHEAD_BYTES))
    measured["predicted_bytes"] = predicted.total
    measured["predicted_breakdown_gib"] = {k: round(v, 3) for k, v in predicted.breakdown().items()}
    measured["relative_error"] = (predicted.total - measured["peak_rss_bytes"]) / measured["peak_rss_bytes"]
    measured["return_freed_memory"] = return_freed_memory
    measured["release_checkpoint_mapping"] = release_checkpoint_mapping
    return measured


def saved_activation_bytes(model: Any, **inputs: Any) -> int:
    """Bytes autograd keeps for the backward pass of one forward call (section 4): every tensor a
    ``saved_tensors_hooks`` pack hook sees, each storage once, parameters and buffers left out (how the per-layer terms
    were checked)."""
    import torch

    frozen = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    seen: dict[int, int] = {}

    def pack(t: Any) -> Any:
        storage = t.untyped_storage()
        if storage.data_ptr() not in frozen:
            seen.setdefault(storage.data_ptr(), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(**inputs).loss.backward()
    return sum(seen.values())


def _mapped_rss(suffix: str = ".safetensors") -> int:
    """Resident bytes of this process's memory-mapped files ending in ``suffix`` (Linux; 0 elsewhere)."""
    try:
        lines = open("/proc/self/smaps", encoding="utf-8").read().splitlines()
    except OSError:
        return 0
    total, inside = 0, False
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not line.startswith(("Rss:", "Size:")) and ":" not in head[0]:
            inside = line.rstrip().endswith(suffix)
        elif inside and line.startswith("Rss:"):
            total += int(head[1]) * 1024
    return total


def _peak_rss() -> int:
    """This process's peak resident memory: ``VmHWM`` on Linux, else ``getrusage``'s ``ru_maxrss``.

    Not ``ru_maxrss`` on Linux: the kernel carries it across ``exec``, so a child started from a big
    process (a notebook kernel, pytest) would report its parent's peak.
    """
    try:
        with open("/proc/self/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, kilobytes elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _measure_child(payload: dict[str, Any]) -> dict[str, Any]:
    """Runs in the fresh process of :func:`measure_cpu_training_peak`."""
    import gc
    import time

    import psutil
    import torch

    torch.set_num_threads(payload["threads"])
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from .lora import get_peft_model, resolve_target_modules
    from .models import disable_cpu_inference_repack, resolve_model

    spec = MemorySpec(**payload["spec"])
    rss = psutil.Process().memory_info
    after_imports = rss().rss
    dtype = getattr(torch, spec.compute_dtype)
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.weights in {"nf4", "nf4-dq"}:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=spec.weights == "nf4-dq",
            bnb_4bit_compute_dtype=dtype,
        )
    elif spec.weights == "int8":
        kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
    else:
        kwargs["dtype"] = getattr(torch, spec.weights)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(spec.model), **kwargs)
    disable_cpu_inference_repack(model)
    if payload.get("release_checkpoint_mapping", True):
        for tensor in [*model.parameters(), *model.buffers()]:
            if type(tensor).__name__ not in {"Params4bit", "Int8Params"}:
                tensor.data = (
                    tensor.data.clone()
                )  # the last reference into the mapped file goes, and the mapping with it
        gc.collect()
    after_load = rss().rss
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    adapter_dtype = spec.resolved_adapter_dtype
    model = get_peft_model(
        model,
        LoraConfig(
            r=spec.lora_r,
            lora_alpha=2 * spec.lora_r,
            lora_dropout=spec.lora_dropout,
            target_modules=resolve_target_modules(spec.target_modules),
            task_type="CAUSAL_LM",
        ),
        autocast_adapter_dtype=adapter_dtype == "float32",
    )
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(getattr(torch, adapter_dtype))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    seconds = []
    model.train()
    for _ in range(payload["steps"]):
        ids = torch.randint(0, vocab, (spec.batch_size, spec.seq_len), generator=generator)
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    return {
        "peak_rss_bytes": _peak_rss(),
        "rss_after_imports_bytes": after_imports,
        "rss_after_load_bytes": after_load,
        "checkpoint_mapped_bytes": _mapped_rss(),
        "seconds_per_step": sorted(seconds)[len(seconds) // 2],
        "loss": float(loss),
        "steps": payload["steps"],
        "threads": payload["threads"],
    }


if __name__ == "__main__":  # python -m ragcourse.memory --measure '{...}'
    if len(sys.argv) == 3 and sys.argv[1] == "--measure":
        print(json.dumps(_measure_child(json.loads(sys.argv[2]))), flush=True)
    else:
        print("usage: python -m ragcourse.memory --measure '<json payload>' (see measure_cpu_training_peak)")
        sys.exit(2)
