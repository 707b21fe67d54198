"""ragcourse.rehearsal: a GPU preset with only what cannot run on a CPU swapped (the lead's CPU rehearsal builds on
it)."""

import pytest

from ragcourse import evaluate, lora, nbrun, rehearsal
from ragcourse.config import load_config

GPU_PRESETS = ("colab-t4", "gpu-24gb", "gpu-80gb")
SWAPPABLE = {
    "model.name",
    "model.torch_dtype",
    "quantization.bnb_4bit_compute_dtype",
    "training.optim",
    "embedding.name",
    "rag.rerank_model",
    "evaluation.judge",
    "paths.output_root",
}


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_rehearsal_swaps_only_what_a_cpu_cannot_run(preset, tmp_path):
    from transformers import AutoConfig

    cfg = rehearsal.rehearsal_config(preset, tmp_path)
    swaps = rehearsal.rehearsal_swaps(preset, cfg)
    assert set(swaps) <= SWAPPABLE and {"model.name", "rag.rerank_model", "evaluation.judge"} <= set(swaps), swaps
    original = load_config(preset)
    assert cfg.data == original.data and cfg.lora == original.lora and cfg.model.max_length == original.model.max_length
    assert cfg.quantization.load_in_4bit == original.quantization.load_in_4bit and cfg.rag.rerank
    assert cfg.training.gradient_checkpointing == original.training.gradient_checkpointing
    assert cfg.model.torch_dtype in {"float32", "auto"} and cfg.quantization.bnb_4bit_compute_dtype in {
        "float32",
        "auto",
    }
    assert not evaluate.judge_is_model_under_test(cfg) and cfg.evaluation.judge != cfg.model.name
    published, tiny = lora.arch_config(original.model.name), AutoConfig.from_pretrained(cfg.model.name)
    assert tiny.model_type == published.model_type and tiny.tie_word_embeddings == published.tie_word_embeddings
    assert (tiny.num_key_value_heads < tiny.num_attention_heads) == (
        published.num_key_value_heads < published.num_attention_heads
    )
    assert tiny.num_hidden_layers == rehearsal.TINY_SHAPES["num_hidden_layers"]


def test_overrides_go_on_top(tmp_path):
    cfg = rehearsal.rehearsal_config("gpu-24gb", tmp_path, training={"max_steps": 2}, evaluation={"judge_samples": 1})
    assert cfg.training.max_steps == 2 and cfg.evaluation.judge_samples == 1
    assert cfg.training.eval_steps == load_config("gpu-24gb").training.eval_steps


def test_the_tiny_stand_in_loads_as_the_preset_loads_it_and_generates(tmp_path):
    import torch

    from ragcourse import models
    from ragcourse.hardware import detect_hardware

    torch.set_num_threads(1)
    cfg = rehearsal.rehearsal_config("colab-t4", tmp_path)
    hw = detect_hardware()
    model = models.load_causal_lm(cfg, hw=hw)  # 4-bit NF4 as the preset loads it, fp32 compute on the CPU
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    tokenizer = models.load_tokenizer(cfg)
    prompt = models.chat_prompt(tokenizer, "What is the exclusion zone radius?", cfg.model.system_prompt)
    answer = models.generate(model, tokenizer, [prompt], max_new_tokens=4)
    assert len(answer) == 1


def test_a_rehearsed_preset_trains_two_steps_with_the_nan_guard(tmp_path):
    """colab-t4's training path (4-bit, gradient checkpointing, its LoRA targets) on the tiny stand-in, through
    train.make_trainer: the non-finite-loss guard is in the callbacks and switches the Trainer's NaN filter off."""
    import torch
    from datasets import Dataset, DatasetDict

    from ragcourse import models, train

    torch.set_num_threads(1)
    cfg = rehearsal.rehearsal_config(
        "colab-t4",
        tmp_path,
        training={
            "max_steps": 2,
            "eval_steps": 1,
            "save_steps": 1,
            "logging_steps": 1,
            "per_device_train_batch_size": 2,
        },
    )
    rows = [
        {
            "prompt": [
                {"role": "system", "content": cfg.model.system_prompt},
                {"role": "user", "content": f"Question {i}: what is the exclusion zone radius?"},
            ],
            "completion": [{"role": "assistant", "content": f"It is {i} m [1]."}],
        }
        for i in range(6)
    ]
    data = DatasetDict(train=Dataset.from_list(rows), validation=Dataset.from_list(rows[:2]))
    tokenizer = models.load_tokenizer(cfg)
    trainer = train.make_trainer(cfg, train.load_model_for_training(cfg), tokenizer, data, tmp_path / "checkpoints")
    assert any(type(c).__name__ == "_StopOnNonFiniteLoss" for c in trainer.callback_handler.callbacks)
    trainer.train()
    assert trainer.state.global_step == 2 and trainer.args.logging_nan_inf_filter is False
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in trainer.state.log_history if "loss" in h)


def test_the_memory_plan_sizes_a_rehearsal(tmp_path):
    from ragcourse import memory

    plan = memory.phase_plan(rehearsal.rehearsal_config("gpu-24gb", tmp_path))
    assert plan.fits() and plan.phase("judge").parts["judge_weights"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_gpu_preset_rehearsed_through_the_whole_pipeline(preset, tmp_path, capsys):
    """The preset's own pipeline (its chunking, target style, oracle fraction, distractors ranked with the reranker,
    4-bit or 16-bit training with gradient checkpointing, its merge path, evaluation with a judge that is not the model
    under test) through ``pipeline.ensure``, with only ``rehearsal_config``'s swaps and a few steps."""
    import json

    from ragcourse import artifacts, pipeline
    from ragcourse.hardware import set_torch_threads

    set_torch_threads(1)
    cfg = rehearsal.rehearsal_config(
        preset,
        tmp_path / "outputs",
        training={"max_steps": 2, "eval_steps": 1, "save_steps": 1, "logging_steps": 1},
        data={"max_train_examples": 16, "max_eval_examples": 4},
        # the judge's mechanics once (gpu-24gb); a random-weight judge's RAGAS retries cost minutes and prove no more
        evaluation={"max_questions": 3, "judge_samples": 1 if preset == "gpu-24gb" else 0},
    )
    pipeline.ensure(cfg, "eval")
    assert pipeline.status(cfg) == {step: "current" for step in artifacts.STEPS}
    train_rows = [json.loads(line) for line in (cfg.artifact_dir("dataset") / "train.jsonl").read_text().splitlines()]
    context_sizes = {len(row["context_ids"]) for row in train_rows}
    assert context_sizes == {1 + cfg.data.num_distractors}  # oracle + distractors (or distractors only), as configured
    merged = artifacts.read_manifest(cfg.artifact_dir("merged"))
    assert merged["max_logit_difference"] <= 1e-3  # fp32 on the CPU: the merge reproduces the adapter model
    adapter = artifacts.read_manifest(cfg.artifact_dir("adapter"))
    assert adapter["global_step"] == 2
    report = (cfg.artifact_dir("eval") / "report.md").read_text()
    assert "tuned + RAG" in report and ("LLM judge" in report) == (preset == "gpu-24gb")
    assert not evaluate.judge_is_model_under_test(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_preset_dependent_cells_hold_no_more_copies_than_planned(preset, tmp_path):
    """Notebook 03's size comparison (one model at a time), 04's merge with its check logits, 05's one served model and
    06's judge, on the preset's rehearsal (4-bit or 16-bit loading, its judge), counted as the notebook runner
    counts."""
    from ragcourse.hardware import set_torch_threads

    set_torch_threads(1)
    rows = nbrun.live_copies_by_path(preset, tmp_path)
    assert {r["notebook"] for r in rows} == {"03", "04", "05", "06"}
    for row in rows:
        assert row["copies"] <= row["planned_copies"] + 0.1, row
    loads = [r["copies"] for r in rows if r["notebook"] == "03"]
    if load_config(preset).quantization.load_in_4bit:
        assert (
            loads[1] < loads[0]
        )  # smaller than the 16-bit one it replaced (little: the tiny models are mostly embeddings)
    judge = next(r for r in rows if r["notebook"] == "06")
    assert judge["copies"] > next(r for r in rows if r["notebook"] == "05")["copies"]  # the judge is counted too


@pytest.mark.slow
@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_merge_self_check_holds_in_the_presets_16bit_dtype(preset, tmp_path):
    """Notebook 04's self-check at the preset's merge dtype (bf16, or fp16 on a T4): logits within tolerance, at most
    the allowed greedy divergences; and the tuned-vs-base checks of notebooks 03 and 06 are reported, not asserted."""
    from ragcourse import evaluate
    from ragcourse.hardware import set_torch_threads

    set_torch_threads(1)
    result = nbrun.rehearse_merge_self_check(preset, tmp_path)
    assert result["dtype"] in {"bfloat16", "float16"} and 0 < result["max_logit_difference"] <= result["tolerance"], (
        result
    )
    assert result["ok"] and result["near_ties"] == result["answers_differ"], result
    check = evaluate.improvement_check(
        rehearsal.rehearsal_config(preset, tmp_path / "outputs"), base_hits=3, questions=16
    )
    assert not check.asserted and check.reason.startswith("reported, not asserted")
