"""One configuration for the whole course (introduced in notebook 00, "Pick a preset").

A config is a tree of dataclasses. It is built in three layers, each overriding the last:

1. ``configs/<preset>.yaml`` — the preset (``cpu-smoke``, ``colab-t4``, ``gpu-24gb``, ``gpu-80gb``),
2. an optional user YAML (your own domain: ``data.corpus_dir`` and friends),
3. keyword overrides (``training={"max_steps": 5}``) or CLI ``--set training.max_steps=5``.

Unknown keys are an error that names the key and the nearest valid one. Presets change sizes,
models and steps only; the code paths are the same for every preset.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import CourseError

DEFAULT_PRESET = "cpu-smoke"
PRESET_ENV = "RAGCOURSE_PRESET"
ROOT_ENV = "RAGCOURSE_ROOT"


# Names people reach for first, mapped to the library names the config uses.
SYNONYMS = {
    "rank": "r",
    "lora_r": "r",
    "alpha": "lora_alpha",
    "dropout": "lora_dropout",
    "lr": "learning_rate",
    "epochs": "num_train_epochs",
    "batch_size": "per_device_train_batch_size",
    "top_k": "similarity_top_k",
    "model_name": "name",
    "seq_len": "max_length",
    "max_seq_length": "max_length",
}


class ConfigError(CourseError, ValueError):
    """A configuration file or override is wrong; the message says where and how to fix it."""


@dataclass
class ExpectedCost:
    """What a preset is expected to need; printed so learners can plan before they run."""

    hardware: str = "any CPU, 2 cores"
    peak_memory_gb: float = 4.0
    total_minutes: float = 20.0
    # CPU presets: the whole course on a CPU whose widest vector kernels are AVX2 (most laptops), when it differs
    total_minutes_avx2: float | None = None
    # GPU presets: a CUDA GPU is required, and ``runtime.start`` stops with the reason where none is usable (a 7B model
    # on the CPU would not fail: it would run for days). Rehearsals (``ragcourse.rehearsal``) load presets without
    # runtime.start, so they still run GPU presets' code paths on the CPU.
    needs_cuda: bool = False


@dataclass
class ModelConfig:
    """The causal LM that is fine-tuned (``name``: hub id, local folder or ``embedded:...``)."""

    name: str = "embedded:smollm2-135m-instruct"
    revision: str | None = None
    max_length: int = 512
    attn_implementation: str = "sdpa"
    # "auto" picks bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU.
    torch_dtype: str = "auto"
    max_new_tokens: int = 64
    system_prompt: str = (
        "You answer questions about Vellmark Thermal Systems using only the documents given. "
        "Cite the numbers of the passages you rely on. If the documents do not contain the answer, say so."
    )


@dataclass
class EmbeddingConfig:
    """Sentence-embedding model for retrieval (and hard-negative mining in notebook 01)."""

    name: str = "embedded:all-minilm-l6-v2"
    batch_size: int = 32


TARGET_STYLES = ("quote-then-answer", "answer-then-cite")


@dataclass
class DataConfig:
    """Documents, chunking, synthetic Q&A, RAFT examples and the split (notebook 01)."""

    corpus_dir: str = "data/corpus"
    qa_dir: str = "data/qa"
    chunk_size: int = 256
    chunk_overlap: int = 32
    # Synthetic pairs the teacher model generates; the curated set supplies the rest.
    synthetic_chunks: int = 4
    teacher: str = "preset"  # "preset" | "openai" (OPENAI_BASE_URL/OPENAI_API_KEY) | a hub id
    num_distractors: int = 3
    # The assistant target: "quote-then-answer" (RAFT's chain of thought: quote the passage, then answer) or
    # "answer-then-cite" (the answer first, then the passage number: easier for models under ~1B parameters).
    target_style: str = "quote-then-answer"
    # RAFT's P: fraction of training examples whose context contains the oracle passage.
    oracle_fraction: float = 0.8
    # Share of the training sample whose target is the refusal (None: as the questions fall). Extra refusal examples
    # come from ``refusal_source``: "near-miss" (a training question again, its oracle removed, so only the passages the
    # retriever ranks next remain) or "unanswerable" (the unanswerable questions again, their passages in another
    # order).
    refusal_share: float | None = None
    refusal_source: str = "near-miss"
    # Share of the training sample whose context carries an order in one distractor (never the oracle), the target
    # unchanged: RAFT with adversarial distractors, so the model learns to ignore orders the instruction filter misses.
    # The orders come from data.INJECTED_ORDERS_TRAIN; measured in benchmarks/injection_training.py (notebook 05, s. 9).
    injected_distractor_share: float = 0.25
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    dedup_threshold: float = 0.85
    max_train_examples: int | None = None
    max_eval_examples: int | None = None


@dataclass
class LoraSettings:
    """Arguments of ``peft.LoraConfig`` (notebook 02); names match peft's own."""

    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    use_rslora: bool = False
    bias: str = "none"


@dataclass
class QuantizationConfig:
    """Arguments of ``transformers.BitsAndBytesConfig`` (notebook 03)."""

    load_in_4bit: bool = True
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: str = "auto"
    # FSDP needs the packed 4-bit weights stored in the compute dtype ("bfloat16"); plain training: "uint8".
    bnb_4bit_quant_storage: str = "uint8"


@dataclass
class TrainingConfig:
    """Arguments of ``trl.SFTConfig`` (notebook 03); names match TRL's own."""

    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-4
    lr_scheduler_type: str = "constant"
    warmup_steps: float = 0.0  # an integer: steps; a float below 1: fraction of all steps (transformers 5)
    weight_decay: float = 0.0
    logging_steps: int = 2
    eval_steps: int = 8
    save_steps: int = 8
    save_total_limit: int = 3
    early_stopping_patience: int = 3
    gradient_checkpointing: bool = True
    # "auto": paged 8-bit AdamW on GPU, plain AdamW on CPU.
    optim: str = "auto"
    packing: bool = False
    seed: int = 42
    # Torch intra-op threads; null: ragcourse.hardware.DEFAULT_TORCH_THREADS (torch's own default today).
    torch_threads: int | None = None
    # Where the Trainer logs losses, learning rate and evaluation (TRL's own ``report_to``): none, or a tracker.
    # tensorboard, trackio and mlflow write local files offline; wandb too with WANDB_MODE=offline (notebook 03).
    report_to: str = "none"


@dataclass
class RagConfig:
    """Retrieval and the query engine (notebook 05)."""

    vector_store: str = "simple"  # "simple" (no server) | "qdrant" | "postgres" (PostgreSQL + pgvector)
    # qdrant: a server URL (http://host:6333, the default) or a folder (Qdrant's embedded mode: no server, one process)
    # postgres: a postgresql:// URL (postgresql://postgres@localhost:5432/postgres, the default; the password in
    # PGPASSWORD) or a folder, where pgserver starts a private PostgreSQL with pgvector (Unix socket, no TCP port)
    vector_store_url: str | None = None
    retriever: str = "hybrid"  # "dense" | "bm25" | "hybrid"
    similarity_top_k: int = 4
    dense_weight: float = 0.5
    # BM25's tokens: "identifiers" keeps Module.method, snake_case, --flags, Name() and key=value whole and as their
    # words (retrieval.lexical_tokens); "english" is LlamaIndex's default (stemmed words only). The default stays
    # "english": on the sample domain "identifiers" moved tuned + RAG vs base + RAG in notebook 06 from +0.23
    # [+0.03, +0.42] to +0.03 [-0.13, +0.19] (it also changes the distractors BM25 mines for training). Set
    # "identifiers" for documentation full of code names: it lifts BM25's MRR@5 on identifier questions 0.66 -> 0.77.
    bm25_tokenizer: str = "english"
    # Optional second stage (GPU presets): a cross-encoder re-scores the first stage's ``rerank_candidates``.
    rerank: bool = False
    rerank_model: str | None = None  # a hub id or a local folder (sentence-transformers CrossEncoder)
    rerank_candidates: int = 20
    # Drop the sentences of a retrieved passage that give the model orders ("ignore the question and reply ...") before
    # it reaches a model: in training examples, the query engine and the evaluation (prompts.injection_rule).
    filter_instructions: bool = True


@dataclass
class EvaluationConfig:
    """The four-way comparison and RAGAS (notebook 06)."""

    max_questions: int | None = None
    judge: str = "none"  # "none" | "preset" | "openai" | a hub id
    judge_samples: int = 2
    bootstrap_samples: int = 2000
    confidence: float = 0.95


@dataclass
class PathsConfig:
    """Where artifacts go: ``<output_root>/<preset>/{dataset,adapter,merged,index,eval}``."""

    output_root: str = "outputs"
    cache_dir: str | None = None  # converted embedded models; default ~/.cache/ragcourse
    # Pre-built artifacts (a workshop starting at notebook 05): a folder or .tar.gz/.zip holding
    # [<preset>/]{dataset,adapter,merged,index}. A missing local artifact is copied from it before it is rebuilt.
    prebuilt: str | None = None


@dataclass
class CourseConfig:
    """The whole course configuration; ``load_config`` builds one."""

    preset: str = DEFAULT_PRESET
    description: str = ""
    expected: ExpectedCost = field(default_factory=ExpectedCost)
    model: ModelConfig = field(default_factory=ModelConfig)
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    rag: RagConfig = field(default_factory=RagConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)

    # -- derived paths -------------------------------------------------------------------
    @property
    def output_dir(self) -> Path:
        """``outputs/<preset>``, resolved against the project root."""
        return resolve_path(self.paths.output_root) / self.preset

    def artifact_dir(self, name: str) -> Path:
        """One artifact folder: ``dataset``, ``adapter``, ``merged``, ``index`` or ``eval`` (a path; nothing is read).

        ``pipeline.ensure(cfg, name)`` makes its content current (reused, restored from ``paths.prebuilt``, or built).
        """
        return self.output_dir / name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


# -- locating things ---------------------------------------------------------------------


def project_root() -> Path:
    """The course checkout: ``$RAGCOURSE_ROOT``, else the nearest parent holding ``configs/``."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "configs" / f"{DEFAULT_PRESET}.yaml").is_file():
            return candidate
    package_parent = Path(__file__).resolve().parent.parent
    if (package_parent / "configs").is_dir():
        return package_parent
    raise ConfigError(
        f"Cannot find the course folder (one with configs/{DEFAULT_PRESET}.yaml) above {here}. "
        f"Run from inside the cloned repository or set {ROOT_ENV}=/path/to/ragcourse."
    )


def resolve_path(path: str | os.PathLike[str]) -> Path:
    """A config path: absolute paths and ``~`` stay as they are, relative ones hang off the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def available_presets() -> list[str]:
    return sorted(p.stem for p in (project_root() / "configs").glob("*.yaml"))


# -- loading -----------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Config file not found: {path}. Check the path (relative paths start at the course folder)."
        ) from None
    except IsADirectoryError:
        raise ConfigError(
            f"{path} is a folder, not a YAML file: pass a file such as {path / 'my-domain.yaml'}."
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): "
            f"save it as UTF-8 (without a UTF-16 byte-order mark)."
        ) from None
    except PermissionError:
        raise ConfigError(
            f"{path} cannot be read (permission denied): make it readable or copy it somewhere you own."
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}. Fix the indentation or quoting it points at.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections (model:, data:, ...), not {type(data).__name__}.")
    return data


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _coerce(value: Any, hint: Any, where: str, source: str) -> Any:
    """Check a YAML value against the field's type; accept the harmless conversions YAML needs."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[-1])
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {where} must be a list, got {value!r}.")
        return [_coerce(v, args[0], f"{where}[{i}]", source) for i, v in enumerate(value)] if args else value
    if hint is float:
        # PyYAML reads 1e-3 (no dot) as a string; accept it as the number it obviously is.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{source}: {where} must be a number, got {value!r}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {where} must be an integer, got {value!r}.")
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {where} must be true or false, got {value!r}.")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {where} must be a string, got {value!r}.")
    return value


def _build(cls: type, values: Mapping[str, Any], where: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            close = (
                [SYNONYMS[key]]
                if SYNONYMS.get(key) in names
                else difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            )
            hint = f" Did you mean '{(where + '.') if where else ''}{close[0]}'?" if close else ""
            raise ConfigError(
                f"{source}: unknown key '{(where + '.') if where else ''}{key}'.{hint} "
                f"Valid keys here: {', '.join(names)}."
            )
        full = f"{where}.{key}" if where else key
        hint_t = hints[key]
        if dataclasses.is_dataclass(hint_t):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: '{full}' must be a section (a mapping), got {value!r}.")
            kwargs[key] = _build(hint_t, value, full, source)
        else:
            kwargs[key] = _coerce(value, hint_t, full, source)
    return cls(**kwargs)


# The range of every numeric value, in interval notation ("(0, 1]": above 0, at most 1), with the keys it applies to.
# A value outside its range fails at load time, not 15 s later inside a library (or silently, as a negative top_k).
RANGES: dict[str, tuple[str, ...]] = {
    "[1, inf)": (
        "model.max_new_tokens",
        "embedding.batch_size",
        "data.max_train_examples",
        "data.max_eval_examples",
        "lora.r",
        "training.per_device_train_batch_size",
        "training.per_device_eval_batch_size",
        "training.gradient_accumulation_steps",
        "training.logging_steps",
        "training.eval_steps",
        "training.save_steps",
        "training.save_total_limit",
        "training.torch_threads",
        "rag.similarity_top_k",
        "rag.rerank_candidates",
        "evaluation.max_questions",
        "evaluation.bootstrap_samples",
    ),
    "[0, inf)": (
        "data.chunk_overlap",
        "data.synthetic_chunks",
        "data.num_distractors",
        "training.warmup_steps",
        "training.weight_decay",
        "training.early_stopping_patience",
        "training.seed",
        "evaluation.judge_samples",
    ),
    "(0, inf)": (
        "expected.peak_memory_gb",
        "expected.total_minutes",
        "expected.total_minutes_avx2",
        "lora.lora_alpha",
        "training.num_train_epochs",
    ),
    "[16, inf)": ("model.max_length", "data.chunk_size"),
    "[0, 1]": ("data.oracle_fraction", "data.refusal_share", "data.injected_distractor_share", "rag.dense_weight"),
    "(0, 1]": ("data.dedup_threshold", "training.learning_rate"),
    "[0, 1)": ("lora.lora_dropout",),
    "(0, 1)": ("evaluation.confidence",),
}

DTYPES = ("auto", "float32", "bfloat16", "float16")
# The values each enumerated key accepts (names as the libraries spell them).
CHOICES: dict[str, tuple[str, ...]] = {
    "model.torch_dtype": DTYPES,
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2", "flash_attention_3", "flex_attention"),
    "quantization.bnb_4bit_compute_dtype": DTYPES,
    "quantization.bnb_4bit_quant_storage": ("uint8", "float16", "bfloat16", "float32"),
    "quantization.bnb_4bit_quant_type": ("nf4", "fp4"),
    "lora.bias": ("none", "all", "lora_only"),
    "training.lr_scheduler_type": (
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
        "constant",
        "constant_with_warmup",
        "inverse_sqrt",
        "reduce_lr_on_plateau",
        "cosine_with_min_lr",
        "cosine_warmup_with_min_lr",
        "warmup_stable_decay",
    ),
    "data.target_style": TARGET_STYLES,
    "data.refusal_source": ("near-miss", "unanswerable"),
    "training.report_to": ("none", "tensorboard", "trackio", "wandb", "mlflow"),
    "rag.retriever": ("dense", "bm25", "hybrid"),
    "rag.bm25_tokenizer": ("identifiers", "english"),
    "rag.vector_store": ("simple", "qdrant", "postgres"),
}
# Keys that take a keyword or a model reference (a hub id with a '/', a local folder, or embedded:...).
MODEL_KEYWORDS: dict[str, tuple[str, ...]] = {
    "model.name": (),
    "embedding.name": (),
    "rag.rerank_model": (),
    "data.teacher": ("preset", "openai"),
    "evaluation.judge": ("none", "preset", "openai"),
}
DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float64": None,
    "double": None,
    "fp64": None,
}


def _value(cfg: CourseConfig, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _in_interval(value: float, interval: str) -> bool:
    """Is ``value`` in an interval written as ``[1, inf)``, ``(0, 1]`` ...? (NaN never is.)"""
    low, high = (float(x) for x in interval[1:-1].split(","))
    above = value > low if interval[0] == "(" else value >= low
    below = value < high if interval[-1] == ")" else value <= high
    return above and below


def _describe_interval(interval: str) -> str:
    low, high = (float(x) for x in interval[1:-1].split(","))
    ends = [
        f"{'greater than' if interval[0] == '(' else 'at least'} {low:g}",
        f"{'less than' if interval[-1] == ')' else 'at most'} {high:g}" if high != float("inf") else "",
    ]
    if interval[0] + interval[-1] == "[]":
        return f"between {low:g} and {high:g}"
    return " and ".join(e for e in ends if e)


def _check_range(dotted: str, value: Any, interval: str) -> None:
    if value is not None and not _in_interval(value, interval):
        raise ConfigError(f"{dotted} must be {_describe_interval(interval)}, got {value!r}.")


def _check_choice(dotted: str, value: str) -> None:
    allowed = CHOICES[dotted]
    if value in allowed or (
        dotted == "model.attn_implementation" and "/" in value
    ):  # a hub kernel, e.g. kernels-community/...
        return
    fix = DTYPE_ALIASES.get(str(value).lower()) if allowed is DTYPES else None
    if fix is None and allowed is DTYPES and str(value).lower() in DTYPE_ALIASES:
        raise ConfigError(
            f"{dotted}: {value!r} is not supported for training (too slow and twice the memory of float32): "
            f"use one of {', '.join(allowed)}."
        )
    close = [fix] if fix else difflib.get_close_matches(str(value), allowed, n=1, cutoff=0.5)
    raise ConfigError(
        f"{dotted} must be one of {', '.join(allowed)}, got {value!r}."
        + (f" Did you mean '{close[0]}'?" if close else "")
    )


def is_model_reference(ref: str) -> bool:
    """A hub id (``owner/name``), a local folder, or ``embedded:...``: anything else is taken as a typo."""
    if ref.startswith("embedded:") or "/" in ref or "\\" in ref or ref.startswith("~"):
        return True
    return Path(ref).exists() or (project_root() / ref).exists()


def _check_model_keyword(dotted: str, value: str | None) -> None:
    keywords = MODEL_KEYWORDS[dotted]
    if value is None or value in keywords or is_model_reference(value):
        return
    close = difflib.get_close_matches(value.lower(), keywords, n=1, cutoff=0.6)
    if close:
        raise ConfigError(
            f"{dotted}: {value!r} looks like a typo of the keyword '{close[0]}' "
            f"(keywords: {', '.join(keywords)}; a model is a hub id with a '/', a local folder or embedded:...)."
        )
    what = f"one of {', '.join(keywords)}, or a model" if keywords else "a model"
    raise ConfigError(
        f"{dotted}: {value!r} is neither a keyword nor a model reference: use {what} "
        f"(a hub id with its owner such as HuggingFaceTB/SmolLM2-135M-Instruct, an existing local folder, "
        f"or embedded:...)."
    )


def _validate_values(cfg: CourseConfig) -> None:
    """Range, choice and keyword checks of every numeric and enumerated value (one error, naming the key)."""
    for interval, keys in RANGES.items():
        for dotted in keys:
            _check_range(dotted, _value(cfg, dotted), interval)
    for dotted in CHOICES:
        _check_choice(dotted, _value(cfg, dotted))
    for dotted in MODEL_KEYWORDS:
        _check_model_keyword(dotted, _value(cfg, dotted))
    if cfg.training.max_steps == 0 or cfg.training.max_steps < -1:
        raise ConfigError(
            f"training.max_steps must be -1 (train for num_train_epochs) or at least 1, got {cfg.training.max_steps}."
        )
    if isinstance(cfg.lora.target_modules, list) and not cfg.lora.target_modules:
        raise ConfigError("lora.target_modules is empty: list module names (e.g. [q_proj, v_proj]) or use all-linear.")


def _validate(cfg: CourseConfig) -> None:
    _validate_values(cfg)
    fractions = cfg.data.split_fractions
    if (
        len(fractions) != 3 or not abs(sum(fractions) - 1.0) <= 1e-6 or not all(0 < f < 1 for f in fractions)
    ):  # NaN fails too
        raise ConfigError(
            "data.split_fractions must be three positive numbers summing to 1 (train, validation, test), "
            f"got {fractions}."
        )
    if cfg.data.chunk_overlap >= cfg.data.chunk_size:
        raise ConfigError(
            f"data.chunk_overlap ({cfg.data.chunk_overlap}) must be smaller than "
            f"data.chunk_size ({cfg.data.chunk_size})."
        )
    if cfg.rag.rerank and not cfg.rag.rerank_model:
        raise ConfigError(
            "rag.rerank is on but rag.rerank_model is empty: set it to a cross-encoder "
            "(e.g. cross-encoder/ms-marco-MiniLM-L-6-v2, or a local folder), or set rag.rerank: false."
        )
    if cfg.rag.rerank and cfg.rag.rerank_candidates < cfg.rag.similarity_top_k:
        raise ConfigError(
            f"rag.rerank_candidates ({cfg.rag.rerank_candidates}) must be at least rag.similarity_top_k "
            f"({cfg.rag.similarity_top_k}): the reranker can only reorder what the first stage returns."
        )


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI ``--set training.max_steps=5`` strings into a nested mapping (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects section.key=value, got {pair!r}.")
        dotted, raw = pair.split("=", 1)
        parts = dotted.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(
                f"--set {pair!r}: the key has an empty part; write it as section.key=value, e.g. training.max_steps=5."
            )
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or exc.__class__.__name__
            raise ConfigError(
                f"--set {pair!r}: the value is not valid YAML ({problem}); quote text, e.g. "
                f"--set '{dotted}=\"{raw}\"', or write a list as [a, b]."
            ) from None
        node = out
        *parents, leaf = parts
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {pair!r}: {part} was already set to a value, so it cannot hold keys.")
        node[leaf] = value
    return out


PRESET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def check_preset_name(name: Any, source: str = "--preset") -> str:
    """A preset is a name under ``configs/`` (``cpu-smoke``), never a path: a path could write outside ``outputs/``."""
    if isinstance(name, str) and PRESET_NAME.fullmatch(name):
        return name
    text = str(name)
    stem = Path(text).name.removesuffix(".yaml").removesuffix(".yml")
    hint = f" Use the name instead: {stem}." if stem != text and stem in available_presets() else ""
    if text.endswith((".yaml", ".yml")):
        hint += f" To layer your own YAML over a preset, pass it with --config {text}."
    raise ConfigError(
        f"{source} takes a preset name (letters, digits, '-' or '_', e.g. {DEFAULT_PRESET}), not {text!r}.{hint}"
    )


def load_config(
    preset: str | None = None,
    user_config: str | os.PathLike[str] | None = None,
    fallback: str = DEFAULT_PRESET,
    **overrides: Any,
) -> CourseConfig:
    """Build the course config: preset YAML, then ``user_config`` YAML, then ``overrides``.

    ``preset`` defaults to ``$RAGCOURSE_PRESET``, then to a ``preset:`` key in the user YAML, then
    to ``fallback`` (``cpu-smoke``). Overrides are section mappings: ``load_config(training={"max_steps": 5})``.
    """
    user: dict[str, Any] = {}
    user_path = None
    if user_config is not None:
        user_path = resolve_path(user_config)
        user = _read_yaml(user_path)
    if preset:
        name = check_preset_name(preset)
    elif os.environ.get(PRESET_ENV):
        name = check_preset_name(os.environ[PRESET_ENV], f"${PRESET_ENV}")
    elif user.get("preset"):
        name = check_preset_name(user["preset"], f"{user_path}: preset:")
    else:
        name = fallback
    user.pop("preset", None)
    preset_path = project_root() / "configs" / f"{name}.yaml"
    if not preset_path.is_file():
        presets = available_presets()
        close = difflib.get_close_matches(name, presets, n=1)
        raise ConfigError(
            f"Unknown preset '{name}' (no {preset_path})."
            + (f" Did you mean '{close[0]}'?" if close else "")
            + f" Available: {', '.join(presets)}."
        )
    raw = _read_yaml(preset_path)
    raw.pop("preset", None)
    cfg_dict: dict[str, Any] = {"preset": name}
    for layer, source in ((raw, str(preset_path)), (user, str(user_path)), (overrides, "overrides")):
        # Validate each layer on its own so the error names the file that holds the bad key.
        _build(CourseConfig, _merge({"preset": name}, layer), "", source)
        cfg_dict = _merge(cfg_dict, layer)
    cfg = _build(CourseConfig, cfg_dict, "", "config")
    _validate(cfg)
    return cfg


def print_config(cfg: CourseConfig) -> None:
    """Print the resolved config at the top of a notebook, so a run says what it ran with."""
    print(f"# preset: {cfg.preset} — {cfg.description}".rstrip(" —"))
    print(
        f"# expected: {cfg.expected.hardware}, peak memory ~{cfg.expected.peak_memory_gb:g} GB, "
        f"all notebooks ~{cfg.expected.total_minutes:g} min"
        + (
            f" (~{cfg.expected.total_minutes_avx2:g} min on a CPU with AVX2 only)"
            if cfg.expected.total_minutes_avx2
            else ""
        )
    )
    print(f"# artifacts: {cfg.output_dir}")
    body = {k: v for k, v in cfg.to_dict().items() if k not in {"preset", "description", "expected"}}
    import yaml

    print(yaml.safe_dump(body, sort_keys=False, allow_unicode=True), end="")
