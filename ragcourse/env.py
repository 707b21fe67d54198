"""The offline, no-telemetry environment (notebook 00, "Offline by default").

Call :func:`prepare_environment` before the heavy libraries are imported: the Hugging Face hub
reads ``HF_HUB_OFFLINE`` once, at import time.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path

TELEMETRY_OFF = {
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    "RAGAS_DO_NOT_TRACK": "true",
    "ANONYMIZED_TELEMETRY": "False",
    "SCARF_NO_ANALYTICS": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def llama_index_static_dir() -> Path | None:
    """The tiktoken and NLTK files that llama-index ships (so neither downloads at run time)."""
    spec = importlib.util.find_spec("llama_index.core")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "_static"


def prepare_environment(offline: bool = True) -> dict[str, str]:
    """Turn telemetry off, point tiktoken/NLTK at local files and, if ``offline``, forbid hub downloads.

    Returns the variables it set. Existing values are kept, so a learner can still override them.
    """
    wanted = dict(TELEMETRY_OFF)
    static = llama_index_static_dir()
    if static is not None:
        wanted["TIKTOKEN_CACHE_DIR"] = str(static / "tiktoken_cache")
        wanted["NLTK_DATA"] = str(static / "nltk_cache")
    if offline:
        wanted.update(OFFLINE)
    applied = {}
    for key, value in wanted.items():
        if key not in os.environ:
            os.environ[key] = value
            applied[key] = value
    return applied


def needs_network(*model_refs: str) -> bool:
    """True when any model reference must come from the hub (not ``embedded:`` and not a local folder)."""
    return any(not ref.startswith("embedded:") and not Path(ref).expanduser().exists() for ref in model_refs)


def secret(name: str) -> str | None:
    """A secret (for example ``HF_TOKEN``) from the environment, else from Colab's secrets; never printed."""
    value = os.environ.get(name)
    if value:
        return value
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        return userdata.get(name)
    except Exception:
        return None


def checkpointing_args(enabled: bool, args_class: type | None = None) -> dict[str, object]:
    """``SFTConfig``'s gradient-checkpointing arguments, spelled as the installed transformers knows them (notebook 03).

    transformers 5.2x calls it ``activation_checkpointing`` and warns on the old name; Colab's 5.15 knows only
    ``gradient_checkpointing``. No spelling serves both without a warning, so the course branches here, once, on the
    field the installed ``SFTConfig`` (a ``TrainingArguments``) declares, not on a version number. ``args_class``:
    another arguments dataclass (the tests pass each side's).
    """
    import dataclasses

    if args_class is None:
        from trl import SFTConfig as args_class

    kwargs = {"use_reentrant": False} if enabled else None
    if any(f.name == "activation_checkpointing" for f in dataclasses.fields(args_class)):
        return {"activation_checkpointing": enabled, "activation_checkpointing_kwargs": kwargs}
    return {"gradient_checkpointing": enabled, "gradient_checkpointing_kwargs": kwargs}


TESTED_PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "llama-index-core",
    "ragas",
    "sentence-transformers",
    "nbval",
)


def versions(names: tuple[str, ...] = TESTED_PACKAGES) -> dict[str, str]:
    """Installed versions of the course's main libraries, or of ``names`` (read from metadata, nothing imported)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
