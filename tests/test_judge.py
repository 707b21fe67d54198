"""The LLM judge of notebook 06: not the model under test on GPU presets, and said so in the report when it is."""

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
    assert evaluate.judge_is_model_under_test(load_config("colab-t4", evaluation={"judge": "Qwen/Qwen2.5-1.5B-Instruct"}))
    assert evaluate.judge_notice(load_config("cpu-smoke", evaluation={"judge": "none"})) is None
    per_question = pd.DataFrame([{"id": "q1", "condition": c, "contexts": [], "reference_contexts": []}
                                 for c in evaluate.CONDITIONS])
    table = pd.DataFrame([{"condition": c, "metric": "token_f1", "mean": 0.5, "low": 0.4, "high": 0.6, "n": 1}
                          for c in evaluate.CONDITIONS])
    judge = evaluate.JudgeResult(pd.DataFrame({"faithfulness": [0.5]}), {"faithfulness": 0}, 1, 0.1)
    folder = evaluate.write_report(tmp_path / "eval", table, pd.DataFrame([{"condition": "x"}]), [], [], judge,
                                   per_question, cfg)
    first = (folder / "report.md").read_text().splitlines()[:4]
    assert first[2] == evaluate.judge_notice(cfg) and "model under test" in first[2]
    without_judge = evaluate.write_report(tmp_path / "eval2", table, pd.DataFrame([{"condition": "x"}]), [], [], None,
                                          per_question, cfg)
    assert "model under test" not in (without_judge / "report.md").read_text()
