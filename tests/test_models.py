import os
import subprocess
import sys
import time

import pytest

from ragcourse import models
from ragcourse.config import load_config
from ragcourse.hardware import Hardware, auto_preset, compute_dtype_name, detect_hardware


@pytest.fixture(scope="module")
def cfg():
    return load_config("cpu-smoke")


def _hw(**kw):
    base = dict(
        device="cuda",
        gpu_name="T4",
        compute_capability=(7, 5),
        bf16=False,
        gpu_total_gb=15.0,
        gpu_free_gb=14.0,
        cpu_cores=2,
        torch_threads=2,
        ram_gb=12.0,
        in_colab=True,
    )
    base.update(kw)
    return Hardware(**base)


def test_dtype_choice_follows_hardware():
    assert compute_dtype_name(_hw()) == "float16"  # T4: no bf16
    assert compute_dtype_name(_hw(bf16=True, compute_capability=(8, 0))) == "bfloat16"
    assert compute_dtype_name(_hw(device="cpu", bf16=False)) == "float32"
    assert compute_dtype_name(_hw(), "float32") == "float32"


def test_auto_preset_by_gpu_memory():
    assert auto_preset(_hw()) == "colab-t4"
    assert auto_preset(_hw(gpu_total_gb=24.0, bf16=True)) == "gpu-24gb"
    assert auto_preset(_hw(gpu_total_gb=80.0, bf16=True)) == "gpu-80gb"
    assert auto_preset(_hw(device="cpu", gpu_total_gb=None)) == "cpu-smoke"


def test_detect_hardware_here():
    hw = detect_hardware()
    assert hw.cpu_cores >= 1 and hw.torch_threads >= 1 and hw.summary()


def test_busy_cpu_warning_says_what_to_do():
    from ragcourse.hardware import BUSY_CPU_PERCENT, busy_cpu_warning

    cpu2, cpu1 = _hw(device="cpu", torch_threads=2), _hw(device="cpu", torch_threads=1)
    assert busy_cpu_warning(0.0, cpu2) is None and busy_cpu_warning(BUSY_CPU_PERCENT, cpu2) is None
    warning = busy_cpu_warning(80.0, cpu2, policy="PASSIVE")
    assert "80% busy" in warning and "close the other notebook kernel" in warning and "OMP_WAIT_POLICY" not in warning
    for spins in ("GOMP_SPINCOUNT=3000", "DEFAULT", "ACTIVE"):  # the course's short spin; the settings that collapse
        warning = busy_cpu_warning(80.0, cpu2, policy=spins)
        assert "OMP_WAIT_POLICY=PASSIVE" in warning and "before torch is imported" in warning
    assert "OMP_WAIT_POLICY" not in busy_cpu_warning(80.0, cpu1, policy="DEFAULT")  # one thread: nothing spins
    assert busy_cpu_warning(80.0, _hw()) is None  # a GPU trains; a busy CPU matters far less there


def test_cpu_busy_percent_leaves_out_this_process(monkeypatch):
    import psutil

    from ragcourse import hardware

    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 60.0)  # everything, share of all cores
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 2)
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: 100.0)  # this process: one core
    monkeypatch.setattr("time.sleep", lambda s: None)
    assert hardware.cpu_busy_percent(0.01) == 10.0
    monkeypatch.setattr(psutil.Process, "cpu_percent", lambda self, interval=None: 200.0)
    assert hardware.cpu_busy_percent(0.01) == 0.0  # never negative


def test_default_torch_threads_is_what_runtime_applies(monkeypatch):
    from ragcourse import hardware, runtime

    applied = []
    monkeypatch.setattr(hardware, "set_torch_threads", lambda n: applied.append(n) or n)
    monkeypatch.setattr(hardware, "DEFAULT_TORCH_THREADS", 1)
    runtime.start("cpu-smoke", quiet=True, writes=False)
    runtime.start("cpu-smoke", quiet=True, writes=False, training={"torch_threads": 2})  # the config wins
    assert applied == [1, 2]


def test_why_cuda_is_unusable_names_the_cause_and_the_fix():
    from ragcourse.hardware import cuda_unusable_reason

    old_driver = cuda_unusable_reason("2.13.0+cu130", "13.0", "535.104.05")
    assert "driver/CUDA mismatch" in old_driver and "CUDA 13.0" in old_driver and "535.104.05" in old_driver
    assert "too old" in old_driver and "update the driver" in old_driver and "torch build" in old_driver
    cpu_build = cuda_unusable_reason("2.13.0+cpu", None, "550.54.15")
    assert "CPU-only build" in cpu_build and "install a CUDA build" in cpu_build and "mismatch" not in cpu_build
    no_gpu = cuda_unusable_reason("2.13.0+cu130", "13.0", None)
    assert "no NVIDIA GPU" in no_gpu and "cpu-smoke" in no_gpu and "GPU runtime" in no_gpu
    assert "CUDA_VISIBLE_DEVICES" in cuda_unusable_reason("2.13.0+cu130", "13.0", "580.65.06", visible_devices="")
    assert "too old" not in cuda_unusable_reason("2.13.0+cu130", "13.0", "580.65.06")  # new enough: another cause


def test_the_nvidia_driver_version_is_read_from_proc(monkeypatch, tmp_path):
    from ragcourse import hardware

    for line, version in (
        ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023", "535.104.05"),
        ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build", "550.54.15"),
    ):
        (tmp_path / "version").write_text(line + "\nGCC version:  gcc version 12.2.0\n")
        monkeypatch.setattr(hardware, "NVIDIA_DRIVER_FILE", str(tmp_path / "version"))
        assert hardware.nvidia_driver_version() == version


@pytest.fixture
def driver_too_old(monkeypatch):
    """A CUDA 12.8 torch beside NVIDIA driver 470 (CUDA 11 only): torch.cuda.is_available() is False."""
    import torch

    from ragcourse import hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(hardware, "nvidia_driver_version", lambda: "470.57.02")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("RAGCOURSE_PRESET", raising=False)


@pytest.mark.parametrize("preset", ["colab-t4", "gpu-24gb"])
def test_a_gpu_preset_without_a_usable_gpu_stops_with_one_line(preset, driver_too_old, tmp_path, capsys):
    from ragcourse import cli, runtime
    from ragcourse.errors import HardwareError

    expected = f"preset {preset} needs a CUDA GPU.*driver/CUDA mismatch.*CUDA 12.8.*470.57.02"
    with pytest.raises(HardwareError, match=expected):
        runtime.start(preset, quiet=True, paths={"output_root": str(tmp_path)})
    assert cli.main(["train", "--preset", preset, "--set", f"paths.output_root={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "update the driver" in err
    assert not (tmp_path / preset).exists()  # stopped before any work
    # what never loads the model still runs here: print the config, say what is built, push or pull artifacts
    assert runtime.start(preset, quiet=True, loads_model=False).preset == preset
    assert cli.main(["status", "--preset", preset, "--set", f"paths.output_root={tmp_path}"]) == 0


def test_auto_falls_back_to_the_cpu_saying_why_when_a_driver_is_there(driver_too_old, monkeypatch, capsys):
    from ragcourse import hardware, runtime

    assert runtime.start(quiet=True, writes=False).preset == "cpu-smoke"
    note = capsys.readouterr().out.strip().splitlines()
    assert len(note) == 1 and "cpu-smoke" in note[0] and "driver/CUDA mismatch" in note[0] and "470.57.02" in note[0]
    monkeypatch.setattr(hardware, "nvidia_driver_version", lambda: None)  # no GPU at all: nothing to explain
    assert runtime.start(quiet=True, writes=False).preset == "cpu-smoke" and capsys.readouterr().out == ""


def test_import_sets_the_wait_policy_unless_the_user_chose_one():
    from ragcourse import hardware

    env: dict[str, str] = {}
    assert hardware.apply_wait_policy(env) == "GOMP_SPINCOUNT=3000" and env == {"GOMP_SPINCOUNT": "3000"}
    for chosen, policy in (({"OMP_WAIT_POLICY": "passive"}, "PASSIVE"), ({"GOMP_SPINCOUNT": "0"}, "GOMP_SPINCOUNT=0")):
        env = dict(chosen)
        assert hardware.apply_wait_policy(env) == policy and env == chosen  # the user's choice stays
    assert "spin briefly" in hardware.wait_sentence("GOMP_SPINCOUNT=3000")
    assert "at once" in hardware.wait_sentence("PASSIVE")
    code = "import os, ragcourse, torch; print(os.environ['GOMP_SPINCOUNT'])"
    child = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", code], env=child, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == hardware.DEFAULT_GOMP_SPINCOUNT  # set by the import, before torch loads OpenMP


def test_cpu_kernels_decide_bf16_from_flags_kernels_and_onednn():
    from ragcourse.hardware import cpu_flags, cpu_kernels, cpu_recipe, generation_batch

    assert "avx2" in cpu_flags("processor : 0\nflags : fpu sse avx2 fma\n")
    amx = frozenset({"avx2", "avx512f", "amx_bf16"})
    assert cpu_kernels(amx, "AVX512", "ALL").bf16
    assert not cpu_kernels(amx, "AVX2", "ALL").bf16  # ATEN_CPU_CAPABILITY=avx2: torch's AVX2 kernels
    assert not cpu_kernels(amx, "AVX512", "AVX2").bf16  # oneDNN held to AVX2 emulates bf16
    assert not cpu_kernels(frozenset({"avx2", "avx512f"}), "AVX512", "ALL").bf16  # AVX-512 without BF16
    here = detect_hardware()
    assert here.cpu_isa == cpu_kernels().isa and here.cpu_bf16 == cpu_kernels().bf16
    amx_cpu, avx2_cpu = _hw(device="cpu", cpu_bf16=True), _hw(device="cpu", cpu_bf16=False)
    # fp32 on every CPU, bf16 in hardware or not: the teaching result of notebook 06 is the same everywhere
    assert compute_dtype_name(amx_cpu) == compute_dtype_name(avx2_cpu) == "float32"
    line = cpu_recipe(amx_cpu, load_in_4bit=True)
    assert (
        "bf16 in hardware" in line and "4-bit NF4 base, float32 compute" in line and "unpacked once to float32" in line
    )
    assert "bf16 emulated" in cpu_recipe(avx2_cpu, load_in_4bit=True)
    # the generation batch it prints is the one models.generate and the memory plan use on a CPU
    assert f"{generation_batch('cpu')} prompts at a time" in line and generation_batch("mps") == generation_batch("cpu")
    assert generation_batch("cuda") < generation_batch("cpu")


def test_answers_on_a_cpu_come_from_the_4bit_weights_unpacked_once(cfg):
    """Same NF4 weights, fp32 layers: greedy answers equal the 4-bit model's, without unpacking per token."""
    import torch

    cpu = detect_hardware()
    four_bit, unpacked = models.load_causal_lm(cfg, quantize=True, hw=cpu), models.load_for_answers(cfg, hw=cpu)
    assert {p.dtype for p in unpacked.parameters()} == {torch.float32}
    assert not any("4bit" in type(m).__name__ for m in unpacked.modules())
    tok = models.load_tokenizer(cfg)
    prompts = [models.chat_prompt(tok, "What is the R-290 charge of the AH-14?")]
    assert models.generate(four_bit, tok, prompts, 16) == models.generate(unpacked, tok, prompts, 16)


def test_embedded_minilm_resolves(cfg):
    path = models.resolve_model("embedded:all-minilm-l6-v2", cfg)
    assert os.path.isfile(os.path.join(path, "config.json"))


def test_unknown_references_are_explained(cfg, tmp_path):
    with pytest.raises(models.ModelNotAvailable, match="Unknown embedded model"):
        models.resolve_model("embedded:gpt-17", cfg)
    with pytest.raises(models.ModelNotAvailable, match="no config.json"):
        models.resolve_model(str(tmp_path), cfg)
    assert models.resolve_model("Qwen/Qwen2.5-1.5B-Instruct", cfg) == "Qwen/Qwen2.5-1.5B-Instruct"


@pytest.mark.slow
def test_conversion_is_atomic_and_reloads_identically(tmp_path, monkeypatch, cfg):
    """Convert the GGUF into a fresh cache; the folder appears whole, and loads fast with the same logits."""
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("RAGCOURSE_CACHE_DIR", str(tmp_path))
    t0 = time.perf_counter()
    path = models.resolve_model(models.SMOLLM2)
    first = time.perf_counter() - t0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smollm2-135m-instruct"]  # no temp dir left behind
    t0 = time.perf_counter()
    assert models.resolve_model(models.SMOLLM2) == path
    assert time.perf_counter() - t0 < 1.0 < first
    gguf = models.smollm2_gguf_path()
    ids = torch.tensor([[1, 504, 3458, 282, 4649, 314]])
    ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    new = AutoModelForCausalLM.from_pretrained(path)
    with torch.no_grad():
        assert torch.equal(ref(ids).logits, new(ids).logits)


@pytest.mark.slow
def test_load_generate_and_4bit(cfg):
    import bitsandbytes as bnb

    tok = models.load_tokenizer(cfg)
    assert tok.model_max_length == cfg.model.max_length
    model = models.load_causal_lm(cfg, quantize=False)
    [answer] = models.generate(
        model, tok, [models.chat_prompt(tok, "What is the capital of France?")], max_new_tokens=16
    )
    assert "Paris" in answer
    q = models.load_causal_lm(cfg, quantize=True)
    linear4 = [m for m in q.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(m.support_avx512bf16_for_cpu is False for m in linear4)
    assert q.get_memory_footprint() < model.get_memory_footprint() / 2


def test_a_t4_gets_fp16_although_torch_calls_its_emulated_bf16_supported(monkeypatch):
    import torch

    from ragcourse.hardware import native_bf16

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda *a: (14 * 2**30, 15 * 2**30))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers (emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    t4 = detect_hardware()
    assert (t4.device, t4.compute_capability, t4.bf16) == ("cuda", (7, 5), False)
    assert compute_dtype_name(t4, "auto") == "float16"
    assert auto_preset(t4) == "colab-t4"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 6))  # an A10G / RTX 3090
    assert compute_dtype_name(detect_hardware(), "auto") == "bfloat16"
    assert [native_bf16(c) for c in ((7, 0), (7, 5), (8, 0), (9, 0), None)] == [False, False, True, True, False]


@pytest.mark.parametrize(
    "text",
    [
        "!!!!!!!!!!!!",
        "The answer is the the the pressure switch.",
        "The City of the City of the City of the City of",
        "   ",
        "E214 E214 E214 E214",
    ],
)
def test_degenerate_generations_are_flagged(text):
    assert models.is_degenerate(text), text
    assert models.degenerate_reason(text)


@pytest.mark.parametrize(
    "text",
    [
        "The exclusion zone radius is 3 m [2].",
        "Wait... the documents do not say. [1]",
        "Steps: 1. isolate 2. vent 3. test -- see VT-20417 (P33 = 45).",
        "| a | b |\n|---|---|\n| 1 | 2 |",
        "It is that that matters: the bump test interval is 7 days.",
    ],
)
def test_ordinary_answers_are_not_flagged(text):
    assert models.degenerate_reason(text) is None, text
