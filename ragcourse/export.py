"""GGUF export for llama.cpp and Ollama (notebook 04, section 6 "Export to GGUF: llama.cpp and Ollama").

The merged model (``outputs/<preset>/merged``) goes through llama.cpp's own converter, ``convert_hf_to_gguf.py``, into
``outputs/<preset>/gguf/``: an f16 GGUF (every weight rounded once to 16 bits), one quantized GGUF, and an Ollama
``Modelfile`` with the model's chat template, the course's system prompt and the end-of-turn stop tokens.

Both tools come from one package, ``llama-cpp-python`` (``pip install 'ragcourse[gguf]'``): its wheel is llama.cpp's
runtime in Python, and its source distribution vendors llama.cpp itself, converter included. The wheel does not ship
the converter, so :func:`converter_dir` unpacks it (``convert_hf_to_gguf.py``, its ``conversion`` package and the
matching ``gguf-py``) from the source distribution of the *installed* version into the model cache, once.

Quantized types: ``q8_0`` is written by the converter itself; ``q4_k_m`` by llama.cpp's quantizer, which the Python
package exposes as ``llama_cpp.llama_model_quantize`` (from the f16 file, as ``llama-quantize`` would).
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any, Sequence

from .config import CourseConfig
from .errors import CourseError

INSTALL = "pip install 'ragcourse[gguf]'"
# How each quantized type is made: by the converter (--outtype) or by llama.cpp's quantizer from the f16 file.
QUANTS = {"q8_0": "converter", "q4_k_m": "llama_model_quantize"}
DEFAULT_QUANT = "q8_0"
# What the converter needs from the source distribution (the rest of llama.cpp's source is the runtime's).
CONVERTER_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")
CONVERTER_ENV = "RAGCOURSE_LLAMA_CPP_DIR"  # a llama.cpp source folder of your own, instead of the unpacked one


class GGUFUnavailable(CourseError, ImportError):
    """llama-cpp-python (llama.cpp's runtime and converter) is not installed, or its converter cannot be found."""


def llama_cpp_version() -> str | None:
    """The installed llama-cpp-python's version, or None (read from metadata, nothing imported)."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def available() -> bool:
    """Can this environment export and run GGUF files? (llama-cpp-python installed.)"""
    return llama_cpp_version() is not None


def require_llama_cpp() -> Any:
    """``import llama_cpp``, or a one-line :class:`GGUFUnavailable` that names the fix."""
    if not available():
        raise GGUFUnavailable(
            f"GGUF export needs llama-cpp-python (llama.cpp's converter and runtime): {INSTALL} "
            "(built from source, a few minutes; `make gguf` caches the wheel)."
        )
    import llama_cpp

    return llama_cpp


def sdist_cache(cfg: CourseConfig | None = None) -> Path:
    """Where the source distribution of llama-cpp-python is kept (``make gguf`` downloads it there too)."""
    from .models import cache_dir

    return cache_dir(cfg) / "llama-cpp-python"


def _download_sdist(version: str, into: Path) -> Path:
    """The source distribution of llama-cpp-python ``version`` in ``into``, downloaded with pip when missing."""
    found = sorted(into.glob(f"llama_cpp_python-{version}.tar.gz"))
    if found:
        return found[0]
    into.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={version}",
        "-d",
        str(into),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(into.glob(f"llama_cpp_python-{version}.tar.gz"))
    if result.returncode or not found:
        detail = ((result.stderr or "").strip().splitlines() or [f"exit {result.returncode}"])[-1]
        raise GGUFUnavailable(
            f"llama.cpp's converter comes from the source distribution of llama-cpp-python {version}, "
            f"and pip could not download it ({detail}): "
            f"run `make gguf` where the package registry is reachable, or set {CONVERTER_ENV} to a "
            f"llama.cpp source folder."
        )
    return found[0]


def unpack_converter(sdist: Path, target: Path) -> Path:
    """Unpack the converter (:data:`CONVERTER_MEMBERS` of ``vendor/llama.cpp``) from an sdist into ``target``."""
    from .artifacts import atomic_dir

    with tarfile.open(sdist) as archive, atomic_dir(target) as tmp:
        top = archive.getnames()[0].split("/")[0]
        prefix = f"{top}/vendor/llama.cpp/"
        members = []
        for member in archive.getmembers():
            rel = member.name[len(prefix) :] if member.name.startswith(prefix) else ""
            if rel and any(rel == m or (m.endswith("/") and rel.startswith(m)) for m in CONVERTER_MEMBERS):
                member.name = rel
                members.append(member)
        archive.extractall(tmp, members=members, filter="data")
        if not (tmp / "convert_hf_to_gguf.py").is_file():
            raise GGUFUnavailable(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py.")
    return target


def converter_dir(cfg: CourseConfig | None = None) -> Path:
    """A folder with llama.cpp's ``convert_hf_to_gguf.py`` of the installed llama-cpp-python version.

    ``$RAGCOURSE_LLAMA_CPP_DIR`` (a llama.cpp checkout) wins; else ``<model cache>/llama.cpp-<version>``, unpacked on
    first use from the source distribution (kept by ``make gguf``, or downloaded now with pip). The converter and the
    runtime then come from the same llama.cpp commit.
    """
    if os.environ.get(CONVERTER_ENV):
        return Path(os.environ[CONVERTER_ENV]).expanduser()
    version = llama_cpp_version()
    if version is None:
        require_llama_cpp()
    target = sdist_cache(cfg).parent / f"llama.cpp-{version}"
    if not (target / "convert_hf_to_gguf.py").is_file():
        unpack_converter(_download_sdist(str(version), sdist_cache(cfg)), target)
    return target


def convert(merged_dir: Path, outfile: Path, outtype: str = "f16", cfg: CourseConfig | None = None) -> Path:
    """Run llama.cpp's converter on a Hugging Face folder: ``convert_hf_to_gguf.py merged --outtype f16``."""
    script = converter_dir(cfg) / "convert_hf_to_gguf.py"
    cmd = [sys.executable, str(script), str(merged_dir), "--outfile", str(outfile), "--outtype", outtype]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode or not outfile.is_file():
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"convert_hf_to_gguf.py --outtype {outtype} failed (exit {result.returncode}): {tail}")
    return outfile


def quantize(f16: Path, outfile: Path, quant: str = "q4_k_m", threads: int | None = None) -> Path:
    """llama.cpp's quantizer (what ``llama-quantize`` runs), called through ``llama_cpp.llama_model_quantize``."""
    import ctypes

    llama_cpp = require_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}")
    params.nthread = threads or 0  # 0: llama.cpp's own choice
    if llama_cpp.llama_model_quantize(str(f16).encode(), str(outfile).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize {f16.name} -> {quant} failed")
    return outfile


def ollama_template(tokenizer: Any) -> str:
    """The model's own chat template as an Ollama ``TEMPLATE`` (Go template syntax) for a system + user turn.

    Derived by rendering the tokenizer's template around placeholders (the course's prompt is one system and one
    user turn, ``prompts.messages``), so the GGUF sees exactly the string the model was trained on.
    """
    marks = {"system": "\x00SYSTEM\x00", "user": "\x00PROMPT\x00"}
    text = tokenizer.apply_chat_template(
        [{"role": r, "content": m} for r, m in marks.items()], tokenize=False, add_generation_prompt=True
    )
    if text.count(marks["system"]) != 1 or text.count(marks["user"]) != 1:
        raise ValueError(
            "the chat template does not place one system and one user turn as given; write TEMPLATE by hand"
        )
    eos = tokenizer.eos_token or ""
    return (
        text.replace(marks["system"], "{{ .System }}").replace(marks["user"], "{{ .Prompt }}") + "{{ .Response }}" + eos
    )


def render_ollama_template(template: str, system: str, prompt: str, response: str = "") -> str:
    """What Ollama sends the model for one turn with :func:`ollama_template`'s three variables (used in the tests)."""
    return (
        template.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt).replace("{{ .Response }}", response)
    )


def stop_tokens(tokenizer: Any, generation_eos: int | Sequence[int] | None = None) -> list[str]:
    """The strings that end a turn: the tokenizer's EOS, the generation config's EOS ids, and ChatML's turn opener."""
    ids = [generation_eos] if isinstance(generation_eos, int) else list(generation_eos or [])
    stops = [tokenizer.eos_token, *tokenizer.convert_ids_to_tokens(ids)]
    if "<|im_start|>" in (tokenizer.chat_template or ""):
        stops.append("<|im_start|>")  # a model that runs on into a new turn has finished its answer
    return list(dict.fromkeys(s for s in stops if s))


def modelfile(gguf_name: str, tokenizer: Any, cfg: CourseConfig, generation_eos: Any = None) -> str:
    """The Ollama ``Modelfile``: the GGUF, the chat template, the course's system prompt, stops, greedy decoding."""
    name = f"ragcourse-{cfg.preset}"
    lines = [
        f"# Ollama Modelfile for the merged {cfg.preset} model: `ragcourse export --format gguf` (notebook 04).",
        f"#   ollama create {name} -f Modelfile && ollama run {name}",
        "# The user turn is the course's prompt (ragcourse.prompts.user_prompt): 'Documents:' with numbered passages,",
        "# then 'Question: ...'. Ollama does not neutralize control tokens inside passages, as prompts.messages does.",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{ollama_template(tokenizer)}"""',
        f'SYSTEM """{cfg.model.system_prompt}"""',
        *(f'PARAMETER stop "{s}"' for s in stop_tokens(tokenizer, generation_eos)),
        "PARAMETER temperature 0",
        f"PARAMETER num_predict {cfg.model.max_new_tokens}",
        f"PARAMETER num_ctx {cfg.model.max_length}",
    ]
    return "\n".join(lines) + "\n"


def gguf_name(quant: str) -> str:
    return f"model-{quant}.gguf"


def build_gguf(cfg: CourseConfig, quant: str = DEFAULT_QUANT) -> Path:
    """``ragcourse export --format gguf``: the merged folder converted to f16 and ``quant``, with a Modelfile,
    written atomically into ``outputs/<preset>/gguf`` with a manifest (the merged model's manifest is an input)."""
    import json

    from transformers import AutoTokenizer

    from .artifacts import atomic_dir, write_manifest

    if quant not in QUANTS:
        raise ValueError(f"--quant must be one of {', '.join(QUANTS)}, got {quant!r}")
    llama_cpp = require_llama_cpp()
    merged = cfg.artifact_dir("merged")
    if not list(merged.glob("*.safetensors")):
        raise FileNotFoundError(
            f"No merged model in {merged}: run notebook 04 or `ragcourse merge --preset {cfg.preset}`."
        )
    tokenizer = AutoTokenizer.from_pretrained(merged, trust_remote_code=False)
    generation = (
        json.loads((merged / "generation_config.json").read_text())
        if (merged / "generation_config.json").is_file()
        else {}
    )
    target = cfg.artifact_dir("gguf")
    with atomic_dir(target) as tmp:
        f16 = convert(merged, tmp / gguf_name("f16"), "f16", cfg)
        if QUANTS[quant] == "converter":
            convert(merged, tmp / gguf_name(quant), quant, cfg)
        else:
            quantize(f16, tmp / gguf_name(quant), quant)
        (tmp / "Modelfile").write_text(modelfile(gguf_name(quant), tokenizer, cfg, generation.get("eos_token_id")))
        sizes = {p.name: p.stat().st_size for p in sorted(tmp.glob("*.gguf"))}
        write_manifest(
            tmp,
            cfg,
            "gguf",
            quant=quant,
            file_bytes=sizes,
            llama_cpp_python=llama_cpp.__version__,
            converter=str(converter_dir(cfg)),
        )
    return target


def quant_reason(folder: Path, quant: str) -> str | None:
    """Why the GGUF folder does not hold ``quant`` (None when it does)."""
    from .artifacts import read_manifest

    built = (read_manifest(folder) or {}).get("quant")
    return None if built == quant else f"it holds {built or 'no'} quantized file, {quant} was asked for"


def export_gguf(cfg: CourseConfig, quant: str = DEFAULT_QUANT, rebuild: bool = False) -> Path:
    """The GGUF folder, current: reused when its manifest matches the merged model and settings it was made from (the
    one freshness rule, ``artifacts.stale_reason``) and holds ``quant``, else exported. The caller makes the merged
    model current first (``pipeline.ensure(cfg, "merged")``, as ``ragcourse export`` and notebook 04 do)."""
    import time

    from .artifacts import stale_reason

    require_llama_cpp()
    folder = cfg.artifact_dir("gguf")
    reason = "a rebuild was asked for" if rebuild else stale_reason(cfg, "gguf") or quant_reason(folder, quant)
    if reason is None:
        print(f"gguf: up to date, reusing {folder}")
        return folder
    print(f"gguf: building it ({reason}).", flush=True)
    start = time.perf_counter()
    build_gguf(cfg, quant)
    print(f"gguf: built in {time.perf_counter() - start:.0f} s -> {folder}", flush=True)
    return folder


def file_mb(folder: Path) -> dict[str, float]:
    """Size in MB of each GGUF file in ``folder``, read from the files."""
    return {p.name: p.stat().st_size / 2**20 for p in sorted(Path(folder).glob("*.gguf"))}


def load_gguf(path: Path, n_ctx: int = 2048, threads: int | None = None) -> Any:
    """A GGUF file in llama.cpp's runtime (``llama_cpp.Llama``), quiet, CPU."""
    llama_cpp = require_llama_cpp()
    threads = threads or int(os.environ.get("OMP_NUM_THREADS", "0")) or None
    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        n_gpu_layers=0,
        seed=0,
        verbose=False,
    )


def _last_logits(llm: Any) -> Any:
    """The logits of the last evaluated token, from llama.cpp's context (fp32, a copy)."""
    import numpy as np

    llama_cpp = require_llama_cpp()
    return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy()


def llama_greedy(
    llm: Any, prompt_ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int]
) -> tuple[list[int], Any]:
    """Greedy decoding in llama.cpp from the same token ids transformers gets (argmax of each step's logits):
    (new token ids, the stop token included; the first step's logits)."""
    llm.reset()
    llm.eval(list(prompt_ids))
    first = _last_logits(llm)
    logits, out = first, []
    for _ in range(max_new_tokens):
        token = int(logits.argmax())
        out.append(token)
        if token in stop_ids:
            break
        llm.eval([token])
        logits = _last_logits(llm)
    return out, first


def llama_tokenize(llm: Any, text: str) -> list[int]:
    """llama.cpp's tokenization of a prompt string (special tokens parsed, no BOS added), to compare with HF's."""
    return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))


def _first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    if list(a) == list(b):
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare_greedy(
    model: Any, tokenizer: Any, gguf: Path, prompt_texts: Sequence[str], max_new_tokens: int
) -> list[dict[str, Any]]:
    """transformers' and llama.cpp's greedy answers to the same prompts, token by token (notebook 04, section 6).

    Both start from the same token ids (transformers' tokenization; whether llama.cpp tokenizes the prompt the same
    is reported). Per prompt: both answers, whether they are identical, the first differing position, the
    transformers logit margin (top-1 minus top-2) at that step, and the largest difference of the first step's logits.
    """
    import torch

    llm = load_gguf(
        gguf,
        n_ctx=max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in prompt_texts) + max_new_tokens + 8,
    )
    stop = tokenizer.eos_token_id
    stop_ids = [stop] if isinstance(stop, int) else list(stop or [])
    rows = []
    for text in prompt_texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            out = model.generate(
                torch.tensor([ids], device=model.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
        hf = out.sequences[0, len(ids) :].tolist()
        hf_logits = [step[0].float().cpu() for step in out.logits]
        gg, gg_first = llama_greedy(llm, ids, max_new_tokens, stop_ids)
        at = _first_difference(hf, gg)
        margin = None
        if at is not None and at < len(hf_logits):
            top2 = hf_logits[at].topk(2).values
            margin = float(top2[0] - top2[1])
        rows.append(
            {
                "prompt_tokens": len(ids),
                "same_tokenization": llama_tokenize(llm, text) == ids,
                "identical": at is None,
                "first_difference": at,
                "margin_at_difference": margin,
                "first_step_max_logit_difference": float((hf_logits[0] - torch.from_numpy(gg_first)).abs().max()),
                "transformers": tokenizer.decode(hf, skip_special_tokens=True),
                "llama_cpp": tokenizer.decode(gg, skip_special_tokens=True),
                "transformers_ids": hf,
                "llama_cpp_ids": gg,
            }
        )
    del llm
    return rows


def _main(argv: Sequence[str] | None = None) -> int:
    """``python -m ragcourse.export converter``: unpack the converter now (``make gguf`` runs it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["converter"]:
        print("usage: python -m ragcourse.export converter", file=sys.stderr)
        return 2
    print(converter_dir())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main())
