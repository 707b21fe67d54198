"""Training: pad/EOS, checkpoints, kill-and-resume, and two CPU processes under accelerate (notebook 03)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragcourse import train
from ragcourse.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SHORT = [
    "training.max_steps=6",
    "training.save_steps=2",
    "training.eval_steps=2",
    "training.logging_steps=1",
    "data.max_train_examples=24",
    "data.max_eval_examples=4",
    "training.save_total_limit=5",
]


def _cli(root: Path, *extra: str) -> list[str]:
    args = [
        sys.executable,
        "-m",
        "ragcourse.cli",
        "train",
        "--preset",
        "cpu-smoke",
        "--set",
        f"paths.output_root={root}",
    ]
    for item in SHORT:
        args += ["--set", item]
    return args + list(extra)


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1"}


class _Tok:
    def __init__(self, vocab, eos, pad=None):
        self.vocab, self.eos_token = vocab, eos
        self.eos_token_id = vocab[eos]
        self.pad_token = pad
        self.pad_token_id = vocab.get(pad)

    def get_vocab(self):
        return self.vocab


def test_pad_token_is_never_eos():
    tok = _Tok({"<|im_end|>": 2, "<|endoftext|>": 0}, eos="<|im_end|>", pad="<|im_end|>")
    tok_pad = train.ensure_pad_token(tok)
    assert tok_pad == "<|endoftext|>"
    with pytest.raises(ValueError, match="no spare token"):
        train.ensure_pad_token(_Tok({"</s>": 2}, eos="</s>"))


def test_trl_scores_only_loss_positions_on_cpu():
    """The pinned TRL still has the private switch the course flips (benchmarks/training_throughput.py: 2x per step)."""
    import torch
    import trl.trainer.utils as trl_utils

    assert train.score_loss_positions_only() and train.score_loss_positions_only()  # idempotent
    assert trl_utils._use_triton(torch.device("cpu")) is True


def test_incomplete_checkpoints_are_never_used(tmp_path):
    for n, files in ((2, train.COMPLETE_MARKERS), (4, train.COMPLETE_MARKERS), (6, ("adapter_model.safetensors",))):
        d = tmp_path / f"checkpoint-{n}"
        d.mkdir()
        for f in files:
            (d / f).write_text("x")
    assert train.last_checkpoint(tmp_path).name == "checkpoint-4"
    moved = train.set_aside_incomplete_checkpoints(tmp_path)
    assert [m.name for m in moved] == ["incomplete-checkpoint-6"] and not (tmp_path / "checkpoint-6").exists()


def test_sft_config_follows_hardware():
    from ragcourse.hardware import Hardware

    cfg = load_config("cpu-smoke")
    cpu = Hardware("cpu", None, None, False, None, None, 2, 2, 24.0, False)
    args = train.sft_config(cfg, "/tmp/x", hw=cpu)
    assert args.use_cpu and not args.bf16 and not args.fp16 and args.optim == "adamw_torch"
    assert args.completion_only_loss and args.load_best_model_at_end and args.metric_for_best_model == "eval_loss"
    assert (
        train.optimizer_name(cfg, Hardware("cuda", "T4", (7, 5), False, 15.0, 14.0, 2, 2, 12.0, True))
        == "paged_adamw_8bit"
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 600) -> None:
    start = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early:\n{proc.stdout.read()[-3000:]}")
        if time.time() - start > timeout:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.5)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(smoke, tmp_path):
    """Kill a run after its step-4 checkpoint, leave a half-written one behind, resume: same result as no kill."""
    ref_root, run_root = tmp_path / "ref", tmp_path / "run"
    for root in (ref_root, run_root):  # the session's dataset (same data settings): only training is under test
        shutil.copytree(smoke.artifact_dir("dataset"), root / "cpu-smoke" / "dataset")
    subprocess.run(_cli(ref_root), check=True, env=_env(), capture_output=True, text=True)

    proc = subprocess.Popen(_cli(run_root), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ckpts = run_root / "cpu-smoke" / "checkpoints"
    _wait_for(ckpts / "checkpoint-4" / "trainer_state.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_root / "cpu-smoke" / "adapter").exists()
    half = ckpts / "checkpoint-6"  # what a kill during a save leaves: some files, no trainer_state.json
    shutil.rmtree(half, ignore_errors=True)
    half.mkdir()
    (half / "adapter_model.safetensors").write_bytes(b"partial")

    res = subprocess.run(_cli(run_root, "--resume"), env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "resuming from" in res.stdout and "checkpoint-4" in res.stdout

    def history(root):
        return json.loads((root / "cpu-smoke" / "adapter" / "log_history.json").read_text())

    ref = {h["step"]: h["loss"] for h in history(ref_root) if "loss" in h}
    got = {h["step"]: h["loss"] for h in history(run_root) if "loss" in h}
    assert max(ref) == max(got) == 6
    for step in (5, 6):  # the steps trained after the resume
        assert got[step] == pytest.approx(ref[step], abs=2e-3), (step, ref, got)
    from safetensors.torch import load_file

    a = load_file(ref_root / "cpu-smoke" / "adapter" / "adapter_model.safetensors")
    b = load_file(run_root / "cpu-smoke" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-3


@pytest.mark.slow
def test_two_cpu_processes_train_one_adapter(smoke, tmp_path):
    """Two CPU processes under `accelerate launch` (gloo): both train, one adapter is saved.

    The shipped config (configs/accelerate/cpu-2proc.yaml) explains why it is not `--cpu --num_processes 2`: that
    flag makes accelerate 1.15 start one process only."""
    root = tmp_path / "ddp"
    shutil.copytree(smoke.artifact_dir("dataset"), root / "cpu-smoke" / "dataset")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ROOT / "configs" / "accelerate" / "cpu-2proc.yaml"),
        "-m",
        "ragcourse.cli",
        "train",
        "--preset",
        "cpu-smoke",
        "--set",
        f"paths.output_root={root}",
        "--set",
        "training.max_steps=2",
        "--set",
        "training.eval_steps=2",
        "--set",
        "training.save_steps=2",
        "--set",
        "training.logging_steps=1",
        "--set",
        "data.max_train_examples=24",
        "--set",
        "data.max_eval_examples=4",
        "--set",
        "training.per_device_train_batch_size=2",
    ]
    res = subprocess.run(cmd, env={**_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    adapter = root / "cpu-smoke" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "manifest.json").is_file()
    assert "[process 1/2] training done" in res.stdout and "[process 2/2] training done" in res.stdout
    assert json.loads((adapter / "manifest.json").read_text())["num_processes"] == 2  # one adapter from two processes
    assert not list((root / "cpu-smoke").glob(".adapter.tmp-*"))
    state = json.loads((adapter / "log_history.json").read_text())
    assert any("loss" in h for h in state)


def test_a_nan_training_loss_stops_the_run_with_cause_and_fix():
    from types import SimpleNamespace

    from transformers import TrainerControl

    callback = train.stop_on_non_finite_loss()
    state, control = SimpleNamespace(global_step=12), TrainerControl()
    callback.on_log(SimpleNamespace(fp16=True), state, control, logs={"loss": 1.25})  # finite: nothing happens
    with pytest.raises(train.NonFiniteLossError, match=r"(?s)training loss is nan at step 12.*fp16.*fp32.*bf16"):
        callback.on_log(SimpleNamespace(fp16=True), state, control, logs={"loss": float("nan")})
    with pytest.raises(train.NonFiniteLossError, match=r"(?s)validation loss is inf.*learning_rate"):
        callback.on_evaluate(SimpleNamespace(fp16=False), state, control, metrics={"eval_loss": float("inf")})


def test_a_real_trainer_stops_at_the_first_nan_loss(tmp_path):
    """A tiny random Llama whose output head holds a NaN: the Trainer raises at the first logged step."""
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    with torch.no_grad():
        model.lm_head.weight[0, 0] = float("nan")
    ids = [[1, 2, 3, 4, 5, 6, 7, 8]] * 8
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=5,
        per_device_train_batch_size=4,
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[train.stop_on_non_finite_loss()])
    with pytest.raises(train.NonFiniteLossError, match="training loss is nan at step 1"):
        trainer.train()
    assert trainer.state.global_step == 1


def test_report_to_tensorboard_writes_event_files_offline(tmp_path):
    """``training.report_to: tensorboard`` reaches SFTConfig; a 2-step run writes TensorBoard event files locally."""
    pytest.importorskip("tensorboard", reason="pip install 'ragcourse[tracking]'")
    import torch
    from datasets import Dataset
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer

    from ragcourse.hardware import Hardware

    cfg = load_config("cpu-smoke", training={"report_to": "tensorboard", "max_steps": 2, "logging_steps": 1})
    assert load_config("cpu-smoke").training.report_to == "none"
    cpu = Hardware("cpu", None, None, False, None, None, 2, 2, 24.0, False)
    args = train.sft_config(
        cfg, tmp_path, hw=cpu, eval_strategy="no", save_strategy="no", load_best_model_at_end=False, disable_tqdm=True
    )
    assert args.report_to == ["tensorboard"]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=32,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    ids = [[1, 2, 3, 4, 5, 6, 7, 8]] * 8
    Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids})).train()
    events = sorted((tmp_path / "runs").rglob("events.out.tfevents.*"))
    assert events, f"no event files under {tmp_path / 'runs'}"
    scalars = EventAccumulator(str(events[0].parent)).Reload().Tags()["scalars"]
    assert "train/loss" in scalars and "train/learning_rate" in scalars


def test_report_to_names_the_install_when_the_tracker_is_missing(monkeypatch):
    import importlib.util

    from ragcourse.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install trackio"):
        train.tracker(load_config("cpu-smoke", training={"report_to": "trackio"}))
    with pytest.raises(ConfigError, match="training.report_to"):
        load_config("cpu-smoke", training={"report_to": "tensorbord"})
