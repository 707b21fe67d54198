"""Merge checks (notebook 04) and evaluation statistics (notebook 06)."""

import math

import pytest

from ragcourse import evaluate, merge, prompts, scoring
from ragcourse.config import load_config, resolve_path


def test_changed_figures_parse_the_regulation_table():
    cfg = load_config("cpu-smoke")
    v2 = next(resolve_path(cfg.data.corpus_dir).rglob("fsr-7-field-service-safety-regulation-v2.md")).read_text()
    changes = merge.changed_figures(v2)
    assert len(changes) == 7 and {"clause", "subject", "v1", "v2"} == set(changes[0])
    assert all(c["v1"] != c["v2"] for c in changes)
    ex = merge.rule_examples(changes, "v2", "sys")
    assert len(ex) == 21 and all(e["key_fact"] in e["completion"][0]["content"] for e in ex)
    assert "FSR-7 refresher" in merge.rule_questions(changes)[0]


@pytest.mark.slow
def test_merged_logits_equal_adapter_logits(tmp_path):
    """A LoRA adapter with non-zero weights, merged into a fresh fp32 base: logits agree within tolerance."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ragcourse import models

    cfg = load_config("cpu-smoke")
    tok = models.load_tokenizer(cfg)
    peft_model = get_peft_model(
        models.load_causal_lm(cfg, quantize=False),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    torch.manual_seed(0)
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)  # a fresh adapter has B = 0; make the update real
    peft_model.save_pretrained(tmp_path / "adapter")
    prompts_ = [models.chat_prompt(tok, "What is the AH-14 charge?"), "Vellmark builds heat pumps in Hallstrand."]
    merged, diffs = merge.merge(cfg, tok, prompts_, tmp_path / "adapter")
    base = models.load_causal_lm(cfg, quantize=False)
    moved = merge.max_logit_difference(merge.record_logits(base, tok, prompts_), merged, tok, prompts_)
    assert max(diffs) <= merge.TOLERANCE["float32"] < min(moved)  # equal to the adapter, different from the base
    assert not hasattr(merged, "peft_config")


def test_bootstrap_interval_contains_the_mean_and_narrows_with_n():
    small = [1, 0, 1, 1, 0, 1, 0, 1]
    mean, lo, hi = evaluate.bootstrap_ci(small)
    assert lo <= mean <= hi and mean == pytest.approx(0.625)
    _, lo2, hi2 = evaluate.bootstrap_ci(small * 10)
    assert hi2 - lo2 < hi - lo
    assert evaluate.bootstrap_ci([1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(v) for v in evaluate.bootstrap_ci([]))


def test_paired_comparison_separates_signal_from_noise():
    better = evaluate.paired_comparison([1] * 18 + [0] * 2, [0] * 14 + [1] * 6, "answer_correct")
    assert better.beyond_noise and better.mean_difference > 0 and better.wins > better.losses and better.p_value < 0.05
    noise = evaluate.paired_comparison([1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 1, 0], "answer_correct")
    assert not noise.beyond_noise
    text = evaluate.conclusion(better, "tuned + RAG", "base + RAG", 0.95)
    assert "larger than the noise" in text and "better" in text


def test_scoring_reads_like_a_person():
    ex = {"type": "numeric", "key_fact": "1.45 kg", "has_oracle": True, "answer": "It holds 1.45 kg."}
    assert scoring.is_correct(ex, 'Quote: [2] "The AH-14 holds 1.45 kg."\nAnswer: It holds 1.45kg of R-290.')
    assert not scoring.is_correct(
        ex, 'Quote: [2] "1.45 kg"\nAnswer: It holds 1.10 kg.'
    )  # the quote alone does not count
    assert not scoring.is_correct(ex, prompts.NOT_IN_DOCUMENTS)
    unans = {"type": "unanswerable", "key_fact": "", "has_oracle": False}
    assert scoring.is_correct(unans, prompts.NOT_IN_DOCUMENTS) and not scoring.is_correct(unans, "It is 3 m.")
    assert scoring.token_f1("Answer: it holds 1.45 kg", "It holds 1.45 kg.") == pytest.approx(1.0)


def test_score_rows_and_refusals():
    import pandas as pd

    examples = [
        {"id": "a", "type": "numeric", "question": "q1", "answer": "3 m", "key_fact": "3 m", "contexts": ["c"]},
        {
            "id": "b",
            "type": "unanswerable",
            "question": "q2",
            "answer": "The documents do not contain it.",
            "key_fact": "",
            "contexts": [],
        },
        {"id": "c", "type": "numeric", "question": "q3", "answer": "2 kg", "key_fact": "2 kg", "contexts": ["c"]},
    ]
    answers = [
        {"answer": "Answer: 3 m", "contexts": ["The gap is 3 m."], "context_ids": ["x#0"]},
        {"answer": prompts.NOT_IN_DOCUMENTS, "contexts": ["Nothing about it."], "context_ids": ["y#0"]},
        {"answer": prompts.NOT_IN_DOCUMENTS, "contexts": ["Retrieval missed: no weight here."], "context_ids": ["z#0"]},
    ]
    rows = evaluate.score_rows(examples, answers, "tuned + RAG")
    assert [r["answer_correct"] for r in rows] == [1.0, 1.0, 0.0]  # an answerable question still wants its key fact
    assert [(r["refusal_case"], r["right_refusal"], r["wrong_refusal"]) for r in rows] == [
        (False, False, False),
        (True, True, False),
        (True, True, False),
    ]
    frame = pd.DataFrame(rows)
    table = evaluate.refusal_table(frame)
    # Refusal cases: the unanswerable question and the one whose passages miss its key fact; both refused.
    assert table.iloc[0]["refusal cases (unanswerable + passages miss the answer)"] == "1 + 1"
    assert table.iloc[0]["right refusals"].startswith("2/2 = 1.00") and table.iloc[0]["wrong refusals"].startswith(
        "0/1 = 0.00"
    )
    assert evaluate.refusal_counts(frame, "tuned + RAG") == {
        "right": 2,
        "cases": 2,
        "unanswerable_right": 1,
        "unanswerable": 1,
        "wrong": 0,
        "answerable": 1,
    }
    closed = pd.DataFrame(evaluate.score_rows(examples, [{**a, "contexts": []} for a in answers], "tuned closed-book"))
    assert evaluate.refusal_counts(closed, "tuned closed-book")["wrong"] == 1  # no passages: it should have answered


def test_non_llm_ragas_metrics_run_offline():
    cfg = load_config("cpu-smoke")
    rows = [
        {
            "question": "What is the AH-14 charge?",
            "answer": "Answer: 1.45 kg",
            "reference": "The AH-14 holds 1.45 kg.",
            "contexts": ["The AH-14 holds 1.45 kg of R-290."],
            "reference_contexts": ["The AH-14 holds 1.45 kg of R-290."],
        },
        {
            "question": "Q?",
            "answer": "Answer: 3 m",
            "reference": "It is 2 m.",
            "contexts": ["unrelated"],
            "reference_contexts": ["It is 2 m."],
        },
    ]
    scores = evaluate.non_llm_scores(rows, cfg)
    assert len(scores) == 2 and all(0 <= v <= 1 for s in scores for v in s.values())
    assert scores[0]["non_llm_context_recall"] > scores[1]["non_llm_context_recall"]
    assert scores[0]["semantic_similarity"] > 0.5


@pytest.mark.slow
def test_merge_changes_the_base_in_place_without_a_second_copy(tmp_path, monkeypatch):
    """merge.merge loads one base, and the merged model *is* that base with its tensors updated in place."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ragcourse import models

    cfg = load_config("cpu-smoke")
    tok = models.load_tokenizer(cfg)
    peft_model = get_peft_model(
        models.load_causal_lm(cfg, quantize=False),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], task_type="CAUSAL_LM"),
    )
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    peft_model.save_pretrained(tmp_path / "adapter")
    del peft_model
    loaded, fresh_base = [], merge.fresh_base
    monkeypatch.setattr(merge, "fresh_base", lambda *a, **k: loaded.append(fresh_base(*a, **k)) or loaded[-1])
    merged, _ = merge.merge(cfg, tok, ["Vellmark builds heat pumps."], tmp_path / "adapter")
    assert len(loaded) == 1 and merged is loaded[0]
    params = list(merged.parameters())
    assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)  # every weight once, no copies


@pytest.mark.slow
def test_evaluation_holds_one_model_at_a_time(smoke):
    """four_way_answers frees the tuned model before it loads the base: never two sets of weights at once."""
    import weakref

    from ragcourse import evaluate

    alive: list[weakref.ref] = []
    loaders = evaluate.evaluated_models(smoke)

    def tracked(name):
        def load():
            assert all(ref() is None for ref in alive), "the previous model is still in memory"
            model, tokenizer = loaders[name]()
            alive.append(weakref.ref(model))
            return model, tokenizer

        return load

    examples = evaluate.test_examples(smoke)[:2]
    rows = evaluate.four_way_answers(smoke, examples, lambda q: [], {n: tracked(n) for n in ("tuned", "base")})
    assert len(rows) == 4 * len(examples) and len(alive) == 2 and alive[-1]() is None


def test_notebook_06_reads_the_refusal_and_transfer_benchmarks():
    """Notebook 06's refusal-recipes table and transfer sentence come from the committed results, number for number."""
    import json

    from ragcourse.config import project_root

    results = project_root() / "benchmarks" / "results"
    runs = json.loads((results / "refusal_recipes_cpu-smoke.json").read_text())["runs"]
    table = evaluate.refusal_recipes("cpu-smoke")
    assert table.recipe.tolist() == [r["variant"] for r in runs]
    for row, run in zip(table.to_dict("records"), runs):
        c = run["tuned"]["counts"]
        assert row["wrong refusals"].startswith(f"{c['refused_answerable']}/{c['answerable']} = ")
        assert (
            row["right refusals: unanswerable"] == f"{run['tuned']['right_refusals_unanswerable']}/{c['unanswerable']}"
        )
    assert evaluate.refusal_recipes("no-such-preset").empty and evaluate.transfer_sentence("no-such-preset") is None
    transfer = json.loads((results / "transfer_cpu-smoke.json").read_text())
    sentence = evaluate.transfer_sentence("cpu-smoke")
    f1 = transfer["tuned_minus_base"]["token_f1"]
    assert (
        f"{transfer['conditions']['tuned + RAG']['trained_form']} of {transfer['corpus']['questions']} answers"
        in sentence
    )
    assert f"{f1['mean']:+.3f} (interval [{f1['low']:+.3f}, {f1['high']:+.3f}]" in sentence


def test_record_logits_keeps_only_the_last_positions(tmp_path):
    """The merge check's reference: CHECK_TOKENS positions of fp32 logits per prompt, not sequence x vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ragcourse import memory, rehearsal

    torch.set_num_threads(1)
    folder = rehearsal.tiny_causal_lm("qwen2.5-7b", tmp_path / "tiny")
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    long_prompt, short_prompt = "Vellmark builds heat pumps. " * 60, "Hallstrand."
    logits = merge.record_logits(model, tok, [long_prompt, short_prompt])
    n_long = len(tok(long_prompt, add_special_tokens=False).input_ids)
    assert n_long > memory.CHECK_TOKENS
    assert logits[0].shape == (memory.CHECK_TOKENS, model.config.vocab_size) and logits[0].dtype == torch.float32
    assert logits[1].shape[0] == len(tok(short_prompt, add_special_tokens=False).input_ids)
    with torch.no_grad():
        full = model(**tok(long_prompt, return_tensors="pt", add_special_tokens=False)).logits[0]
    assert torch.allclose(full[-memory.CHECK_TOKENS :], logits[0], atol=1e-5)  # the same numbers, only fewer
    assert merge.check_logits_bytes(logits[:1]) == memory.CHECK_TOKENS * model.config.vocab_size * 4


def test_answer_check_exact_in_fp32_near_ties_only_in_16bit():
    assert merge.AnswerCheck("float32", 4, 0, 0).ok and not merge.AnswerCheck("float32", 4, 1, 1).ok
    assert merge.AnswerCheck("bfloat16", 4, 2, 2).ok and not merge.AnswerCheck("bfloat16", 4, 2, 1).ok
    assert "2 of 4 greedy answers differ" in merge.AnswerCheck("float16", 4, 2, 2).summary()


@pytest.mark.parametrize("preset", ["cpu-smoke", "colab-t4", "gpu-24gb", "gpu-80gb"])
def test_tuned_beats_base_is_asserted_where_the_preset_was_measured(preset):
    cfg = load_config(preset)
    check = evaluate.improvement_check(cfg, base_hits=2, questions=16)
    measured = evaluate.measured_improvement(preset)
    assert check.asserted == (measured is not None and measured["low"] > 0), check.reason
    assert check.reason.startswith("asserted" if check.asserted else "reported, not asserted")
    assert not evaluate.improvement_check(cfg, base_hits=16, questions=16).asserted  # no room above a perfect base
    if preset == "cpu-smoke":
        assert check.asserted and f"{measured['low']:+.2f}" in check.reason
        changed = evaluate.improvement_check(load_config(preset, training={"max_steps": 3}), base_hits=2, questions=16)
        assert not changed.asserted and "training.max_steps" in changed.reason  # a changed recipe was not measured
    else:
        assert not check.asserted and "no committed measurement" in check.reason
