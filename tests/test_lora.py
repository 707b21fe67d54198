"""ragcourse.lora: architecture configs, target modules, LoraConfig and parameter counts (notebook 02)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ragcourse import lora
from ragcourse.config import available_presets, load_config


def test_importing_lora_and_memory_does_not_import_torch():
    code = (
        "import sys, ragcourse.lora, ragcourse.memory; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("arch", lora.available_archs())
def test_arch_configs_build_with_published_parameter_counts(arch):
    info = lora.arch_info(arch)
    assert lora.total_parameters(arch) == info["parameters"], info["name"]
    config = lora.arch_config(arch)
    assert config.model_type in {"llama", "qwen2", "mistral"}


def test_every_preset_model_has_an_architecture_config():
    for preset in available_presets():
        name = load_config(preset).model.name
        assert lora.arch_for_model(name) is not None, (preset, name)
    assert lora.arch_for_model("Qwen/Qwen2.5-7B-Instruct") == "qwen2.5-7b"
    with pytest.raises(KeyError):
        lora.arch_info("gpt-17")


@pytest.mark.parametrize("arch", ["smollm2-135m", "qwen2.5-7b", "mistral-7b-v0.3"])
def test_target_module_candidates(arch):
    groups = lora.target_module_candidates(arch)
    assert groups["attention"] == lora.ATTENTION_MODULES
    assert groups["mlp"] == lora.MLP_MODULES
    assert groups["other"] == []  # the output head is never a candidate


def test_target_sets_and_matching():
    assert lora.resolve_target_modules("attention") == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert lora.resolve_target_modules("all-linear") == "all-linear"
    assert lora.resolve_target_modules(["q_proj"]) == ["q_proj"]
    assert lora.matches_target("model.layers.3.self_attn.q_proj", ["q_proj", "v_proj"])
    assert not lora.matches_target("model.layers.3.self_attn.k_proj", ["q_proj", "v_proj"])
    assert lora.matches_target("model.layers.3.mlp.up_proj", r".*\.mlp\..*")


def test_counts_from_the_config_alone():
    # SmolLM2: per layer q 576x576, k/v 576x192, o 576x576, gate/up 576x1536, down 1536x576; 30 layers
    assert lora.count_lora_parameters("smollm2-135m", 8, "attention") == 921_600
    assert lora.count_lora_parameters("smollm2-135m", 8, "all-linear") == 2_442_240
    assert lora.count_lora_parameters("smollm2-135m", 16, "attention") == 1_843_200
    assert lora.count_lora_parameters("llama-2-7b", 8, "q,v") == 4_194_304
    # Qwen2 has q/k/v biases: bias="lora_only" trains those too
    with_bias = lora.count_lora_parameters("qwen2.5-1.5b", 8, "attention", bias="lora_only")
    assert with_bias - lora.count_lora_parameters("qwen2.5-1.5b", 8, "attention") == 28 * (1536 + 256 + 256)


@pytest.mark.slow
def test_counts_equal_peft_on_the_real_smollm2_for_every_sweep_setting():
    import torch
    from transformers import AutoModelForCausalLM

    from ragcourse import models

    model = AutoModelForCausalLM.from_pretrained(models.resolve_model(models.SMOLLM2), dtype=torch.float32)
    for targets in lora.SWEEP_TARGETS:
        for r in lora.SWEEP_RANKS:
            trainable, total = lora.count_with_peft(model, r, targets)
            assert lora.count_lora_parameters(models.SMOLLM2, r, targets) == trainable, (targets, r)
            assert total - trainable == lora.total_parameters("smollm2-135m")
    assert not any("lora_" in name for name, _ in model.named_parameters())  # adapters were removed again


@pytest.mark.parametrize("arch", ["qwen2.5-7b", "llama-3.1-8b"])
def test_counts_equal_peft_on_meta_models(arch):
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(lora.arch_config(arch))
    for targets in ("attention", "all-linear"):
        assert lora.count_with_peft(model, 16, targets)[0] == lora.count_lora_parameters(arch, 16, targets)


def test_lora_config_from_the_course_config():
    cfg = load_config("cpu-smoke", lora={"target_modules": ["q_proj", "v_proj"]})
    config = lora.lora_config(cfg)
    assert config.r == cfg.lora.r and config.lora_alpha == cfg.lora.lora_alpha
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    assert lora.lora_config(load_config("cpu-smoke")).target_modules == "all-linear"
    assert config.task_type == "CAUSAL_LM"
    assert lora.lora_config(load_config("gpu-24gb")).target_modules == "all-linear"
    assert lora.lora_config(cfg, r=32, target_modules="all-linear").r == 32


def test_scaling():
    assert lora.scaling(8, 16) == 2.0
    assert lora.scaling(16, 16, use_rslora=True) == 4.0


def test_the_committed_sweep_cache_is_what_the_notebook_loads():
    cfg = load_config("cpu-smoke")
    path = lora.sweep_cache_path(cfg)
    sweep = json.loads(path.read_text())
    assert lora._cache_matches(sweep, cfg, lora.SweepSettings())
    got = {(row["targets"], row["r"]) for row in sweep["results"]}
    assert got == {(t, r) for t in lora.SWEEP_TARGETS for r in lora.SWEEP_RANKS}
    for row in sweep["results"]:
        assert row["trainable_params"] == lora.count_lora_parameters(cfg.model.name, row["r"], row["targets"])
        assert row["val_loss"] < sweep["val_loss_base"], row  # every setting learned something
        assert row["s_per_step"] > 0


def _notebook_03_lora_lines() -> str:
    """The lines of notebook 03's "Attach LoRA" cell that build the LoraConfig (everything before the model is
    touched)."""
    import json
    from pathlib import Path

    nb = json.loads((Path(__file__).resolve().parents[1] / "notebooks" / "03_qlora_training.ipynb").read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if "lora_config = " in "".join(c["source"]))
    lines = cell.splitlines()
    return "\n".join(lines[: next(i for i, line in enumerate(lines) if line.startswith("lora_config = ")) + 1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "preset,targets",
    [
        ("cpu-smoke", None),
        ("colab-t4", None),
        ("gpu-24gb", None),
        ("gpu-80gb", None),
        ("cpu-smoke", "attention"),
        ("colab-t4", "attention"),
    ],
)
def test_notebook_03_trains_the_lora_config_the_cli_trains(preset, targets, tmp_path):
    """Notebook 03's LoraConfig is the one `ragcourse train` attaches, for every preset; a set name from notebook 02
    (``attention``) resolves to modules that exist (a regex matching nothing would train no adapter at all)."""
    from ragcourse import rehearsal, train
    from ragcourse.hardware import set_torch_threads

    set_torch_threads(1)
    overrides = {"lora": {"target_modules": targets}} if targets else {}
    cfg = (
        load_config(preset, **overrides)
        if preset == "cpu-smoke"
        else rehearsal.rehearsal_config(preset, tmp_path, **overrides)
    )
    namespace = {"cfg": cfg}
    exec(_notebook_03_lora_lines(), namespace)  # noqa: S102  (the notebook's own lines)
    shown = namespace["lora_config"]
    attached = train.load_model_for_training(cfg).peft_config["default"]  # what `ragcourse train` trains
    for field in ("r", "lora_alpha", "lora_dropout", "bias", "use_rslora", "task_type"):
        assert getattr(shown, field) == getattr(attached, field), field
    # peft expands "all-linear" into module names (full paths on a 4-bit model) when it attaches: compare the
    # modules each one adapts.
    from transformers import AutoConfig

    from ragcourse.models import resolve_model

    arch = AutoConfig.from_pretrained(resolve_model(cfg.model.name, cfg))
    adapted = {layer.name.rsplit(".", 1)[-1] for layer in lora.adapted_layers(arch, shown.target_modules)}
    assert adapted and {name.rsplit(".", 1)[-1] for name in attached.target_modules} == adapted
    if targets == "attention":
        assert set(shown.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}


NOTEBOOK_03 = Path(__file__).resolve().parents[1] / "notebooks" / "03_qlora_training.ipynb"
# The library calls notebook 03 writes out, in the order a learner reads them (a script can copy them as they stand).
NOTEBOOK_03_CALLS = (
    "models.bnb_config(cfg, hw)",
    "models.load_kwargs(cfg, hw)",
    "AutoModelForCausalLM.from_pretrained(",
    "quantization_config=bnb",
    "lora.lora_config(cfg)",
    "prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)",
    "set_seed(cfg.training.seed)",
    "get_peft_model(model, lora_config)",
    "SFTConfig(**sft_kwargs)",
    "SFTTrainer(",
    "model=model,",
    "args=args,",
    "processing_class=tokenizer",
    "trainer.train()",
)


def _notebook_03_code() -> list[str]:
    return ["".join(c["source"]) for c in json.loads(NOTEBOOK_03.read_text())["cells"] if c["cell_type"] == "code"]


def test_notebook_03_writes_out_the_library_calls_the_cli_makes():
    """Notebook 03 shows each call (no package function hiding one), and the CLI's functions are built from the very
    helpers the notebook calls, so the two paths share every argument."""
    import inspect

    from ragcourse import models, train

    code = "\n".join(_notebook_03_code())
    positions = [code.find(call) for call in NOTEBOOK_03_CALLS]
    assert all(p >= 0 for p in positions), [c for c, p in zip(NOTEBOOK_03_CALLS, positions) if p < 0]
    assert positions == sorted(positions), "the calls appear in the order they run"
    for hidden in (
        "load_causal_lm(",
        "prepare_for_training(",
        "load_model_for_training(",
        "make_trainer(",
        "run_training(",
    ):
        assert hidden not in code, hidden
    uses = {
        models.load_causal_lm: ("load_kwargs(cfg, hw, device)", "disable_cpu_inference_repack(model)"),
        train.prepare_for_training: (
            "prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)",
            "input_grads_for_checkpointing(cfg, model)",
            "set_seed(cfg.training.seed)",
            "get_peft_model(model, lora_config(cfg))",
        ),
        train.make_trainer: (
            "ensure_pad_token(tokenizer)",
            "score_loss_positions_only()",
            "sft_columns(dataset)",
            "SFTConfig(**sft_config_kwargs(",
            "trainer_callbacks(cfg)",
            "keep_adapters_fp32(trainer)",
        ),
        train.run_training: ("prepare_checkpoints(trainer, cfg, resume)", "trainer.train("),
    }
    for function, calls in uses.items():
        source = inspect.getsource(function)
        assert all(call in source for call in calls), (function.__name__, [c for c in calls if c not in source])
    for helper in (
        "models.disable_cpu_inference_repack(model)",
        "train.input_grads_for_checkpointing(cfg, model)",
        "train.sft_columns(dataset)",
        "train.score_loss_positions_only()",
        "train.trainer_callbacks(cfg)",
        "train.keep_adapters_fp32(trainer)",
        "train.prepare_checkpoints(trainer, cfg)",
        "train.ensure_pad_token(tokenizer)",
    ):
        assert helper in code, helper


def _notebook_03_cells(first: str, last: str) -> str:
    """Notebook 03's code cells from the one containing ``first`` to the one containing ``last``, as they stand."""
    cells = _notebook_03_code()
    start = next(i for i, c in enumerate(cells) if first in c)
    end = next(i for i, c in enumerate(cells) if last in c)
    return "\n".join(cells[start : end + 1])


@pytest.fixture(scope="module")
def quick_dataset(tmp_path_factory):
    """The quick cpu-smoke dataset (tests/quick.py), built once for this module."""
    from quick import quick_config

    from ragcourse import pipeline

    return pipeline.load(quick_config(tmp_path_factory.mktemp("nb03") / "outputs"), "dataset")


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["cpu-smoke", "colab-t4"])
def test_notebook_03_calls_build_the_model_and_trainer_the_cli_builds(preset, quick_dataset, tmp_path, monkeypatch):
    """Notebook 03's cells from BitsAndBytesConfig to SFTTrainer, executed as they stand (the "before" answers
    stubbed), build what `ragcourse train` (``train.train``) trains: the same LoraConfig, the same SFTConfig values,
    the same trainable parameters with the same initial adapter weights, the same callbacks and tokenized data.
    colab-t4 (rehearsed on this CPU) adds gradient checkpointing."""
    import torch

    from ragcourse import models, pipeline, rehearsal, train
    from ragcourse.hardware import set_torch_threads

    set_torch_threads(1)
    root = tmp_path / "outputs"
    cfg = (
        load_config(preset, paths={"output_root": str(root)})
        if preset == "cpu-smoke"
        else rehearsal.rehearsal_config(preset, root)
    )
    monkeypatch.setattr(pipeline, "load", lambda cfg, step: quick_dataset)
    monkeypatch.setattr(models, "generate", lambda model, tokenizer, prompts, **kw: [""] * len(prompts))
    namespace = {"cfg": cfg}
    exec(_notebook_03_cells("models.bnb_config(cfg, hw)", "SFTTrainer("), namespace)  # noqa: S102
    shown = namespace["trainer"]

    built = []  # `ragcourse train` up to trainer.train(): stop there
    monkeypatch.setattr(train, "run_training", lambda trainer, cfg, resume=False: built.append(trainer))
    monkeypatch.setattr(train, "save_adapter", lambda *a, **kw: None)
    train.train(cfg, quick_dataset)
    (cli,) = built

    assert shown.model.peft_config["default"].to_dict() == cli.model.peft_config["default"].to_dict()
    assert shown.args.to_dict() == cli.args.to_dict()
    assert [type(c).__name__ for c in shown.callback_handler.callbacks] == [
        type(c).__name__ for c in cli.callback_handler.callbacks
    ]
    ours, theirs = dict(shown.model.named_parameters()), dict(cli.model.named_parameters())
    assert ours.keys() == theirs.keys()
    assert {n: (p.dtype, p.requires_grad) for n, p in ours.items()} == {
        n: (p.dtype, p.requires_grad) for n, p in theirs.items()
    }
    trainable = [n for n, p in ours.items() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    for name in trainable:  # the same seed before get_peft_model: the same random A matrices
        assert torch.equal(ours[name], theirs[name]), name
    base = shown.model.get_base_model()
    assert hasattr(base, "_require_grads_hook") == cfg.training.gradient_checkpointing
    assert hasattr(cli.model.get_base_model(), "_require_grads_hook") == cfg.training.gradient_checkpointing
    for split in ("train_dataset", "eval_dataset"):
        assert getattr(shown, split)["input_ids"] == getattr(cli, split)["input_ids"], split
    assert shown.processing_class.pad_token == cli.processing_class.pad_token != cli.processing_class.eos_token
