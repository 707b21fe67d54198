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
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

DEFAULT_PRESET = "cpu-smoke"
PRESET_ENV = "RAGCOURSE_PRESET"
ROOT_ENV = "RAGCOURSE_ROOT"


# Names people reach for first, mapped to the library names the config uses.
SYNONYMS = {
    "rank": "r", "lora_r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "lr": "learning_rate",
    "epochs": "num_train_epochs", "batch_size": "per_device_train_batch_size", "top_k": "similarity_top_k",
    "model_name": "name", "seq_len": "max_length", "max_seq_length": "max_length",
}


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message says where and how to fix it."""


@dataclass
class ExpectedCost:
    """What a preset is expected to need; printed so learners can plan before they run."""

    hardware: str = "any CPU, 2 cores"
    peak_memory_gb: float = 4.0
    total_minutes: float = 20.0


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
    # Torch intra-op threads; null keeps torch's default.
    torch_threads: int | None = None


@dataclass
class RagConfig:
    """Retrieval and the query engine (notebook 05)."""

    vector_store: str = "simple"  # "simple" (no server) | "qdrant"
    vector_store_url: str | None = None
    retriever: str = "hybrid"  # "dense" | "bm25" | "hybrid"
    similarity_top_k: int = 4
    dense_weight: float = 0.5
    # Optional second stage (GPU presets): a cross-encoder re-scores the first stage's ``rerank_candidates``.
    rerank: bool = False
    rerank_model: str | None = None  # a hub id or a local folder (sentence-transformers CrossEncoder)
    rerank_candidates: int = 20


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
        raise ConfigError(f"Config file not found: {path}") from None
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
            close = [SYNONYMS[key]] if SYNONYMS.get(key) in names else difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
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


def _validate(cfg: CourseConfig) -> None:
    fractions = cfg.data.split_fractions
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) <= 0:
        raise ConfigError(f"data.split_fractions must be three positive numbers summing to 1 (train, validation, test), got {fractions}.")
    if cfg.data.target_style not in TARGET_STYLES:
        raise ConfigError(f"data.target_style must be one of {', '.join(TARGET_STYLES)}, got {cfg.data.target_style!r}.")
    if not 0.0 <= cfg.data.oracle_fraction <= 1.0:
        raise ConfigError(f"data.oracle_fraction must be between 0 and 1, got {cfg.data.oracle_fraction}.")
    if cfg.data.chunk_overlap >= cfg.data.chunk_size:
        raise ConfigError("data.chunk_overlap must be smaller than data.chunk_size.")
    if cfg.rag.retriever not in {"dense", "bm25", "hybrid"}:
        raise ConfigError(f"rag.retriever must be dense, bm25 or hybrid, got {cfg.rag.retriever!r}.")
    if cfg.rag.rerank and not cfg.rag.rerank_model:
        raise ConfigError("rag.rerank is on but rag.rerank_model is empty: set it to a cross-encoder "
                          "(e.g. cross-encoder/ms-marco-MiniLM-L-6-v2, or a local folder), or set rag.rerank: false.")
    if cfg.rag.rerank and cfg.rag.rerank_candidates < cfg.rag.similarity_top_k:
        raise ConfigError(f"rag.rerank_candidates ({cfg.rag.rerank_candidates}) must be at least rag.similarity_top_k "
                          f"({cfg.rag.similarity_top_k}): the reranker can only reorder what the first stage returns.")
    if cfg.rag.vector_store not in {"simple", "qdrant"}:
        raise ConfigError(f"rag.vector_store must be simple or qdrant, got {cfg.rag.vector_store!r}.")
    if cfg.quantization.bnb_4bit_quant_type not in {"nf4", "fp4"}:
        raise ConfigError(f"quantization.bnb_4bit_quant_type must be nf4 or fp4, got {cfg.quantization.bnb_4bit_quant_type!r}.")


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn CLI ``--set training.max_steps=5`` strings into a nested mapping (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects section.key=value, got {pair!r}.")
        dotted, raw = pair.split("=", 1)
        node = out
        *parents, leaf = dotted.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


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
    name = preset or os.environ.get(PRESET_ENV) or user.pop("preset", None) or fallback
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
    print(f"# expected: {cfg.expected.hardware}, peak memory ~{cfg.expected.peak_memory_gb:g} GB, "
          f"all notebooks ~{cfg.expected.total_minutes:g} min")
    print(f"# artifacts: {cfg.output_dir}")
    body = {k: v for k, v in cfg.to_dict().items() if k not in {"preset", "description", "expected"}}
    import yaml

    print(yaml.safe_dump(body, sort_keys=False, allow_unicode=True), end="")
