import os
import time

import pytest

from ragcourse import models
from ragcourse.config import load_config
from ragcourse.hardware import Hardware, auto_preset, compute_dtype_name, detect_hardware


@pytest.fixture(scope="module")
def cfg():
    return load_config("cpu-smoke")


def _hw(**kw):
    base = dict(device="cuda", gpu_name="T4", compute_capability=(7, 5), bf16=False, gpu_total_gb=15.0,
                gpu_free_gb=14.0, cpu_cores=2, torch_threads=2, ram_gb=12.0, in_colab=True)
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
    [answer] = models.generate(model, tok, [models.chat_prompt(tok, "What is the capital of France?")], max_new_tokens=16)
    assert "Paris" in answer
    q = models.load_causal_lm(cfg, quantize=True)
    linear4 = [m for m in q.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert linear4 and all(m.support_avx512bf16_for_cpu is False for m in linear4)
    assert q.get_memory_footprint() < model.get_memory_footprint() / 2
