"""ragcourse.recipe: each GPU preset's training recipe checked against the sample domain (notebook 03). No model
loads."""

import pytest

from ragcourse import recipe
from ragcourse.config import load_config

GPU_PRESETS = ("colab-t4", "gpu-24gb", "gpu-80gb")


@pytest.fixture(scope="module")
def checks():
    return {(p, s): recipe.check_recipe(load_config(p), with_synthetic=s) for p in GPU_PRESETS for s in (False, True)}


@pytest.mark.parametrize("preset", GPU_PRESETS)
@pytest.mark.parametrize("with_synthetic", [False, True])
def test_gpu_presets_validate_several_times_and_keep_their_examples(checks, preset, with_synthetic):
    check = checks[preset, with_synthetic]
    assert check.evaluations >= 3 and check.early_stopping_can_act, check.row()
    assert check.dropped_fraction <= 0.05, (check.kept, check.dropped)
    assert check.checkpoints == check.evaluations  # load_best_model_at_end wants a checkpoint at every validation
    assert check.kept["train"] > 100 and check.kept["validation"] >= 20 and not check.notes
    assert check.train_tokens["max"] <= check.max_length
    assert (check.synthetic_pairs > 0) == with_synthetic


def test_the_teacher_adds_pairs_to_every_split(checks):
    for preset in GPU_PRESETS:
        curated, both = checks[preset, False], checks[preset, True]
        assert both.kept["train"] > curated.kept["train"] and both.total_steps > curated.total_steps
        cfg = load_config(preset)
        assert both.synthetic_pairs <= cfg.data.synthetic_chunks


def test_the_old_colab_recipe_is_caught():
    """colab-t4 before this check: 4 passages of 256 tokens in max_length 1,024, validation every 25 of ~24 steps."""
    old = load_config(
        "colab-t4",
        model={"max_length": 1024},
        training={"gradient_accumulation_steps": 4, "eval_steps": 25, "save_steps": 25},
    )
    check = recipe.check_recipe(old, with_synthetic=False)
    assert check.dropped_fraction > 0.05 and check.evaluations < 3 and not check.early_stopping_can_act
    assert len(check.notes) == 2 and "max_length" in check.notes[1]


def test_trainer_schedule_counts_like_transformers():
    cfg = load_config(
        "gpu-24gb",
        training={
            "per_device_train_batch_size": 4,
            "gradient_accumulation_steps": 4,
            "num_train_epochs": 3,
            "eval_steps": 50,
            "save_steps": 50,
        },
    )
    # 150 examples: 38 batches of 4, 10 optimizer steps an epoch (the last one accumulates 2 batches), 30 steps;
    # one validation, at the last step (transformers evaluates there when it is not a multiple of eval_steps)
    assert recipe.trainer_schedule(150, cfg) == {
        "effective_batch": 16,
        "steps_per_epoch": 10,
        "total_steps": 30,
        "evaluations": 1,
        "checkpoints": 1,
    }
    fixed = load_config("gpu-24gb", training={"max_steps": 25})
    assert recipe.trainer_schedule(150, fixed)["total_steps"] == 25


def test_stand_in_tokenizers_follow_the_family():
    qwen = recipe.proxy_token_counter("Qwen/Qwen2.5-7B-Instruct")
    llama = recipe.proxy_token_counter("meta-llama/Llama-3.1-8B-Instruct")
    assert len(qwen("20417")) == 5 and len(llama("20417")) == 2  # Qwen2.5 splits numbers into digits
    assert qwen("The heat pump") == llama("The heat pump")
    example = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    text_tokens = sum(len(qwen(m["content"])) for m in example["messages"])
    # <|im_start|>role\n ... <|im_end|>\n: about 5 tokens a message (a newline may merge with the text beside it)
    assert abs(recipe.proxy_example_tokens("Qwen/Qwen2.5-7B-Instruct")(example) - (text_tokens + 3 * 5)) <= 3
    assert recipe.proxy_example_tokens("meta-llama/Llama-3.1-8B-Instruct")(example) > text_tokens + 3 * 5
    with pytest.raises(ValueError, match="stand-in"):
        recipe.proxy_token_counter("mistralai/Mistral-7B-Instruct-v0.3")
