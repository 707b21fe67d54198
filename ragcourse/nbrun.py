"""Run the course notebooks top to bottom in fresh kernels (the README's main command)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import project_root
from .course import notebook_files


@dataclass
class NotebookRun:
    notebook: str
    seconds: float
    ok: bool
    error: str | None
    output: Path


def _live_weights_hook(client: Any, records: list[dict[str, Any]]) -> Any:
    """An ``on_cell_executed`` hook that runs ``live_weights``' probe silently in the kernel after each code cell."""
    import json

    from .live_weights import PROBE_EXPRESSION

    async def probe(cell: Any, cell_index: int, execute_reply: Any) -> None:
        start = time.perf_counter()
        msg_id = client.kc.execute("", silent=True, store_history=False, user_expressions={"live": PROBE_EXPRESSION})
        while True:
            msg = await client.kc.get_shell_msg(timeout=120)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        value = msg["content"].get("user_expressions", {}).get("live", {})
        if value.get("status") == "ok":
            import ast

            record = json.loads(ast.literal_eval(value["data"]["text/plain"]))
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            records.append(
                {
                    **record,
                    "cell_index": cell_index,
                    "cell_id": cell.get("id"),
                    "first_line": first[:80],
                    "overhead_seconds": time.perf_counter() - start,
                }
            )

    return probe


def run_notebook(path: Path, out_dir: Path, preset: str, timeout: int = 1800, count_live: bool = False) -> NotebookRun:
    """Execute one notebook in a fresh kernel with ``RAGCOURSE_PRESET`` set; save the executed copy.

    ``count_live``: after every code cell, count the live model weights in the kernel (``ragcourse.live_weights``) and
    write them beside the executed copy (``<notebook>.live_weights.json``), as the notebook tests do.
    """
    import json

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    os.environ["RAGCOURSE_PRESET"] = preset  # the kernel inherits this process's environment
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    records: list[dict[str, Any]] = []
    if count_live:
        client.on_cell_executed = _live_weights_hook(client, records)
    start = time.perf_counter()
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = str(exc).splitlines()[-1] if str(exc) else repr(exc)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / path.name
    nbformat.write(nb, output)
    if count_live:
        (out_dir / f"{path.stem}.live_weights.json").write_text(
            json.dumps({"notebook": path.stem, "preset": preset, "cells": records}, indent=1)
        )
    return NotebookRun(path.name, seconds, error is None, error, output)


def run_all(
    preset: str = "cpu-smoke", names: list[str] | None = None, out_dir: Path | None = None, count_live: bool = False
) -> list[NotebookRun]:
    """Run every course notebook (or those in ``names``) in order; stop at the first failure."""
    root = project_root()
    out_dir = out_dir or root / "outputs" / preset / "notebooks"
    runs = []
    for path in notebook_files(root):
        if names and path.stem not in names and path.name not in names:
            continue
        run = run_notebook(path, out_dir, preset, count_live=count_live)
        runs.append(run)
        status = "ok" if run.ok else f"FAILED: {run.error}"
        print(f"{run.notebook:32s} {run.seconds:7.1f} s  {status}", flush=True)
        if not run.ok:
            print(f"  executed copy with the error: {run.output}")
            break
    return runs


# -- the preset-dependent cells, counted (issue 31) ------------------------------------------------------------------


def _tiny_adapter(cfg: Any, folder: Path, seed: int = 0) -> Path:
    """A LoRA adapter with non-zero B (a fresh one changes nothing) on the rehearsal's 16-bit base, saved to
    ``folder``."""
    import torch

    from .lora import get_peft_model, lora_config
    from .models import load_causal_lm

    if not (folder / "adapter_config.json").is_file():
        model = get_peft_model(load_causal_lm(cfg, quantize=False), lora_config(cfg))
        torch.manual_seed(seed)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.05)
        model.save_pretrained(folder)
    return folder


def live_copies_by_path(preset: str, workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The cells whose path depends on the preset (4-bit or 16-bit loading, the merge, serving, the judge), rehearsed on
    ``preset``'s tiny same-family models (cpu-smoke: its own model) in this process, each counted as a notebook runner
    counts a cell (``live_weights.live_bytes``, as the growth over what was live before) against its notebook's planned
    allowance.

    Copies are of the rehearsal's model in fp32 (a CPU plan of the same config): the count of copies is what carries
    over to the preset's real model; the bytes do not.
    """
    import gc

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from . import evaluate, live_weights, memory, merge, models
    from .hardware import detect_hardware
    from .rehearsal import rehearsal_config

    workdir = Path(workdir)
    cfg = rehearsal_config(preset, workdir / "outputs")
    hw = detect_hardware()
    plan = memory.phase_plan(cfg, memory.HardwareTarget(None, 64.0, "the rehearsal, on this CPU"))
    one = plan.phase("merge").parts["weights_16bit"]
    tokenizer = models.load_tokenizer(cfg)
    adapter_dir = _tiny_adapter(cfg, workdir / "adapter")
    prompts = [
        models.chat_prompt(tokenizer, q, cfg.model.system_prompt)
        for q in ("What is the exclusion zone radius?", "Which label has part number VT-29071?")
    ]
    rows: list[dict[str, Any]] = []
    gc.collect()
    floor = live_weights.live_bytes()

    def count(notebook: str, cell: str) -> None:
        now = live_weights.live_bytes()
        held = (now["module_bytes"] - floor["module_bytes"]) + (now["large_tensor_bytes"] - floor["large_tensor_bytes"])
        rows.append(
            {
                "preset": preset,
                "notebook": notebook,
                "cell": cell,
                "copies": round(held / one, 3),
                # the retrieval models are loaded by none of these cells (and outweigh a tiny model many times)
                "planned_copies": round(memory.planned_live_bytes(plan, notebook, ("retrieval_models",)) / one, 3),
            }
        )

    # notebook 03, section 2: the 16-bit model measured and freed, then the one that trains (4-bit on QLoRA presets)
    path, kwargs = models.resolve_model(cfg.model.name, cfg), models.load_kwargs(cfg, hw)
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    count("03", "the unquantized model (16-bit; fp32 on a CPU) loaded to measure its footprint")
    del model
    models.free_memory()
    bnb = models.bnb_config(cfg, hw) if cfg.quantization.load_in_4bit else None
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=bnb, **kwargs)
    count("03", f"the model that trains ({'4-bit' if bnb else 'unquantized'}), the first one freed")
    del model
    models.free_memory()
    # notebook 04, section 2: the fresh base (dequantized NF4 for QLoRA), the adapter, the check's logits, merged in
    # place
    adapter_model = PeftModel.from_pretrained(merge.fresh_base(cfg), str(adapter_dir)).eval()
    reference = merge.record_logits(adapter_model, tokenizer, prompts)
    merged = adapter_model.merge_and_unload().eval()
    count("04", f"merged in place on {merge.merge_device(cfg) or 'the default device'}, reference logits kept")
    del adapter_model, merged, reference
    models.free_memory()
    # notebook 05, section 2: one model, the adapter switched off for the base
    served = PeftModel.from_pretrained(models.load_for_answers(cfg), str(adapter_dir)).eval()
    count("05", "the adapter model (base = adapter switched off)")
    # notebook 06, section 6: the preset's judge (evaluation.judge) while the model under test is still loaded; a
    # preset judged by its own merged model (cpu-smoke) loads nothing new beyond notebook 06's one model
    if memory.judge_model(cfg) is not None:
        llm = evaluate.judge_llm(cfg)
        count("06", f"judge {Path(cfg.evaluation.judge).name} beside the model under test")
        del llm
    del served
    models.free_memory()
    return rows


def rehearse_merge_self_check(preset: str, workdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Notebook 04's merge self-check in the dtype ``preset`` merges in on its GPU (bf16/fp16), on the tiny models:
    logits within ``merge.TOLERANCE``, and every changed greedy answer changed at a near-tie
    (``merge.compare_answers``). Random weights make near-ties common (flat next-token distributions): a harder case
    than a trained model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from . import merge, models
    from .config import load_config
    from .rehearsal import rehearsal_config

    workdir = Path(workdir)
    cfg = rehearsal_config(preset, workdir / "outputs")
    original = load_config(preset)
    dtype = original.model.torch_dtype if original.model.torch_dtype in {"bfloat16", "float16"} else "bfloat16"
    tokenizer = models.load_tokenizer(cfg)
    adapter_dir = _tiny_adapter(cfg, workdir / "adapter")
    prompts = [
        models.chat_prompt(tokenizer, q, cfg.model.system_prompt)
        for q in (
            "What is the exclusion zone radius?",
            "Which label has part number VT-29071?",
            "What is the R-290 charge of the AH-14?",
            "Who must sign the permit?",
        )
    ]
    base = AutoModelForCausalLM.from_pretrained(models.resolve_model(cfg.model.name, cfg), dtype=getattr(torch, dtype))
    adapter_model = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    reference = merge.record_logits(adapter_model, tokenizer, prompts)
    answers_adapter = models.generate(adapter_model, tokenizer, prompts, max_new_tokens=8)
    merged = adapter_model.merge_and_unload().eval()
    diffs = merge.max_logit_difference(reference, merged, tokenizer, prompts)
    answers_merged = models.generate(merged, tokenizer, prompts, max_new_tokens=8)
    check = merge.compare_answers(merged, tokenizer, prompts, answers_adapter, answers_merged, dtype)
    return {
        "preset": preset,
        "dtype": dtype,
        "max_logit_difference": max(diffs),
        "tolerance": merge.TOLERANCE[dtype],
        "answers": check.answers,
        "answers_differ": check.differ,
        "near_ties": check.near_ties,
        "ok": check.ok,
        "summary": check.summary(),
    }
