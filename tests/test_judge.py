"""The LLM judge of notebook 06: not the model under test on GPU presets, and said so in the report when it is."""

import json

import pytest

from ragcourse import evaluate, memory
from ragcourse.config import load_config


@pytest.mark.parametrize("preset", ["colab-t4", "gpu-24gb", "gpu-80gb"])
def test_gpu_presets_judge_with_another_model_that_the_plan_holds(preset):
    cfg = load_config(preset)
    assert not evaluate.judge_is_model_under_test(cfg) and evaluate.judge_notice(cfg) is None
    judge = memory.phase_plan(cfg).phase("judge")
    assert judge.parts["judge_weights"] > 0 and memory.judge_model(cfg) == cfg.evaluation.judge


def test_a_self_judging_report_says_so_in_its_first_lines(tmp_path):
    import pandas as pd

    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path)})
    assert cfg.evaluation.judge == "preset" and evaluate.judge_is_model_under_test(cfg)
    assert evaluate.judge_is_model_under_test(
        load_config("colab-t4", evaluation={"judge": "Qwen/Qwen2.5-1.5B-Instruct"})
    )
    assert evaluate.judge_notice(load_config("cpu-smoke", evaluation={"judge": "none"})) is None
    per_question = pd.DataFrame(
        [{"id": "q1", "condition": c, "contexts": [], "reference_contexts": []} for c in evaluate.CONDITIONS]
    )
    table = pd.DataFrame(
        [
            {"condition": c, "metric": "token_f1", "mean": 0.5, "low": 0.4, "high": 0.6, "n": 1}
            for c in evaluate.CONDITIONS
        ]
    )
    judge = evaluate.JudgeResult(pd.DataFrame({"faithfulness": [0.5]}), {"faithfulness": 0}, 1, 0.1)
    folder = evaluate.write_report(
        tmp_path / "eval", table, pd.DataFrame([{"condition": "x"}]), [], [], judge, per_question, cfg
    )
    first = (folder / "report.md").read_text().splitlines()[:4]
    assert first[2] == evaluate.judge_notice(cfg) and "model under test" in first[2]
    without_judge = evaluate.write_report(
        tmp_path / "eval2", table, pd.DataFrame([{"condition": "x"}]), [], [], None, per_question, cfg
    )
    assert "model under test" not in (without_judge / "report.md").read_text()


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from ragcourse import models

    return models.load_tokenizer(load_config("cpu-smoke"))


def _faithfulness_reply(statements: list[str]) -> str:
    """RAGAS's faithfulness verdicts on ``statements`` as a judge writes them: its schema, indented as its examples are,
    each with a reason as long as the longest one RAGAS shows."""
    from ragas.metrics._faithfulness import NLIStatementOutput, NLIStatementPrompt, StatementFaithfulnessAnswer

    reason = max((v.reason for v in NLIStatementPrompt.examples[0][1].statements), key=len)
    verdicts = [StatementFaithfulnessAnswer(statement=s, reason=reason, verdict=1) for s in statements]
    return NLIStatementOutput(statements=verdicts).model_dump_json(indent=4)


def test_the_budget_is_measured_on_ragas_own_examples(smollm2_tokenizer):
    """scoring's constants, measured again: a newer RAGAS with longer examples (which a judge imitates) fails here."""
    from ragas.metrics._faithfulness import NLIStatementPrompt, StatementGeneratorPrompt

    from ragcourse import scoring

    def tokens(text: str) -> int:
        return len(smollm2_tokenizer(text, add_special_tokens=False)["input_ids"])

    split_in, split_out = StatementGeneratorPrompt.examples[0]
    assert tokens(split_in.answer) / len(split_out.statements) >= scoring.ANSWER_TOKENS_PER_STATEMENT
    one, two = (_faithfulness_reply([max(split_out.statements, key=tokens)] * n) for n in (1, 2))
    assert tokens(two) - tokens(one) <= scoring.JUDGE_VERDICT_TOKENS
    assert tokens(one) - scoring.JUDGE_VERDICT_TOKENS <= scoring.JUDGE_REPLY_HEAD_TOKENS
    assert max(tokens(v.reason) for v in NLIStatementPrompt.examples[0][1].statements) == 38


@pytest.mark.parametrize("preset", ["cpu-smoke", "colab-t4", "gpu-24gb", "gpu-80gb"])
def test_the_judge_has_room_for_a_complete_faithfulness_reply(preset, smollm2_tokenizer):
    """An answer as long as the preset allows (``model.max_new_tokens``), cut from the course's own documents and split
    into statements at every sentence and clause: the judge's complete verdict JSON fits its token budget."""
    import re

    from ragas.metrics._faithfulness import NLIStatementOutput

    from ragcourse import scoring
    from ragcourse.config import project_root

    tok = smollm2_tokenizer
    answer_tokens = load_config(preset).model.max_new_tokens
    text = (project_root() / "data" / "corpus" / "engineering" / "ecn-0417-compressor-mount-change.txt").read_text()
    prose = " ".join(p.replace("\n", " ") for p in text.split("\n\n") if p.count(". ") >= 2)
    answer = tok.decode(tok(prose, add_special_tokens=False)["input_ids"][:answer_tokens])
    statements = [c.strip() for c in re.split(r"(?<=\.)\s+|[,;:]\s+", answer) if len(c.split()) >= 3]
    reply = tok(_faithfulness_reply(statements), add_special_tokens=False)["input_ids"]
    budget = scoring.judge_max_new_tokens(answer_tokens)
    assert len(reply) <= budget, (preset, len(statements), len(reply), budget)
    if answer_tokens >= 128:  # the old budget of 256 new tokens cut these replies: a parse failure every time
        with pytest.raises(ValueError):
            NLIStatementOutput.model_validate_json(tok.decode(reply[:256]))


def test_the_judge_pipeline_gets_the_budget(monkeypatch):
    import transformers

    from ragcourse import scoring

    class Built(Exception):
        pass

    def pipeline(task, **kwargs):
        raise Built(kwargs["max_new_tokens"])

    for module in (transformers, transformers.pipelines):  # the lazy top-level name is filled in from the submodule
        monkeypatch.setattr(module, "pipeline", pipeline)
    cfg = load_config("cpu-smoke")  # judge: preset, the model passed in
    with pytest.raises(Built) as built:
        evaluate.judge_llm(cfg, model=object(), tokenizer=object())
    assert built.value.args[0] == scoring.judge_max_new_tokens(cfg.model.max_new_tokens) > 256
    gpu = load_config("gpu-24gb")  # the memory plan sizes a local judge's KV cache for the same budget
    budget = scoring.judge_max_new_tokens(gpu.model.max_new_tokens)
    tokens = gpu.model.max_length + memory.JUDGE_PROMPT_EXTRA_TOKENS + budget
    assert memory.phase_plan(gpu).phase("judge").parts["judge_kv_cache"] == memory.kv_cache_bytes(
        gpu.evaluation.judge, tokens, "bfloat16"
    )


def test_a_cut_judge_reply_is_still_counted_as_a_parse_failure():
    """One answer's verdicts come back whole, the other's cut off (as at a too small budget): faithfulness scores the
    first and counts the second as a parse failure, as before."""
    from langchain_core.embeddings.fake import DeterministicFakeEmbedding
    from langchain_core.language_models.fake_chat_models import FakeListChatModel
    from ragas.embeddings import LangchainEmbeddingsWrapper
    from ragas.llms import LangchainLLMWrapper

    class Judge(FakeListChatModel):
        def _call(self, messages, stop=None, run_manager=None, **kwargs):
            prompt = messages[-1].content
            second = "80 kg" in prompt  # the second answer's prompts (and the format-fixing retries of them)
            fact = "The AH-14 weighs 80 kg." if second else "The AH-14 uses four mounts."
            if "Break down each sentence" in prompt:  # step 1: the answer as statements
                return json.dumps({"statements": [fact]})
            if "judge the faithfulness" in prompt:  # step 2: a verdict per statement, the second one cut off
                reply = _faithfulness_reply([fact])
                return reply[: len(reply) // 2] if second else reply
            return "not JSON"  # the other metrics: nothing parses

    rows = [
        {
            "question": "How many mounts does the AH-14 use?",
            "answer": f"Answer: {a}",
            "reference": "Four.",
            "contexts": ["Each AH-14 uses four mounts."],
            "reference_contexts": ["Each AH-14 uses four mounts."],
        }
        for a in ("It uses four mounts.", "It weighs 80 kg.")
    ]
    llm = evaluate._legacy_wrapper(LangchainLLMWrapper, Judge(responses=[""]))
    result = evaluate.llm_judged_scores(
        rows, llm, load_config("cpu-smoke"), embeddings=LangchainEmbeddingsWrapper(DeterministicFakeEmbedding(size=8))
    )
    assert result.scores["faithfulness"].tolist()[0] == 1.0 and result.parse_failures["faithfulness"] == 1
    assert result.parse_failures == {c: int(result.scores[c].isna().sum()) for c in result.scores.columns}
    assert result.samples == 2
