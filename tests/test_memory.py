"""ragcourse.memory: the training-memory estimator of notebook 02, section 4."""

import json
from dataclasses import replace

import pytest

from ragcourse import lora, memory
from ragcourse.config import load_config, project_root

SEVEN_B = memory.MemorySpec(
    model="qwen2.5-7b", weights="nf4-dq", lora_r=16, target_modules="all-linear", batch_size=4, seq_len=1024
)


def test_weights_shrink_with_precision_for_every_architecture():
    for arch in lora.available_archs():
        by_format = {
            w: memory.estimate(replace(SEVEN_B, model=arch, weights=w)) for w in ("bfloat16", "int8", "nf4", "nf4-dq")
        }
        weights = {w: e.weights + e.quant_constants for w, e in by_format.items()}
        assert weights["nf4-dq"] < weights["nf4"] < weights["int8"] < weights["bfloat16"], arch
        assert by_format["nf4-dq"].quant_constants < by_format["nf4"].quant_constants
        assert by_format["bfloat16"].quant_constants == 0


def test_nf4_constants_per_weight():
    est = {w: memory.estimate(replace(SEVEN_B, model="llama-2-7b", weights=w)) for w in ("nf4", "nf4-dq")}
    quantized = sum(i * o for _, i, o in memory.arch_shapes("llama-2-7b").quantizable)
    assert est["nf4"].quant_constants * 8 / quantized == pytest.approx(0.5, abs=0.001)  # bits per weight
    assert est["nf4-dq"].quant_constants * 8 / quantized == pytest.approx(0.127, abs=0.001)


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["nf4", "nf4-dq", "int8"])
def test_quantized_weights_match_bitsandbytes_byte_for_byte(weights):
    """Load SmolLM2 quantized on this CPU and add up every tensor bitsandbytes keeps."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ragcourse import models

    if weights == "int8":
        quant = BitsAndBytesConfig(load_in_8bit=True)
    else:
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=weights == "nf4-dq",
        )
    model = AutoModelForCausalLM.from_pretrained(
        models.resolve_model(models.SMOLLM2), dtype=torch.bfloat16, quantization_config=quant
    )
    seen: dict[int, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor):
            seen.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())

    for p in model.parameters():
        add(p)
    constants_before = len(seen)
    for module in model.modules():
        w = getattr(module, "weight", None)
        state = getattr(w, "quant_state", None)
        if state is not None:
            for t in (
                state.absmax,
                state.code,
                state.offset,
                getattr(state.state2, "absmax", None),
                getattr(state.state2, "code", None),
            ):
                add(t)
        add(getattr(w, "SCB", None))
    assert len(seen) > constants_before
    est = memory.estimate(memory.MemorySpec(model=models.SMOLLM2, weights=weights, device="cpu"))
    assert est.weights + est.quant_constants == sum(seen.values())


@pytest.mark.parametrize("field,small,large", [("batch_size", 2, 8), ("seq_len", 512, 2048), ("lora_r", 8, 64)])
def test_estimate_grows_with_batch_sequence_and_rank(field, small, large):
    for checkpointing in (False, True):
        spec = replace(SEVEN_B, gradient_checkpointing=checkpointing)
        lo, hi = memory.estimate(replace(spec, **{field: small})), memory.estimate(replace(spec, **{field: large}))
        assert lo.total < hi.total
        if field == "lora_r":
            assert lo.lora_params < hi.lora_params and lo.optimizer_states < hi.optimizer_states
        else:
            assert lo.activations < hi.activations and lo.weights == hi.weights


def test_gradient_checkpointing_reduces_activations():
    for arch in lora.available_archs():
        without = memory.estimate(replace(SEVEN_B, model=arch, gradient_checkpointing=False))
        with_ckpt = memory.estimate(replace(SEVEN_B, model=arch, gradient_checkpointing=True))
        assert with_ckpt.activations < without.activations / 2, arch


def test_all_linear_costs_more_than_attention_only():
    attention = memory.estimate(replace(SEVEN_B, target_modules="attention", gradient_checkpointing=False))
    all_linear = memory.estimate(replace(SEVEN_B, gradient_checkpointing=False))
    assert attention.trainable_params < all_linear.trainable_params
    assert attention.activations < all_linear.activations


def test_optimizers():
    est = {o: memory.estimate(replace(SEVEN_B, optimizer=o, adapter_dtype="float32")) for o in memory.OPTIMIZERS}
    n = est["adamw_torch"].trainable_params
    assert est["adamw_torch"].optimizer_states == 8 * n
    assert est["paged_adamw_32bit"].optimizer_states == 8 * n
    assert 2 * n < est["adamw_8bit"].optimizer_states < 2.1 * n
    assert est["paged_adamw_8bit"].pageable == est["paged_adamw_8bit"].optimizer_states
    assert est["adamw_8bit"].pageable == 0


def test_verdicts():
    small = memory.estimate(memory.MemorySpec(model="smollm2-135m", batch_size=1, seq_len=256))
    assert set(small.verdicts().values()) == {"fits"}
    huge = memory.estimate(
        memory.MemorySpec(
            model="llama-3.1-8b",
            weights="bfloat16",
            lora_r=32,
            batch_size=8,
            seq_len=4096,
            gradient_checkpointing=False,
        )
    )
    assert set(huge.verdicts().values()) == {"does not fit"}
    t4 = memory.GPU_CLASSES[0]
    capacity = int(t4.memory_gib * memory.GIB)

    def fake(total, optimizer="paged_adamw_8bit", optimizer_states=0):
        spec = replace(SEVEN_B, optimizer=optimizer)
        return memory.MemoryEstimate(spec, total - optimizer_states, 0, 0, 0, optimizer_states, 0, 0, 0)

    assert fake(int(0.85 * capacity)).verdict(t4) == "fits"
    assert fake(int(0.95 * capacity)).verdict(t4) == "tight"
    assert fake(capacity + 10 * 2**20, optimizer_states=20 * 2**20).verdict(t4) == "fits with paging"
    assert fake(capacity + 10 * 2**20, "adamw_8bit", optimizer_states=20 * 2**20).verdict(t4) == "does not fit"


def test_presets_fit_the_gpus_they_are_written_for():
    expected = {"colab-t4": "T4 16 GB", "gpu-24gb": "24 GB", "gpu-80gb": "80 GB"}
    for preset, gpu in expected.items():
        est = memory.estimate(memory.spec_from_config(load_config(preset), device="cuda"))
        assert est.verdicts()[gpu] == "fits", (preset, est.summary())
    cpu = memory.spec_from_config(load_config("cpu-smoke"), device="cpu")
    assert (cpu.device, cpu.weights, cpu.compute_dtype, cpu.optimizer) == ("cpu", "nf4-dq", "float32", "adamw_torch")


def test_published_figures_within_the_stated_tolerance():
    table = memory.published_comparison()
    assert len(table) == len(memory.PUBLISHED) >= 4
    for fig, row in zip(memory.PUBLISHED, table.to_dict(orient="records")):
        if fig.tolerance is None:  # not comparable (see its note): the estimate must at least stay below it
            assert row["estimate_GiB"] < row["published_GiB"], row
        else:
            assert abs(row["error_%"]) <= 100 * fig.tolerance, row


@pytest.mark.slow
@pytest.mark.parametrize(
    "setup",
    [
        dict(weights="float32", compute_dtype="float32", target_modules="attention", padded=False),
        dict(weights="float32", compute_dtype="float32", target_modules="all-linear", lora_dropout=0.1, padded=False),
        dict(
            weights="bfloat16", compute_dtype="bfloat16", target_modules="attention", padded=True
        ),  # fp32 adapters: casts
        dict(
            weights="nf4-dq", compute_dtype="bfloat16", target_modules="all-linear", padded=True
        ),  # QLoRA: bf16 adapters
    ],
)
def test_per_layer_terms_match_what_autograd_saves(setup):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ragcourse import models

    spec = memory.MemorySpec(
        model=models.SMOLLM2,
        device="cpu",
        lora_r=8,
        batch_size=2,
        seq_len=48,
        loss="full",
        gradient_checkpointing=False,
        optimizer="adamw_torch",
        **setup,
    )
    dtype = getattr(torch, spec.compute_dtype)
    kwargs = {"dtype": dtype}
    if spec.quantized:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
    model = AutoModelForCausalLM.from_pretrained(models.resolve_model(models.SMOLLM2), **kwargs)
    adapter_dtype = spec.resolved_adapter_dtype
    model = lora.get_peft_model(
        model,
        LoraConfig(
            r=8,
            lora_alpha=16,
            lora_dropout=spec.lora_dropout,
            task_type="CAUSAL_LM",
            target_modules=lora.resolve_target_modules(spec.target_modules),
        ),
        autocast_adapter_dtype=adapter_dtype == "float32",
    )
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(getattr(torch, adapter_dtype))
    ids = torch.randint(0, 49152, (2, 48), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    if spec.padded:
        mask[1, -5:] = 0
    measured = memory.saved_activation_bytes(model, input_ids=ids, attention_mask=mask, labels=ids)
    assert memory.saved_bytes_without_checkpointing(spec) == pytest.approx(measured, rel=0.01)


@pytest.mark.slow
def test_cpu_peak_memory_is_predicted():
    spec = memory.MemorySpec(
        model="embedded:smollm2-135m-instruct",
        weights="float32",
        compute_dtype="float32",
        device="cpu",
        lora_r=8,
        target_modules="attention",
        batch_size=2,
        seq_len=96,
        gradient_checkpointing=False,
        optimizer="adamw_torch",
        loss="full",
        padded=False,
    )
    measured = memory.measure_cpu_training_peak(spec, steps=2)
    assert abs(measured["relative_error"]) < 0.15, measured


def test_committed_cpu_measurements():
    path = project_root() / "benchmarks" / "results" / "memory_estimator.json"
    result = json.loads(path.read_text())
    assert len(result["cpu"]) >= 2
    for row in result["cpu"]:
        assert abs(row["error_live_%"]) < 15, row


# -- the memory plan of every phase (notebook 02, section 4b) -------------------------------------

GPU_PRESETS = ("colab-t4", "gpu-24gb", "gpu-80gb")
# The targets; the plan's GPU classes are what CUDA reports usable (never more than these).
TARGETS_GIB = {"colab-t4": (15.0, 12.7), "gpu-24gb": (24.0, None), "gpu-80gb": (80.0, None)}


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_every_phase_of_every_gpu_preset_fits_its_target_with_10_percent_to_spare(preset):
    plan = memory.phase_plan(load_config(preset))
    gpu_gib, host_gib = TARGETS_GIB[preset]
    assert plan.target.gpu.memory_gib <= gpu_gib and (host_gib is None or plan.target.host_gib <= host_gib)
    assert {p.phase for p in plan.phases} >= {"train", "merge", "evaluation", "serving"}
    for phase in plan.phases:
        spare = plan.spare(phase)
        assert spare["gpu"] >= 0.10 and spare["host"] >= 0.10, (preset, phase.phase, spare, phase.parts)
    assert plan.fits()
    train = memory.estimate(memory.spec_from_config(load_config(preset), device="cuda"))
    assert plan.phase("train").gpu_bytes == train.total


def test_the_plan_holds_one_16bit_copy_in_merge_and_evaluation():
    cfg = load_config("gpu-24gb")
    plan = memory.phase_plan(cfg)
    full = memory.weights_bytes(cfg.model.name, "bfloat16")
    assert full == 2 * lora.total_parameters(cfg.model.name)
    for phase in ("merge", "evaluation", "serving"):
        parts = plan.phase(phase).parts
        assert parts["weights_16bit"] == full and plan.phase(phase).gpu_bytes < 1.5 * full, phase
    kv = memory.kv_cache_bytes("qwen2.5-7b", 1000)  # 28 layers x (k, v) x 4 kv heads x 128 x bf16
    assert kv == 28 * 2 * 4 * 128 * 2 * 1000


def test_kv_cache_matches_what_generation_caches(tmp_path):
    """A tiny random Qwen2 (grouped-query attention): the cache a forward pass returns is what the plan counts."""
    import torch

    from ragcourse import rehearsal

    torch.set_num_threads(1)
    folder = rehearsal.tiny_causal_lm("qwen2.5-7b", tmp_path / "tiny")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        cache = model(input_ids=torch.ones(3, 20, dtype=torch.long), use_cache=True).past_key_values
    cached = sum(t.nbytes for layer in cache.layers for t in (layer.keys, layer.values))
    assert cached == memory.kv_cache_bytes(str(folder), 3 * 20, "float32")


def test_merge_falls_back_to_the_cpu_then_to_shards_when_memory_is_short():
    cfg = load_config("gpu-24gb")
    small_gpu = memory.HardwareTarget(memory.GpuClass("8 GB", 7.6, "a small card"), 64.0, "big host")
    merge = memory.phase_plan(cfg, small_gpu).phase("merge")
    assert merge.where == "CPU" and "GPU cannot hold" in merge.note
    assert merge.host_bytes > memory.weights_bytes(cfg.model.name, "bfloat16")
    both_small = memory.HardwareTarget(small_gpu.gpu, 12.7, "small host")
    merge = memory.phase_plan(cfg, both_small).phase("merge")
    assert merge.where == "CPU, shard by shard" and merge.host_bytes < 0.9 * 12.7 * memory.GIB


def test_a_local_judge_is_planned_beside_the_model_under_test():
    with_judge = memory.phase_plan(load_config("gpu-24gb", evaluation={"judge": "Qwen/Qwen2.5-7B-Instruct"}))
    judge = with_judge.phase("judge")
    assert judge.parts["judge_weights"] == memory.weights_bytes("qwen2.5-7b", "nf4-dq")  # the preset loads it in 4-bit
    # a 4-bit 7B judge beside the 16-bit 7B would leave less than 10% of a 24 GB card: the plan frees the model first
    assert judge.where == "GPU, model under test freed first" and "weights_16bit" not in judge.parts
    assert with_judge.fits()
    small = memory.phase_plan(load_config("gpu-24gb")).phase("judge")  # the preset's 3B judge fits beside it
    assert small.where == "GPU" and small.parts["weights_16bit"] > 0
    with pytest.raises(ValueError, match="architecture config"):
        memory.phase_plan(load_config("gpu-24gb", evaluation={"judge": "some/unknown-model"}))


def test_readme_presets_table_is_generated_from_the_plan():
    readme = (project_root() / "README.md").read_text(encoding="utf-8")
    assert memory.with_presets_table(readme) == readme, "stale: run python scripts/presets_table.py"
    for preset in GPU_PRESETS:
        assert f"| `{preset}` |" in memory.presets_table()


@pytest.mark.parametrize("preset", GPU_PRESETS)
def test_expected_peak_memory_is_the_plans_largest_gpu_phase(preset):
    import math

    cfg = load_config(preset)
    plan = memory.phase_plan(cfg)
    assert cfg.expected.peak_memory_gb == math.ceil(max(p.gpu_bytes for p in plan.phases) / memory.GIB), plan.table()


def test_the_plan_can_be_made_for_this_machine():
    from ragcourse.hardware import Hardware

    l4 = Hardware("cuda", "NVIDIA L4", (8, 9), True, 22.0, 21.5, 4, 4, 15.0, False)
    target = memory.this_machine(l4)
    assert (target.gpu.name, target.gpu.memory_gib, target.host_gib) == ("NVIDIA L4", 22.0, 15.0)
    assert memory.phase_plan(load_config("gpu-24gb"), target).phase("merge").where == "GPU"
    t4 = Hardware("cuda", "Tesla T4", (7, 5), False, 15.0, 14.5, 2, 2, 12.7, True)
    assert (
        memory.phase_plan(load_config("gpu-24gb"), memory.this_machine(t4)).phase("merge").where
        == "CPU, shard by shard"
    )
    cpu = memory.this_machine(Hardware("cpu", None, None, False, None, None, 2, 2, 24.0, False))
    assert cpu.gpu is None and memory.phase_plan(load_config("cpu-smoke"), cpu).fits()


# -- live weights per notebook cell (issue 31) ---------------------------------------------------------------------


def test_live_weights_count_each_storage_once_and_large_tensors_outside_modules():
    import torch

    from ragcourse import live_weights

    before = live_weights.live_bytes()
    a = torch.nn.Linear(512, 1024, bias=False)
    b = torch.nn.Sequential(a, torch.nn.Linear(1024, 512, bias=False))
    b[1].weight = torch.nn.Parameter(a.weight.t())  # tied: a view of the same storage
    logits = [torch.zeros(256, 1024) for _ in range(2)]  # 1 MiB each: large
    small = torch.zeros(8, 8)
    view = a.weight[:10]  # a view of a weight is not a large tensor of its own
    now = live_weights.live_bytes()
    assert now["module_bytes"] - before["module_bytes"] == 512 * 1024 * 4
    assert now["large_tensor_bytes"] - before["large_tensor_bytes"] == 2 * 256 * 1024 * 4
    assert any(r["module"] == "Sequential" for r in now["roots"]) and now["seconds"] < 30
    del a, b, logits, small, view
    after = live_weights.live_bytes()
    assert (
        after["module_bytes"] == before["module_bytes"] and after["large_tensor_bytes"] == before["large_tensor_bytes"]
    )


@pytest.mark.parametrize("preset", ["cpu-smoke", *GPU_PRESETS])
def test_every_notebook_has_a_planned_live_allowance(preset):
    """Each notebook's worst cell is covered by a phase of the plan: at least one copy of the model where it loads one,
    and one copy (not two or three) in the merge, evaluation and serving notebooks."""
    plan = memory.phase_plan(load_config(preset))
    one = memory.one_copy_bytes(load_config(preset))
    allowed = {nb: memory.planned_live_bytes(plan, nb) / one for nb in ("00", "01", "02", "03", "04", "05", "06")}
    assert all(v >= 1.0 for v in allowed.values()), allowed
    assert allowed["05"] < 1.5 and allowed["04"] < 1.5 and allowed["06"] < 2.0, allowed  # never two 16-bit models
    with pytest.raises(ValueError, match="No phase"):
        memory.planned_live_bytes(plan, "09")


def test_a_cell_holding_two_copies_is_over_the_plan():
    cfg = load_config("cpu-smoke")
    plan, one = memory.phase_plan(cfg), memory.one_copy_bytes(cfg)
    one_model = {"module_bytes": one, "large_tensor_bytes": 0, "roots": [{"module": "LlamaForCausalLM", "bytes": one}]}
    assert memory.live_excess(plan, "05_rag_llamaindex", one_model, one) is None
    two = {
        **one_model,
        "module_bytes": 2 * one,
        "roots": [{"module": "PeftModelForCausalLM", "bytes": one}, {"module": "LlamaForCausalLM", "bytes": one}],
    }
    reason = memory.live_excess(plan, "05_rag_llamaindex", two, one)
    assert reason and "holds 2.00 copies" in reason and "PeftModelForCausalLM" in reason and "notebook 05" in reason


def test_the_merge_check_logits_on_the_host_are_what_the_plan_states():
    """merge.record_logits keeps CHECK_TOKENS positions per prompt: the plan's check_logits, whatever the prompt
    length."""
    for preset in ("cpu-smoke", *GPU_PRESETS):
        cfg = load_config(preset)
        vocab = memory.arch_shapes(cfg.model.name).vocab
        planned = memory.phase_plan(cfg).phase("merge").parts["check_logits"]
        assert planned == 2 * memory.CHECK_PROMPTS * memory.CHECK_TOKENS * vocab * 4


def test_the_probe_runs_silently_in_a_notebook_kernel():
    """What the notebook tests run after each cell: a silent request whose answer comes back in user_expressions."""
    from jupyter_client.manager import start_new_kernel

    from ragcourse import live_weights

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        assert (
            live_weights.probe_kernel(kc)["module_bytes"] == 0
        )  # torch not imported yet: nothing imported by the probe
        kc.execute_interactive(
            "import torch; layer = torch.nn.Linear(1024, 512); logits = torch.zeros(512, 1024)", timeout=120
        )
        record = live_weights.probe_kernel(kc)
        assert record["module_bytes"] == (1024 * 512 + 512) * 4 and record["large_tensor_bytes"] == 512 * 1024 * 4
        assert record["roots"][0]["module"] == "Linear" and record["peak_rss_bytes"] >= record["rss_bytes"] > 0
        reply = kc.execute_interactive("print(len(In))", timeout=60)  # the probe left no trace in the history
        assert reply["content"]["execution_count"] == 2
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def test_nbrun_counts_live_weights_after_every_cell(tmp_path):
    """``ragcourse notebooks``' runner (nbclient) runs the same probe after each code cell when asked."""
    import json

    import nbformat

    from ragcourse import nbrun

    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell("import torch"),
            nbformat.v4.new_markdown_cell("text"),
            nbformat.v4.new_code_cell("layer = torch.nn.Linear(256, 256, bias=False)"),
            nbformat.v4.new_code_cell("del layer"),
        ]
    )
    path = tmp_path / "99_tiny.ipynb"
    nbformat.write(nb, path)
    run = nbrun.run_notebook(path, tmp_path / "out", "cpu-smoke", timeout=120, count_live=True)
    assert run.ok
    cells = json.loads((tmp_path / "out" / "99_tiny.live_weights.json").read_text())["cells"]
    assert [c["cell_index"] for c in cells] == [0, 2, 3]
    assert [c["module_bytes"] for c in cells] == [0, 256 * 256 * 4, 0]
    executed = nbformat.read(tmp_path / "out" / "99_tiny.ipynb", as_version=4)
    assert [c.get("execution_count") for c in executed.cells if c.cell_type == "code"] == [1, 2, 3]  # no trace
