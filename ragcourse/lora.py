"""LoRA configuration (notebook 02, "LoRA config exploration").

Which layers get adapters, how many parameters that trains, and a small measured rank × target sweep.
Every count works from a model's *configuration* alone: the model is built on the meta device (shapes,
no weights, no memory), so counting an 8B model takes about a second on a laptop and needs no download.

* :func:`arch_config` / :func:`available_archs` — the architecture configs shipped in ``ragcourse/archs``
  (published numbers of the models the presets name), or any local folder / embedded model.
* :func:`target_module_candidates` — attention projections, MLP projections, "all-linear" (section 2).
* :func:`lora_config` — a ``peft.LoraConfig`` from ``cfg.lora`` (section 1).
* :func:`count_lora_parameters` — trainable LoRA parameters for any (rank, targets); equal to what
  peft reports on the real model (section 3, and ``tests/test_lora.py``).
* :func:`load_or_run_sweep` — rank {4, 8, 16, 32} × attention-only vs all-linear, a few steps each:
  validation loss and seconds per step, cached as JSON (section 5).
"""

from __future__ import annotations

import functools
import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .config import CourseConfig, project_root

if TYPE_CHECKING:  # pragma: no cover
    from peft import LoraConfig
    from transformers import PretrainedConfig, PreTrainedModel

ATTENTION_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]
# Named target sets the notebook compares; any list of module names (peft's suffix match) works too.
TARGET_SETS: dict[str, list[str] | str] = {
    "q,v": ["q_proj", "v_proj"],  # the original LoRA paper's choice
    "attention": ATTENTION_MODULES,
    "mlp": MLP_MODULES,
    "all-linear": "all-linear",  # every linear layer but the output head (peft's own shorthand)
}
SWEEP_RANKS = (4, 8, 16, 32)
SWEEP_TARGETS = ("attention", "all-linear")
_ATTENTION_PARENTS = ("attn", "attention")
_MLP_PARENTS = ("mlp", "feed_forward", "ffn")


# -- architecture configs ------------------------------------------------------------------


def _arch_dir() -> Path:
    return Path(__file__).resolve().parent / "archs"


def available_archs() -> list[str]:
    """Names of the shipped architecture configs (``ragcourse/archs/*.json``), smallest first (section 3)."""
    return sorted((p.stem for p in _arch_dir().glob("*.json")), key=lambda n: arch_info(n)["parameters"])


@functools.lru_cache(maxsize=None)
def _arch_json(name: str) -> dict[str, Any]:
    path = _arch_dir() / f"{name}.json"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in _arch_dir().glob("*.json")))
        raise KeyError(f"No architecture config {name!r}; shipped ones: {shipped}.")
    return json.loads(path.read_text(encoding="utf-8"))


def arch_info(name: str) -> dict[str, Any]:
    """Display name, source, published parameter count and model references of a shipped architecture (section 2)."""
    data = _arch_json(name)
    return {
        "arch": name,
        "name": data["_name"],
        "source": data["_source"],
        "parameters": data["_parameters"],
        "models": list(data["_models"]),
    }


def arch_for_model(ref: str) -> str | None:
    """The shipped architecture config whose model references include ``ref`` (a preset's ``model.name``; section 3)."""
    for path in _arch_dir().glob("*.json"):
        if ref in _arch_json(path.stem)["_models"] or ref == path.stem:
            return path.stem
    return None


def arch_config(name: str) -> "PretrainedConfig":
    """A transformers config from a shipped architecture name (``llama-3.1-8b``), one of its model references
    (``Qwen/Qwen2.5-7B-Instruct``), or a local folder / ``embedded:`` model with a ``config.json`` (section 3)."""
    from transformers import AutoConfig

    arch = arch_for_model(name)
    if arch is not None:
        fields = {k: v for k, v in _arch_json(arch).items() if not k.startswith("_")}
        model_type = fields.pop("model_type")
        return AutoConfig.for_model(model_type, **fields)
    from .models import resolve_model

    return AutoConfig.from_pretrained(resolve_model(name))


def _config_key(config_or_name: "str | PretrainedConfig") -> str:
    if isinstance(config_or_name, str):
        return config_or_name
    return json.dumps(config_or_name.to_dict(), sort_keys=True, default=str)


@functools.lru_cache(maxsize=16)
def _empty_model_cached(key: str, config_json: str | None) -> "PreTrainedModel":
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    if config_json is None:
        config = arch_config(key)
    else:
        data = json.loads(config_json)
        config = AutoConfig.for_model(data.pop("model_type"), **data)
    with init_empty_weights():  # parameters on the meta device: shapes only, no memory
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # init_empty_weights skips the tying from_pretrained does: count a tied head once
    return model


def empty_model(config_or_name: "str | PretrainedConfig") -> "PreTrainedModel":
    """The causal LM built on the meta device from its config alone (accelerate's ``init_empty_weights``; section 3)."""
    if isinstance(config_or_name, str):
        return _empty_model_cached(config_or_name, None)
    return _empty_model_cached(_config_key(config_or_name), json.dumps(config_or_name.to_dict(), default=str))


# -- target modules ------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearLayer:
    """One ``nn.Linear`` of the model: where LoRA can go (section 2)."""

    name: str
    in_features: int
    out_features: int
    bias: bool

    @property
    def short_name(self) -> str:
        return self.name.rsplit(".", 1)[-1]

    @property
    def group(self) -> str:
        parents = self.name.lower().split(".")[:-1]
        if any(p in _ATTENTION_PARENTS or p.endswith(_ATTENTION_PARENTS) for p in parents):
            return "attention"
        if any(p in _MLP_PARENTS for p in parents):
            return "mlp"
        return "other"


def linear_layers(model_or_config: Any) -> list[LinearLayer]:
    """Every linear layer LoRA could adapt, without the output head (peft's "all-linear" leaves it out too; section 2).

    Accepts a real model, a config or a shipped architecture name (then a meta-device model is built).
    """
    import torch

    model = model_or_config if isinstance(model_or_config, torch.nn.Module) else empty_model(model_or_config)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    layers = []
    for name, module in model.named_modules():
        if module is output:
            continue
        base = getattr(module, "base_layer", None)  # already wrapped by peft: report the base layer
        if "lora_" in name or ".base_layer" in name:
            continue
        target = base if base is not None else module
        if isinstance(target, torch.nn.Linear) or type(target).__name__ in {"Linear4bit", "Linear8bitLt"}:
            in_f, out_f = _linear_shape(target)
            layers.append(LinearLayer(name, in_f, out_f, getattr(target, "bias", None) is not None))
    return layers


def _linear_shape(module: Any) -> tuple[int, int]:
    return int(module.in_features), int(module.out_features)


def target_module_candidates(model_or_config: Any) -> dict[str, list[str]]:
    """Module names grouped as peft's ``target_modules`` wants them (section 2): attention projections,
    MLP projections, and any other linear layer (the output head is never one)."""
    groups: dict[str, list[str]] = {"attention": [], "mlp": [], "other": []}
    for layer in linear_layers(model_or_config):
        names = groups[layer.group]
        if layer.short_name not in names:
            names.append(layer.short_name)
    return groups


def resolve_target_modules(targets: str | Sequence[str]) -> list[str] | str:
    """A target set name ("attention", "mlp", "all-linear", "q,v") or explicit module names, as peft wants them
    (section 2)."""
    if isinstance(targets, str):
        if targets in TARGET_SETS:
            value = TARGET_SETS[targets]
            return list(value) if isinstance(value, list) else value
        return targets  # "all-linear" or a regular expression, as peft reads a string
    return list(targets)


def matches_target(module_name: str, targets: str | Sequence[str]) -> bool:
    """peft's rule (section 2): a string is "all-linear" or a regex matched against the full name; a list matches by
    suffix."""
    resolved = resolve_target_modules(targets)
    if resolved == "all-linear":
        return True  # linear_layers() already left the output head out
    if isinstance(resolved, str):
        return re.fullmatch(resolved, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in resolved)


def adapted_layers(model_or_config: Any, targets: str | Sequence[str]) -> list[LinearLayer]:
    """The linear layers that get an adapter for ``targets`` (section 3)."""
    return [layer for layer in linear_layers(model_or_config) if matches_target(layer.name, targets)]


def count_lora_parameters(model_or_config: Any, r: int, targets: str | Sequence[str], bias: str = "none") -> int:
    """Trainable parameters of LoRA rank ``r`` on ``targets``, from the configuration alone (section 3).

    Each adapted ``in × out`` layer gets ``A`` (``r × in``) and ``B`` (``out × r``): ``r · (in + out)``.
    ``bias="lora_only"`` also trains the adapted layers' biases; ``"all"`` every bias of the model.
    """
    layers = adapted_layers(model_or_config, targets)
    count = sum(r * (layer.in_features + layer.out_features) for layer in layers)
    if bias == "lora_only":
        count += sum(layer.out_features for layer in layers if layer.bias)
    elif bias == "all":
        count += sum(layer.out_features for layer in linear_layers(model_or_config) if layer.bias)
    return count


def total_parameters(model_or_config: Any) -> int:
    """All parameters of the base model (tied embeddings counted once, as ``named_parameters`` does; section 3)."""
    import torch

    model = model_or_config if isinstance(model_or_config, torch.nn.Module) else empty_model(model_or_config)
    return sum(p.numel() for p in model.parameters())


def get_peft_model(model: "PreTrainedModel", config: "LoraConfig", **kwargs: Any) -> Any:
    """``peft.get_peft_model`` (section 1), without the one FutureWarning peft 0.21 triggers inside transformers 5
    (it reads the deprecated ``model.is_gradient_checkpointing``); any other warning still shows."""
    import warnings

    from peft import get_peft_model as _get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        return _get_peft_model(model, config, **kwargs)


def count_with_peft(model: "PreTrainedModel", r: int, targets: str | Sequence[str]) -> tuple[int, int]:
    """What peft itself reports (``get_nb_trainable_parameters``) after wrapping ``model`` (section 3); the adapters are
    removed again, so the same model can be counted for many settings."""
    from peft import LoraConfig

    peft_model = get_peft_model(
        model, LoraConfig(r=r, lora_alpha=2 * r, target_modules=resolve_target_modules(targets), task_type="CAUSAL_LM")
    )
    try:
        return peft_model.get_nb_trainable_parameters()
    finally:
        peft_model.unload()


def parameter_table(archs: Sequence[str], ranks: Sequence[int], target_sets: Sequence[str]) -> Any:
    """Trainable parameters (and % of the model) for every architecture × target set × rank (section 3)."""
    import pandas as pd

    rows = []
    for arch in archs:
        total = total_parameters(arch)
        for targets in target_sets:
            for r in ranks:
                n = count_lora_parameters(arch, r, targets)
                rows.append(
                    {
                        "model": arch_info(arch)["name"] if arch_for_model(arch) else arch,
                        "targets": targets,
                        "r": r,
                        "trainable": n,
                        "percent": 100 * n / total,
                    }
                )
    return pd.DataFrame(rows)


def lora_config(cfg: CourseConfig, **overrides: Any) -> "LoraConfig":
    """``peft.LoraConfig`` from ``cfg.lora`` (section 1); ``overrides`` replace single fields (``r=32``)."""
    from peft import LoraConfig

    settings = {**asdict(cfg.lora), **overrides}
    settings["target_modules"] = resolve_target_modules(settings["target_modules"])
    return LoraConfig(task_type="CAUSAL_LM", **settings)


def scaling(r: int, lora_alpha: float, use_rslora: bool = False) -> float:
    """The factor the update ``B·A·x`` is multiplied by: ``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA
    (section 1)."""
    return lora_alpha / (math.sqrt(r) if use_rslora else r)


# -- the measured sweep (section 5) ------------------------------------------------------------


@dataclass
class SweepSettings:
    """What the sweep of section 5 runs; a cached result is reused only when these (and the model) match."""

    ranks: list[int] = field(default_factory=lambda: list(SWEEP_RANKS))
    target_sets: list[str] = field(default_factory=lambda: list(SWEEP_TARGETS))
    steps: int = 8
    batch_size: int = 2
    train_examples: int = 16
    validation_examples: int = 8
    learning_rate: float = 1e-3
    alpha_over_r: float = 2.0  # lora_alpha = 2·r for every rank, so ranks compare at the same scaling
    seed: int = 42


def sweep_cache_path(cfg: CourseConfig) -> Path:
    """``benchmarks/results/lora_sweep_<preset>.json``: numbers a learner can load instead of recomputing
    (section 5)."""
    return project_root() / "benchmarks" / "results" / f"lora_sweep_{cfg.preset}.json"


def _completion_only_example(example: dict[str, Any], tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    prompt = tokenizer.apply_chat_template(example["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(example["prompt"] + example["completion"], tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    labels = [-100] * min(len(prompt_ids), len(ids)) + ids[len(prompt_ids) :]
    return {"input_ids": ids, "labels": labels}


def _batches(examples: list[dict[str, list[int]]], batch_size: int, pad_id: int) -> list[dict[str, Any]]:
    import torch

    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        width = max(len(e["input_ids"]) for e in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, e in enumerate(chunk):
            n = len(e["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def validation_loss(model: Any, batches: list[dict[str, Any]]) -> float:
    """Mean loss per answer token over ``batches`` (prompt tokens carry label -100; section 5)."""
    import torch

    was_training = model.training
    model.eval()
    total, tokens = 0.0, 0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = {k: v.to(model.device) for k, v in batch.items()}
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(model(**batch).loss) * n
                tokens += n
    finally:
        model.train(was_training)
    return total / max(tokens, 1)


def _train_steps(
    model: Any, batches: list[dict[str, Any]], steps: int, learning_rate: float
) -> tuple[list[float], list[float]]:
    """A plain PyTorch loop: AdamW on the trainable parameters, one batch per step. Returns losses and step times."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    cuda = model.device.type == "cuda"
    losses, seconds = [], []
    model.train()
    for step in range(steps):
        batch = {k: v.to(model.device) for k, v in batches[step % len(batches)].items()}
        start = time.perf_counter()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.detach().item())
    return losses, seconds


def run_sweep(cfg: CourseConfig, settings: SweepSettings | None = None, verbose: bool = True) -> dict[str, Any]:
    """Train the preset's model briefly for every rank × target set; validation loss and seconds per step (section 5).

    The model is loaded once as the preset loads it (4-bit where ``quantization.load_in_4bit``); each run
    wraps it with fresh adapters (same seed, same batches) and removes them afterwards.
    """
    import torch
    from peft import LoraConfig

    from .data import load_dataset
    from .hardware import detect_hardware
    from .models import load_causal_lm, load_tokenizer
    from .runtime import seed_everything, versions

    settings = settings or SweepSettings()
    hw = detect_hardware()
    tokenizer = load_tokenizer(cfg)
    dataset = load_dataset(cfg)  # the notebook ensures it first (pipeline.ensure(cfg, "dataset"))
    encode = functools.partial(_completion_only_example, tokenizer=tokenizer, max_length=cfg.model.max_length)
    train = [encode(dataset["train"][i]) for i in range(min(settings.train_examples, dataset["train"].num_rows))]
    val = [
        encode(dataset["validation"][i])
        for i in range(min(settings.validation_examples, dataset["validation"].num_rows))
    ]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    train_batches = _batches(train, settings.batch_size, pad)
    val_batches = _batches(val, max(settings.batch_size, 4), pad)

    model = load_causal_lm(cfg, hw=hw)
    if cfg.training.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    base_loss = validation_loss(model, val_batches)
    results = []
    for targets in settings.target_sets:
        for r in settings.ranks:
            seed_everything(settings.seed)
            lora = LoraConfig(
                r=r,
                lora_alpha=settings.alpha_over_r * r,
                lora_dropout=cfg.lora.lora_dropout,
                target_modules=resolve_target_modules(targets),
                use_rslora=cfg.lora.use_rslora,
                task_type="CAUSAL_LM",
            )
            peft_model = get_peft_model(model, lora)
            trainable, _ = peft_model.get_nb_trainable_parameters()
            losses, seconds = _train_steps(peft_model, train_batches, settings.steps, settings.learning_rate)
            row = {
                "targets": targets,
                "r": r,
                "lora_alpha": settings.alpha_over_r * r,
                "trainable_params": trainable,
                "val_loss": round(validation_loss(peft_model, val_batches), 4),
                # the first step pays for one-off work (allocations, kernel selection): leave it out
                "s_per_step": round(statistics.median(seconds[1:] or seconds), 3),
                "train_loss": [round(x, 4) for x in losses],
            }
            results.append(row)
            if verbose:
                print(
                    f"{targets:>10s} r={r:<3d} trainable={trainable:>10,d}  val_loss={row['val_loss']:.3f}  "
                    f"{row['s_per_step']:.2f} s/step",
                    flush=True,
                )
            model = peft_model.unload()
    return {
        "preset": cfg.preset,
        "model": cfg.model.name,
        "quantized_4bit": bool(cfg.quantization.load_in_4bit),
        "device": hw.summary(),
        "torch_threads": torch.get_num_threads(),
        "gradient_checkpointing": cfg.training.gradient_checkpointing,
        "max_length": cfg.model.max_length,
        "settings": asdict(settings),
        "val_loss_base": round(base_loss, 4),
        "results": results,
        "versions": versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _cache_matches(cached: dict[str, Any], cfg: CourseConfig, settings: SweepSettings) -> bool:
    return (
        cached.get("model") == cfg.model.name
        and cached.get("settings") == asdict(settings)
        and cached.get("quantized_4bit") == bool(cfg.quantization.load_in_4bit)
    )


def load_or_run_sweep(
    cfg: CourseConfig, recompute: bool = False, settings: SweepSettings | None = None, path: Path | None = None
) -> dict[str, Any]:
    """The sweep's numbers: loaded from the cached JSON when it matches this preset and settings, else
    measured now and written there (section 5). ``recompute=True`` always measures."""
    settings = settings or SweepSettings()
    path = path or sweep_cache_path(cfg)
    if not recompute and path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if _cache_matches(cached, cfg, settings):
            shown = path.relative_to(project_root()) if path.is_relative_to(project_root()) else path
            print(f"Loaded cached sweep from {shown} (measured {cached['created_at']} on: {cached['device']})")
            return cached
        print(f"{path.name} was measured with other settings or another model: measuring now.")
    result = run_sweep(cfg, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return result


def sweep_table(sweep: dict[str, Any]) -> Any:
    """The sweep's results as a DataFrame: one row per target set × rank (section 5)."""
    import pandas as pd

    table = pd.DataFrame(sweep["results"])
    return table[["targets", "r", "lora_alpha", "trainable_params", "val_loss", "s_per_step"]]
