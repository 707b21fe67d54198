"""GGUF export (notebook 04, section 6; ``ragcourse export --format gguf``).

The slow test needs ``ragcourse[gguf]`` (llama-cpp-python, built from source): ``make gguf`` installs it; ``.ci/run``
runs this file in ``.venv-gguf``, where it is installed, so it runs in CI. In ``.venv`` (``make test``) it is skipped.
"""

from __future__ import annotations

import json

import pytest
from quick import quick_config

from ragcourse import export, models, prompts
from ragcourse.config import load_config, resolve_path

NO_LLAMA_CPP = "llama-cpp-python is not installed here: pip install 'ragcourse[gguf]' (make gguf; .ci/run runs it)"
# The quantized type's allowance: llama.cpp may pick another token only where transformers' own top-1/top-2 logit
# margin is smaller than twice the largest first-step logit error measured for that file (a near tie that rounding can
# flip); everywhere else the answers must agree. Measured on the trained cpu-smoke merged model
# (benchmarks/results/gguf_export.json): f16 moves the first step's logits by at most 0.04 and changed 0 of 8 answers;
# q8_0 moves them by up to 0.96 and changed 1 of 8, at a step whose margin was 0.38.
MIN_IDENTICAL_QUANT = 0.5


def course_prompts(cfg, tokenizer, per_file: int = 2) -> list[str]:
    """The course's prompt (system prompt, numbered passage, question) for the first curated questions of each file."""
    rows = [
        json.loads(line)
        for f in sorted(resolve_path(cfg.data.qa_dir).glob("*.jsonl"))
        for line in f.read_text().splitlines()[:per_file]
    ]
    users = [
        prompts.user_prompt(r["question"], [{"text": r["supporting_passages"][0], "title": r["doc_ids"][0]}])
        for r in rows
    ]
    return [models.chat_prompt(tokenizer, user, cfg.model.system_prompt) for user in users]


def test_without_llama_cpp_export_fails_in_one_line_naming_the_extra(monkeypatch, capsys):
    from ragcourse import cli

    monkeypatch.setattr(export, "llama_cpp_version", lambda: None)
    with pytest.raises(export.GGUFUnavailable, match=r"pip install 'ragcourse\[gguf\]'"):
        export.require_llama_cpp()
    assert cli.main(["export", "--format", "gguf", "--preset", "cpu-smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: GGUF export needs llama-cpp-python") and "\n" not in err


def test_modelfile_carries_the_course_template_system_prompt_and_stops():
    cfg = load_config("cpu-smoke")
    tokenizer = models.load_tokenizer(cfg)
    text = export.modelfile("model-q8_0.gguf", tokenizer, cfg, generation_eos=tokenizer.eos_token_id)
    assert "FROM ./model-q8_0.gguf" in text and f'SYSTEM """{cfg.model.system_prompt}"""' in text
    assert 'PARAMETER stop "<|im_end|>"' in text and "PARAMETER temperature 0" in text
    # Ollama's rendering of the TEMPLATE is exactly the prompt the course trains and serves with.
    user = prompts.user_prompt("What does the AH-14 hold?", [{"text": "The AH-14 holds 1.45 kg.", "title": "AH-14"}])
    template = export.ollama_template(tokenizer)
    rendered = export.render_ollama_template(template, cfg.model.system_prompt, user)
    assert rendered == models.chat_prompt(tokenizer, user, cfg.model.system_prompt) + tokenizer.eos_token


def merged_smoke_model(cfg, tmp_path):
    """A cpu-smoke merged model, cheaply (as tests/test_merge_eval.py): a LoRA adapter with small non-zero weights,
    merged by ``merge.merge`` into a fresh base and saved by ``merge.save_merged`` (the course's merge path)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ragcourse import merge

    tokenizer = models.load_tokenizer(cfg)
    peft_model = get_peft_model(
        models.load_causal_lm(cfg, quantize=False),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.002)  # a real update that leaves the answers readable
    peft_model.save_pretrained(tmp_path / "adapter")
    check = course_prompts(cfg, tokenizer, per_file=1)
    merged, diffs = merge.merge(cfg, tokenizer, check, tmp_path / "adapter")
    return merge.save_merged(merged, tokenizer, cfg, max_logit_difference=max(diffs), merge_dtype="float32")


@pytest.mark.slow
@pytest.mark.skipif(not export.available(), reason=NO_LLAMA_CPP)
def test_gguf_greedy_answers_match_transformers(tmp_path):
    """llama.cpp's converter on the merged model; llama.cpp's greedy answers against transformers' on the course's
    prompts: identical for f16, within the stated allowance for q8_0."""
    from ragcourse import merge

    cfg = quick_config(tmp_path / "outputs")
    merged_smoke_model(cfg, tmp_path)
    folder = export.build_gguf(cfg, "q8_0")
    sizes = export.file_mb(folder)
    assert set(sizes) == {"model-f16.gguf", "model-q8_0.gguf"} and (folder / "Modelfile").is_file()
    assert 0.5 * sizes["model-f16.gguf"] < sizes["model-q8_0.gguf"] < 0.6 * sizes["model-f16.gguf"]  # 8.5 vs 16 bits
    assert "FROM ./model-q8_0.gguf" in (folder / "Modelfile").read_text()
    # The one freshness rule: current for the merged model it was made from; another quantized type is not there.
    assert export.export_gguf(cfg, "q8_0") == folder
    assert export.quant_reason(folder, "q4_k_m") is not None

    model, tokenizer = merge.load_merged(cfg)
    texts = course_prompts(cfg, tokenizer)
    results = {
        q: export.compare_greedy(model, tokenizer, folder / export.gguf_name(q), texts, cfg.model.max_new_tokens)
        for q in ("f16", "q8_0")
    }
    for rows in results.values():
        assert all(r["same_tokenization"] for r in rows)  # the GGUF's tokenizer reads the prompt as transformers does
    f16 = results["f16"]
    assert all(r["identical"] for r in f16), [(r["first_difference"], r["margin_at_difference"]) for r in f16]
    assert max(r["first_step_max_logit_difference"] for r in f16) < 0.25
    q8 = results["q8_0"]
    error = max(r["first_step_max_logit_difference"] for r in q8)
    assert error < 2.0
    assert all(r["identical"] or (r["margin_at_difference"] or 0) < 2 * error for r in q8), q8
    assert sum(r["identical"] for r in q8) >= MIN_IDENTICAL_QUANT * len(q8)
