"""Merging an adapter into its base, checking the merge, and adapters as swappable modules (notebook 04)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import CourseConfig
from .hardware import compute_dtype_name, detect_hardware
from .memory import CHECK_TOKENS, MERGED_MAX_SHARD_SIZE

# Largest acceptable |merged - adapter| logit difference, by the dtype the merge is done in. fp32 differs only by
# summation order; 16-bit formats round W + BA once more (bf16 keeps ~3 significant digits).
TOLERANCE = {"float32": 1e-3, "float16": 0.05, "bfloat16": 0.5}


@dataclass
class AnswerCheck:
    """Greedy answers of the adapter model and of its merge, compared (notebook 04, section 2)."""

    dtype: str
    answers: int
    differ: int
    near_ties: int  # differing answers whose first different token was within 2 x TOLERANCE of the merged model's pick

    @property
    def ok(self) -> bool:
        """fp32: every answer equal. 16-bit: every difference starts at a near-tie, which rounding W + (alpha/r)·B·A to
        16 bits may flip (each logit moves by up to TOLERANCE, so two candidates within twice that can swap)."""
        return self.differ == 0 if self.dtype == "float32" else self.differ == self.near_ties

    def summary(self) -> str:
        if self.differ == 0:
            return f"all {self.answers} greedy answers are the same after the merge ({self.dtype})"
        return (
            f"{self.differ} of {self.answers} greedy answers differ after the merge in {self.dtype}; "
            f"{self.near_ties} of them first differ at a near-tie (within 2 x {TOLERANCE[self.dtype]:g} in the logits)"
        )


def _first_divergence_margin(model: Any, tokenizer: Any, prompt: str, a: str, b: str) -> float | None:
    """The merged model's logit of its own pick minus that of the adapter model's pick, at the first token where the two
    answers differ (re-tokenized; the end-of-turn token when one of them stopped); None when no such token is found."""
    import torch

    ids_a, ids_b = (tokenizer(x, add_special_tokens=False).input_ids + [tokenizer.eos_token_id] for x in (a, b))
    n = next((i for i, (x, y) in enumerate(zip(ids_a, ids_b)) if x != y), None)
    if n is None:
        return None
    prefix = tokenizer(prompt, add_special_tokens=False).input_ids + ids_b[:n]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prefix], device=model.device), logits_to_keep=1).logits[0, -1].float()
    return float(logits[ids_b[n]] - logits[ids_a[n]])


def compare_answers(
    merged: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    answers_adapter: Sequence[str],
    answers_merged: Sequence[str],
    dtype: str,
) -> AnswerCheck:
    """Notebook 04's answer check, valid at every preset's size: count the answers that differ and, for each, whether it
    first differs where the merged model's two candidates are within ``2 x TOLERANCE[dtype]`` (a near-tie)."""
    differ = near = 0
    for prompt, a, b in zip(prompts, answers_adapter, answers_merged):
        if a == b:
            continue
        differ += 1
        margin = _first_divergence_margin(merged, tokenizer, prompt, a, b)
        near += margin is not None and margin <= 2 * TOLERANCE[dtype]
    return AnswerCheck(dtype, len(prompts), differ, near)


def merge_dtype(cfg: CourseConfig) -> str:
    """The 16-bit (or, on CPU, 32-bit) dtype to merge in: the preset's compute dtype, never 4-bit."""
    return compute_dtype_name(detect_hardware(), cfg.model.torch_dtype)


def merge_device(cfg: CourseConfig) -> str | None:
    """Where this machine merges, from the memory plan (notebook 02, section 4b): None (the GPU, or the CPU of a
    CPU-only machine) or ``"cpu"`` when the GPU cannot hold the 16-bit model. A plan that fits neither is an error."""
    from .memory import phase_plan, this_machine

    plan = phase_plan(cfg, this_machine()).phase("merge")
    if plan.where.startswith("CPU, shard"):
        raise RuntimeError(
            f"Merging {cfg.model.name} needs more memory than this machine has ({plan.note}): merge on a "
            f"machine with more host RAM, or serve the adapter unmerged (notebook 05's adapter model)."
        )
    return "cpu" if plan.where == "CPU" and detect_hardware().device == "cuda" else None


def fresh_base(cfg: CourseConfig, kind: str = "auto") -> Any:
    """A freshly loaded 16-bit (fp32 on CPU) base to merge into; never the 4-bit training model itself.

    ``original``: the released checkpoint's weights. ``dequantized``: the NF4 weights the QLoRA adapter was trained
    against, loaded in 4-bit and dequantized once into 16-bit. ``auto`` picks ``dequantized`` when the adapter was
    trained on a 4-bit base: the adapter learned to correct *those* weights, so merging into them reproduces exactly
    what was trained, with no re-quantization.
    """
    from .hardware import torch_dtype
    from .models import load_causal_lm

    if kind == "auto":
        kind = "dequantized" if cfg.quantization.load_in_4bit else "original"
    device = merge_device(cfg)
    if kind == "original":
        return load_causal_lm(cfg, quantize=False, device=device)
    if kind != "dequantized":
        raise ValueError(f"base kind must be auto, original or dequantized, got {kind!r}")
    model = load_causal_lm(cfg, quantize=True, device=device)
    model = model.dequantize(dtype=torch_dtype(merge_dtype(cfg)))
    return model


def load_adapter_model(cfg: CourseConfig, adapter_dir: str | Path | None = None, base: str = "auto") -> Any:
    """A fresh 16-bit base (see :func:`fresh_base`) with the trained adapter on top (a ``PeftModel``)."""
    from peft import PeftModel

    adapter_dir = Path(adapter_dir or cfg.artifact_dir("adapter"))
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(
            f"No adapter in {adapter_dir}: run notebook 03 or `ragcourse train --preset {cfg.preset}`."
        )
    return PeftModel.from_pretrained(fresh_base(cfg, base), str(adapter_dir))


def record_logits(model: Any, tokenizer: Any, prompts: Sequence[str], last: int = CHECK_TOKENS) -> list[Any]:
    """Next-token logits at the ``last`` positions of each prompt (its answer-side end, 128 by default), kept on the
    CPU in fp32: the reference a merge must match.

    Only those positions are computed (``logits_to_keep``) and kept: a whole prompt's logits are sequence x vocabulary
    x 4 bytes (1,700 tokens x 152k for Qwen2.5: about 1 GB a prompt), where the memory plan's merge phase counts
    ``CHECK_PROMPTS`` x ``CHECK_TOKENS`` positions (``memory.phase_plan``, part ``check_logits``).
    """
    import torch

    out = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out.append(model(**ids, logits_to_keep=last).logits[0, -last:].float().cpu())
    return out


def check_logits_bytes(logits: Sequence[Any]) -> int:
    """Host bytes of a recording from :func:`record_logits` (notebook 04 prints it)."""
    return sum(t.untyped_storage().nbytes() for t in logits)


def max_logit_difference(reference: Sequence[Any], model: Any, tokenizer: Any, prompts: Sequence[str]) -> list[float]:
    """Largest absolute difference between ``model``'s logits and the ``reference`` (:func:`record_logits`), per
    prompt."""
    return [float((ref - now).abs().max()) for ref, now in zip(reference, record_logits(model, tokenizer, prompts))]


def merge(
    cfg: CourseConfig, tokenizer: Any, prompts: Sequence[str], adapter_dir: str | Path | None = None, base: str = "auto"
) -> tuple[Any, list[float]]:
    """(merged model, logit differences): the adapter on a fresh 16-bit base, merged **in place**, and checked.

    The adapter model's logits on ``prompts`` are recorded first; ``merge_and_unload`` then computes
    W + (alpha/r)·B·A in every adapted layer of the same weights (no second copy of the model), and the merged
    model's logits are compared with the recording. The merged model runs as fast as the base.
    """
    adapter_model = load_adapter_model(cfg, adapter_dir, base).eval()
    reference = record_logits(adapter_model, tokenizer, prompts)
    merged = adapter_model.merge_and_unload().eval()
    return merged, max_logit_difference(reference, merged, tokenizer, prompts)


def check_prompts(cfg: CourseConfig, tokenizer: Any, n: int = 4) -> list[str]:
    """The first ``n`` test prompts of the dataset, chat template applied: what the merge is checked on."""
    from .data import load_dataset

    test = load_dataset(cfg)["test"]
    return [
        tokenizer.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True)
        for ex in test.select(range(min(n, test.num_rows)))
    ]


def adapter_tokenizer(cfg: CourseConfig) -> Any:
    """The tokenizer saved with the adapter (its pad token and chat template), pad token checked."""
    from .models import load_tokenizer
    from .train import ensure_pad_token

    tokenizer = load_tokenizer(cfg, str(cfg.artifact_dir("adapter")))
    ensure_pad_token(tokenizer)
    return tokenizer


def build_merged(cfg: CourseConfig) -> Path:
    """``ragcourse merge``: merge the saved adapter in place, refuse a merge outside tolerance, save it."""
    tokenizer = adapter_tokenizer(cfg)
    dtype = merge_dtype(cfg)
    merged, diffs = merge(cfg, tokenizer, check_prompts(cfg, tokenizer))
    if diffs and max(diffs) > TOLERANCE[dtype]:
        raise RuntimeError(
            f"The merged model differs from the adapter model by {max(diffs):.3g} in its logits "
            f"(tolerance for {dtype}: {TOLERANCE[dtype]:g}); not saved. Notebook 04 shows how to look."
        )
    return save_merged(merged, tokenizer, cfg, max_logit_difference=max(diffs, default=0.0), merge_dtype=dtype)


def finalize_generation_config(model: Any, tokenizer: Any) -> None:
    """Make generation stop at the chat template's end-of-turn token and pad with the (non-EOS) pad token."""
    gen = model.generation_config
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    gen.do_sample = False
    for key in ("temperature", "top_p", "top_k"):  # sampling knobs would only warn with greedy decoding
        setattr(gen, key, None)


def save_merged(model: Any, tokenizer: Any, cfg: CourseConfig, target: Path | None = None, **extra: Any) -> Path:
    """Save the merged model as safetensors with its tokenizer, chat template, generation config and manifest."""
    from .artifacts import atomic_dir, write_manifest

    target = target or cfg.artifact_dir("merged")
    finalize_generation_config(model, tokenizer)
    with atomic_dir(target) as tmp:
        # 2 GB shards: safetensors copies each shard to host RAM while writing it (the default, 50 GB, is a whole 7B
        # model).
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=MERGED_MAX_SHARD_SIZE)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, cfg, "merged", **extra)
    return target


def folder_mb(path: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()) / 2**20


def load_merged(cfg: CourseConfig) -> tuple[Any, Any]:
    """(merged model, tokenizer) from ``outputs/<preset>/merged`` as it is on disk (``pipeline.ensure`` makes it
    current)."""
    from .models import load_causal_lm, load_tokenizer

    target = cfg.artifact_dir("merged")
    if not list(target.glob("*.safetensors")):
        raise FileNotFoundError(
            f"No merged model in {target}: run notebooks/04_adapter_merge.ipynb or "
            f"`ragcourse merge --preset {cfg.preset}`."
        )
    return load_causal_lm(cfg, quantize=False, path=str(target)), load_tokenizer(cfg, str(target))


# -- adapters as modules: one per version of a rule ------------------------------------------------


def changed_figures(markdown: str) -> list[dict[str, str]]:
    """Rows of a "| Clause | Subject | Version 1 | Version 2 |" Markdown table (the regulation's change list)."""
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and re.match(r"^\d+(\.\d+)*$", cells[0]):
            rows.append({"clause": cells[0], "subject": cells[1], "v1": cells[2], "v2": cells[3]})
    return rows


RULE_QUESTIONS = ("Under FSR-7, what is the {s}?", "What does FSR-7 set as the {s}?", "FSR-7: {s}?")


def _subject(row: dict[str, str]) -> str:
    s = row["subject"]
    return s if s[:2].isupper() else s[0].lower() + s[1:]  # keep acronyms such as "FSR-7" intact


def rule_questions(changes: Sequence[dict[str, str]]) -> list[str]:
    """One question per changed figure (the first phrasing the adapters were trained on)."""
    return [RULE_QUESTIONS[0].format(s=_subject(row)) for row in changes]


def rule_examples(changes: Sequence[dict[str, str]], version: str, system_prompt: str) -> list[dict[str, Any]]:
    """Closed-book prompt/completion pairs that teach one version's figures (three phrasings per figure)."""
    out = []
    for row in changes:
        subject = _subject(row)
        for template in RULE_QUESTIONS:
            out.append(
                {
                    "prompt": [
                        {"role": "system", "content": system_prompt},
                        {"role": "user", "content": template.format(s=subject)},
                    ],
                    "completion": [{"role": "assistant", "content": f"Under FSR-7 the {subject} is {row[version]}."}],
                    "question": template.format(s=subject),
                    "key_fact": row[version],
                }
            )
    return out


def rule_adapter_dir(cfg: CourseConfig, version: str) -> Path:
    """Where notebook 04, section 5 saves the adapter for one version of the FSR-7 rules (``v1``, ``v2``)."""
    return cfg.output_dir / "adapters" / f"fsr7-{version}"


def train_rule_adapter(cfg: CourseConfig, examples: list[dict[str, Any]], target: Path, steps: int = 18) -> Path:
    """A small adapter that memorises one version of the rules (closed book): a module you can swap, not a new base.

    18 steps (about three passes over 21 examples) on cpu-smoke, measured 2026-12-02: each version's adapter recalled 6
    of its 7 changed figures; 12 steps recalled 4, the least notebook 04's self-check accepts.
    """
    import copy

    from datasets import Dataset, DatasetDict

    from .artifacts import atomic_dir
    from .models import load_tokenizer
    from .train import load_model_for_training, make_trainer

    small = copy.deepcopy(cfg)
    small.training.max_steps = steps
    small.training.eval_steps = small.training.save_steps = steps
    small.training.logging_steps = max(steps // 5, 1)
    ds = Dataset.from_list([{"prompt": e["prompt"], "completion": e["completion"]} for e in examples])
    tokenizer = load_tokenizer(cfg)
    with atomic_dir(target) as tmp:
        trainer = make_trainer(
            small,
            load_model_for_training(small),
            tokenizer,
            DatasetDict(train=ds, validation=ds),
            tmp / "checkpoints",
            disable_tqdm=True,
        )
        trainer.train()
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        import shutil

        shutil.rmtree(tmp / "checkpoints", ignore_errors=True)
    return target
