"""Serve the merged model behind an OpenAI-compatible API, and query it from LlamaIndex (notebook 05, section 10).

Production runs the model in a server, not in the notebook's process. Two servers speak the same OpenAI API
(``/v1/chat/completions``, ``/v1/models``):

* ``transformers serve`` (transformers 5, extra ``[serving]``): runs anywhere transformers runs, CPU included, and
  serves a local folder offline. The course starts it on 127.0.0.1 with the merged model (:func:`start_server`).
* vLLM (GPU, Linux): paged attention and continuous batching, and several LoRA adapters on one base
  (``--enable-lora``). The course prints its command (:func:`vllm_command`); it is not run here.

Either way the **server** applies the chat template, so the client sends plain messages: LlamaIndex's
``OpenAILike`` (:func:`served_llm`) inside ``rag.query_engine`` sends exactly the training messages
(``model.system_prompt`` + numbered passages), and the server renders them with the template saved beside the
merged weights, the one training used (:func:`served_prompt` shows what the server renders). Greedy decoding is
``temperature=0`` in the request (the server then sets ``do_sample=False``) on top of the merged model's
``generation_config.json`` (greedy, stops at the end-of-turn token).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Mapping, Sequence

from .config import CourseConfig
from .errors import CourseError

SERVE_HELP = "transformers serve needs its serving extra: pip install 'ragcourse[serve]' (FastAPI, uvicorn, openai)."
LLAMAINDEX_HELP = (
    "LlamaIndex's OpenAI-compatible LLM is missing: pip install 'ragcourse[serve]' (llama-index-llms-openai-like)."
)
API_KEY = "ragcourse-local"  # the servers here check no key, but the OpenAI client insists on one


class ServerError(CourseError, RuntimeError):
    """The model server did not start or answer; the message says why and where its log is."""


# -- 1. the command ---------------------------------------------------------------------------------------------


def serving_available() -> bool:
    """Are ``transformers serve``'s extra dependencies (FastAPI, uvicorn, openai) installed?"""
    from transformers.utils.import_utils import is_serve_available

    return bool(is_serve_available())


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def served_model_path(cfg: CourseConfig) -> Path:
    """The folder the server loads: notebook 04's merged model (safetensors, tokenizer, chat template, generation
    config)."""
    path = cfg.artifact_dir("merged").resolve()
    if not list(path.glob("*.safetensors")):
        raise FileNotFoundError(
            f"No merged model in {path}: run notebooks/04_adapter_merge.ipynb or "
            f"`ragcourse merge --preset {cfg.preset}` first."
        )
    return path


def serve_command(
    cfg: CourseConfig, host: str = "127.0.0.1", port: int = 8000, model_path: Path | None = None
) -> list[str]:
    """``transformers serve`` for the merged model, loaded as the course loads it in-process (notebook 05, section 10).

    The model is preloaded (a positional model pins the server to it); dtype and attention implementation are
    those of ``models.load_causal_lm``, so the server computes the same logits as the notebook.
    """
    from .hardware import detect_hardware
    from .merge import merge_dtype

    hw = detect_hardware()
    cmd = [
        "transformers",
        "serve",
        str(model_path or served_model_path(cfg)),
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        merge_dtype(cfg),
        "--device",
        "cpu" if hw.device == "cpu" else "auto",
    ]
    if cfg.model.attn_implementation:
        cmd += ["--attn-implementation", cfg.model.attn_implementation]
    return cmd


def vllm_command(cfg: CourseConfig, adapters: Mapping[str, str | Path] | None = None, port: int = 8000) -> list[str]:
    """The equivalent vLLM command for a GPU preset (notebook 05, section 10), printed, not run here.

    Without ``adapters`` it serves the merged folder. With ``adapters`` ({name: folder}, e.g. notebook 04's
    ``v1``/``v2`` rule adapters) it serves the **base** model with vLLM's multi-LoRA support: each adapter was
    trained on the base, and a request picks one by sending its name as ``model``.
    """
    from .merge import merge_dtype

    common = [
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        merge_dtype(cfg),
        "--max-model-len",
        str(cfg.model.max_length),
        "--generation-config",
        "auto",
    ]  # greedy + end-of-turn stop from generation_config.json
    if not adapters:
        return [
            "vllm",
            "serve",
            str(cfg.artifact_dir("merged")),
            "--served-model-name",
            f"ragcourse-{cfg.preset}",
            *common,
        ]
    base = vllm_base(cfg)
    modules = [f"{name}={Path(path)}" for name, path in adapters.items()]
    rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= cfg.lora.r)  # vLLM accepts only these
    return [
        "vllm",
        "serve",
        base,
        "--served-model-name",
        f"base-{cfg.preset}",
        *common,
        "--enable-lora",
        "--max-lora-rank",
        str(rank),
        "--max-loras",
        str(len(modules)),
        "--lora-modules",
        *modules,
    ]


def vllm_base(cfg: CourseConfig) -> str:
    """The base :func:`vllm_command` serves adapters on: the released checkpoint (the embedded SmolLM2 is the
    safetensors folder converted once from its GGUF), in 16-bit: vLLM does not load it in NF4 as QLoRA training did."""
    from .models import SMOLLM2, cache_dir

    return str(cache_dir(cfg) / "smollm2-135m-instruct") if cfg.model.name == SMOLLM2 else cfg.model.name


def vllm_note(cfg: CourseConfig, adapters: Mapping[str, str | Path] | None = None) -> str:
    """The comment printed above :func:`vllm_command`: which weights the command serves, and for adapters trained with
    QLoRA why that is not the trained model and what to serve instead (notebook 05, section 10)."""
    base = vllm_base(cfg)
    if not cfg.quantization.load_in_4bit:  # 16-bit LoRA: trained on the released weights, served on them
        return (
            f"# the adapters on {base} as released: the weights they were trained on"
            if adapters
            else f"# the adapter merged into {cfg.model.name} as released: the weights it was trained on"
        )
    if not adapters:
        return (
            f"# the adapter merged into {cfg.model.name}'s 4-bit NF4 weights, dequantized once: the weights QLoRA "
            f"trained it on, so it answers as the trained model (notebook 04, section 1)"
        )
    return (
        f"# the adapters on {base} as released, unquantized: QLoRA trained them on its 4-bit NF4 weights, which "
        f"are not the same weights, so the answers drift from the trained model's (notebook 04, section 3 "
        f"measures it: merge (b), into the original weights). To serve exactly what was trained, merge each "
        f"adapter into the NF4 weights dequantized (merge.merge with adapter_dir=..., then merge.save_merged with "
        f"target=...), as the course did for its own adapter in {cfg.artifact_dir('merged')}, and serve that "
        f"folder as above."
    )


def shell(cmd: Sequence[str]) -> str:
    """A command as one line to paste into a terminal."""
    return shlex.join(list(cmd))


# -- 2. start, wait, stop -----------------------------------------------------------------------------------------


@dataclass
class Server:
    """A running ``transformers serve``: its process (a group of its own), URL, model name and log file."""

    process: subprocess.Popen
    host: str
    port: int
    model: str
    log_path: Path
    started_s: float = 0.0
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def base_url(self) -> str:
        """The OpenAI API root, as clients want it (``.../v1``)."""
        return f"http://{self.host}:{self.port}/v1"

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """Stop the server and every process it started (SIGTERM to its process group, SIGKILL if it lingers)."""
        if self.process.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(timeout=timeout_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.poll()

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _get_json(url: str, timeout_s: float = 2.0) -> Any:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 (loopback only)
        return json.loads(response.read())


def wait_until_ready(server: Server, timeout_s: float = 180.0) -> float:
    """Poll ``/health`` until the server answers (the model is preloaded before it listens); seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        if server.process.poll() is not None:
            raise ServerError(
                f"transformers serve exited with code {server.process.returncode} before answering; "
                f"its log ({server.log_path}) ends with: {' '.join(server.log_tail(600).split())}"
            )
        try:
            if _get_json(f"http://{server.host}:{server.port}/health").get("status") == "ok":
                return time.perf_counter() - t0
        except OSError:
            pass
        time.sleep(0.5)
    raise ServerError(
        f"transformers serve did not answer on {server.host}:{server.port} within {timeout_s:.0f} s "
        f"(log: {server.log_path}); a busy CPU loads slowly: raise timeout_s."
    )


def server_env(threads: int | None = None) -> dict[str, str]:
    """The server's environment: offline (a local folder needs no hub), no telemetry, optionally fewer threads."""
    # The CLI's entry point also asks PyPI once a day for a newer transformers: HF_HUB_DISABLE_UPDATE_CHECK skips it.
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        TRANSFORMERS_NO_ADVISORY_WARNINGS="1",
    )
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def release_models() -> None:
    """Free what models this process let go of before the server loads its own copy: ``ragcourse serve`` may have
    just merged the adapter here (``pipeline.ensure(cfg, "merged")``), and a model in a reference cycle stays in
    memory until the collector runs, its GPU memory in torch's cache until it is emptied (``models.free_memory``)."""
    if "torch" in sys.modules:  # no torch imported: no model was ever loaded here
        from .models import free_memory

        free_memory()


def start_server(
    cfg: CourseConfig,
    host: str = "127.0.0.1",
    port: int | None = None,
    timeout_s: float = 180.0,
    log_path: Path | None = None,
    threads: int | None = None,
) -> Server:
    """Start ``transformers serve`` with the merged model on ``host`` (loopback by default) and a free port, and wait
    until it answers (notebook 05, section 10). Stop it with ``server.stop()`` or a ``with`` block."""
    if not serving_available():
        raise ServerError(SERVE_HELP)
    port = port or free_port(host)
    cmd = serve_command(cfg, host, port)
    release_models()
    # The `transformers` script of *this* interpreter, whatever is first on PATH.
    argv = [
        sys.executable,
        "-c",
        "import sys; from transformers.cli.transformers import main; sys.exit(main())",
        *cmd[1:],
    ]
    log_path = Path(log_path or cfg.output_dir / "serve" / f"transformers-serve-{port}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "wb")
    t0 = time.perf_counter()
    process = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=server_env(threads),
        start_new_session=True,
    )
    server = Server(process, host, port, cmd[2], log_path, _log=log)
    try:
        wait_until_ready(server, timeout_s)
    except BaseException:
        server.stop()
        raise
    server.started_s = time.perf_counter() - t0
    return server


# -- 3. LlamaIndex talks to it ------------------------------------------------------------------------------------


def served_llm(base_url: str, model: str, cfg: CourseConfig, timeout_s: float = 300.0):
    """LlamaIndex's ``OpenAILike`` on an OpenAI-compatible server: a chat model, greedy (``temperature=0``), the
    preset's ``max_new_tokens`` (notebook 05, section 10). Pass it to ``rag.query_engine`` like the in-process LLM."""
    try:
        from llama_index.llms.openai_like import OpenAILike
    except ImportError as exc:
        raise ServerError(f"{LLAMAINDEX_HELP} (import failed: {exc})") from None

    return OpenAILike(
        model=model,
        api_base=base_url,
        api_key=API_KEY,
        is_chat_model=True,
        is_function_calling_model=False,
        temperature=0.0,
        max_tokens=cfg.model.max_new_tokens,
        context_window=cfg.model.max_length,
        timeout=timeout_s,
        max_retries=0,
    )


def served_prompt(model_path: str | Path, messages: Sequence[Mapping[str, str]]) -> str:
    """The prompt string ``transformers serve`` renders for ``messages``: it loads the folder with ``AutoProcessor``
    (a text model gets its tokenizer) and applies that chat template with the generation prompt."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(str(model_path), trust_remote_code=False)
    return processor.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)


def template_matches(cfg: CourseConfig, messages: Sequence[Mapping[str, str]]) -> bool:
    """Does the server render ``messages`` exactly as training and the in-process LLM do (``load_tokenizer``)?"""
    from .models import load_tokenizer

    path = served_model_path(cfg)
    local = load_tokenizer(cfg, str(path)).apply_chat_template(
        list(messages), add_generation_prompt=True, tokenize=False
    )
    return served_prompt(path, messages) == local
