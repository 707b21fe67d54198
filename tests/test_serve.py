"""ragcourse.serve (notebook 05, section 10): the merged model behind ``transformers serve`` on loopback, queried
from LlamaIndex.

The server is a real ``transformers serve`` process with the cpu-smoke merged model. The fixture stops it (its
whole process group) whatever the tests do, and checks that nothing of it is left.
"""

from __future__ import annotations

import os

import pytest

from ragcourse import serve


@pytest.fixture(scope="module")
def server(smoke, tmp_path_factory):
    """``transformers serve`` on 127.0.0.1 and a free port with the session's merged model; stopped at the end."""
    if not serve.serving_available():
        pytest.skip(serve.SERVE_HELP)
    log = tmp_path_factory.mktemp("serve") / "server.log"
    running = serve.start_server(smoke, "127.0.0.1", threads=1, timeout_s=600, log_path=log)
    try:
        yield running
    finally:
        running.stop()
        with pytest.raises(ProcessLookupError):  # the process group is gone: no server left behind
            os.killpg(running.process.pid, 0)


@pytest.fixture(scope="module")
def questions(smoke):
    from ragcourse.data import load_dataset

    return [row["question"] for row in load_dataset(smoke)["test"]][:3]


@pytest.mark.slow
def test_server_listens_on_loopback_with_the_merged_model(smoke, server):
    models = serve._get_json(f"{server.base_url}/models")["data"]
    assert [m["id"] for m in models] == [str(serve.served_model_path(smoke))]
    assert server.host == "127.0.0.1" and server.process.poll() is None


@pytest.mark.slow
def test_served_answers_equal_in_process_greedy_answers(smoke, server, questions):
    """Through LlamaIndex (``OpenAILike`` inside ``rag.query_engine``) the served model answers exactly as the same
    merged model does in-process (``models.generate``, greedy), for the same retrieved passages and prompt."""
    from llama_index.core.base.llms.types import ChatMessage

    from ragcourse import pipeline, rag, retrieval
    from ragcourse.merge import load_merged

    index = pipeline.load(smoke, "index")
    retriever = retrieval.make_retriever(index, smoke)
    model, tokenizer = load_merged(smoke)
    local = rag.query_engine(retriever, rag.course_llm(model, tokenizer, smoke), smoke)
    remote_llm = serve.served_llm(server.base_url, server.model, smoke)
    remote = rag.query_engine(retriever, remote_llm, smoke)

    assert len(questions) == 3
    served = rag.query_many(remote, questions)
    assert all(a.response for a in served)
    in_process = [local.query(q) for q in questions]
    for q, a, b in zip(questions, served, in_process):
        assert [n.node.node_id for n in a.source_nodes] == [n.node.node_id for n in b.source_nodes]
        assert a.response == b.response, (q, a.response, b.response)
        assert a.metadata["messages"] == b.metadata["messages"]  # the training format, sent as plain messages

    # The server renders the messages with the same chat template: same prompt string, same prompt token count.
    messages = in_process[0].metadata["messages"]
    assert serve.template_matches(smoke, messages)
    reply = remote_llm.chat([ChatMessage(role=m["role"], content=m["content"]) for m in messages])
    prompt_ids = tokenizer(in_process[0].metadata["prompt"], add_special_tokens=False)["input_ids"]
    assert reply.raw.usage.prompt_tokens == len(prompt_ids)


def test_commands_name_the_merged_model_and_the_rule_adapters(smoke_free_cfg):
    cfg = smoke_free_cfg
    cmd = serve.serve_command(cfg, "127.0.0.1", 8123)
    assert cmd[:3] == ["transformers", "serve", str(cfg.artifact_dir("merged").resolve())]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--dtype") + 1] == "float32"

    merged = serve.vllm_command(cfg)
    assert merged[:3] == ["vllm", "serve", str(cfg.artifact_dir("merged"))] and "--enable-lora" not in merged
    from ragcourse.merge import rule_adapter_dir

    lora = serve.vllm_command(cfg, {"fsr7-v1": rule_adapter_dir(cfg, "v1"), "fsr7-v2": rule_adapter_dir(cfg, "v2")})
    assert "--enable-lora" in lora and lora[lora.index("--max-lora-rank") + 1] == "8"
    assert lora[-2:] == [f"fsr7-v1={rule_adapter_dir(cfg, 'v1')}", f"fsr7-v2={rule_adapter_dir(cfg, 'v2')}"]
    assert lora[2].endswith("smollm2-135m-instruct")  # the base the adapters were trained on, not the merged model


def test_vllm_commands_say_which_base_and_why_qlora_adapters_drift_on_it(smoke_free_cfg, tmp_path, capsys):
    """vLLM serves adapters on the released base, unquantized; a QLoRA adapter learned to correct the NF4 weights, so
    the comment above the command says so and points to the merged model, merged into the dequantized NF4 weights."""
    from ragcourse import cli
    from ragcourse.config import load_config
    from ragcourse.merge import rule_adapter_dir

    qlora = smoke_free_cfg
    adapters = {f"fsr7-{v}": rule_adapter_dir(qlora, v) for v in ("v1", "v2")}
    base = serve.vllm_command(qlora, adapters)[2]
    note = serve.vllm_note(qlora, adapters)
    assert qlora.quantization.load_in_4bit and note.startswith("# ") and base in note
    assert "NF4" in note and "not the same weights" in note and "notebook 04, section 3" in note  # the reason, measured
    assert str(qlora.artifact_dir("merged")) in note and "dequantized" in note  # what to serve instead
    merged_note = serve.vllm_note(qlora)
    assert "NF4" in merged_note and "dequantized" in merged_note and "not the same" not in merged_note

    lora16 = load_config("gpu-80gb", paths={"output_root": str(tmp_path)})  # 16-bit LoRA: served on what it learned on
    note16 = serve.vllm_note(lora16, adapters)
    assert not lora16.quantization.load_in_4bit and lora16.model.name in note16 and "NF4" not in note16

    assert cli.main(["serve", "--preset", "cpu-smoke", "--print", "--set", f"paths.output_root={tmp_path}"]) == 0
    lines = [line.strip() for line in capsys.readouterr().out.splitlines()]
    command = next(i for i, line in enumerate(lines) if line.startswith("vllm serve ") and "--enable-lora" in line)
    assert lines[command - 1] == serve.vllm_note(
        load_config("cpu-smoke", paths={"output_root": str(tmp_path)}), adapters={"fsr7-v1": "", "fsr7-v2": ""}
    )  # printed above it


def test_missing_merged_model_names_the_fix(tmp_path):
    from ragcourse.config import load_config

    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="ragcourse merge --preset cpu-smoke"):
        serve.serve_command(cfg)


@pytest.fixture
def smoke_free_cfg(tmp_path):
    """A cpu-smoke config with a stand-in merged folder (the command builders only look for safetensors)."""
    from ragcourse.config import load_config

    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path)})
    cfg.artifact_dir("merged").mkdir(parents=True)
    (cfg.artifact_dir("merged") / "model.safetensors").write_bytes(b"")
    return cfg


def test_a_server_that_cannot_load_the_model_fails_with_its_log(smoke_free_cfg, tmp_path):
    """A folder that is no model: the server process exits, the error quotes its log, and nothing is left running."""
    if not serve.serving_available():
        pytest.skip(serve.SERVE_HELP)
    with pytest.raises(serve.ServerError, match="exited with code") as err:
        serve.start_server(smoke_free_cfg, threads=1, timeout_s=300, log_path=tmp_path / "server.log")
    assert str(tmp_path / "server.log") in str(err.value)


def test_cli_prints_the_commands_without_starting_anything(tmp_path):
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ragcourse.cli",
            "serve",
            "--preset",
            "cpu-smoke",
            "--print",
            "--set",
            f"paths.output_root={tmp_path}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "transformers serve " in out and "--host 127.0.0.1" in out
    assert "vllm serve " in out and "--enable-lora" in out and "fsr7-v2=" in out
    assert not (tmp_path / "cpu-smoke" / "merged").exists()  # --print built nothing


def test_serve_frees_the_merged_model_before_the_server_loads_its_copy(tmp_path, monkeypatch):
    """``ragcourse serve`` merges in this process when the merged model is stale; a model kept alive by a reference
    cycle (hooks do that) or by torch's CUDA cache would sit beside the server's copy on the GPU. The server child and
    the GPU are faked: when the child starts, the merge's model is gone and the CUDA cache was emptied."""
    import gc
    import weakref

    import torch

    from ragcourse import cli, hardware, merge, pipeline

    cpu = hardware.Hardware("cpu", None, None, False, None, None, 2, 1, 8.0, False)
    for module in (hardware, merge):  # the command's dtype and device: decided before the fake GPU appears
        monkeypatch.setattr(module, "detect_hardware", lambda: cpu)
    monkeypatch.setattr(serve, "serving_available", lambda: True)
    monkeypatch.setattr(serve, "wait_until_ready", lambda server, timeout_s: 0.0)
    merged_model: list[weakref.ref] = []
    emptied: list[bool] = []

    def merge_here(cfg, step, **kwargs):  # pipeline.ensure(cfg, "merged") building the merged model in this process
        model = torch.nn.Linear(4, 4)
        model.register_forward_hook(lambda module, args, out: model)  # a cycle: the hook holds the model
        merged_model.append(weakref.ref(model))
        cfg.artifact_dir("merged").mkdir(parents=True)
        (cfg.artifact_dir("merged") / "model.safetensors").write_bytes(b"")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU from here on
        monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
        monkeypatch.setattr(serve.subprocess, "Popen", Child)  # the next process started is the server
        return cfg.artifact_dir("merged")

    class Child:  # the `transformers serve` process
        pid, returncode = 0, 0

        def __init__(self, argv, **kwargs):
            self.model_alive, self.cache_emptied = merged_model[0]() is not None, bool(emptied)
            children.append(self)

        def poll(self):
            return 0

        def wait(self, timeout=None):
            return 0

    children: list[Child] = []
    monkeypatch.setattr(pipeline, "ensure", merge_here)
    collecting = gc.isenabled()
    gc.disable()  # only the explicit collection may free the cycle, not a collection that happens to run
    try:
        assert cli.main(["serve", "--preset", "cpu-smoke", "--set", f"paths.output_root={tmp_path}"]) == 0
    finally:
        if collecting:
            gc.enable()
    assert len(children) == 1 and not children[0].model_alive and children[0].cache_emptied
