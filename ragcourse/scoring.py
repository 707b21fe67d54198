"""Answer correctness a learner can read (notebooks 03 and 06): key-fact match, refusals, token F1; and how long the
LLM judge's replies may be."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Mapping

from .prompts import final_answer, is_refusal


def squash(text: str) -> str:
    """Lowercase, no spaces or thousands separators: "1,450 kg" and "1450kg" compare equal."""
    return re.sub(r"[\s,]", "", text.lower())


def should_refuse(example: Mapping[str, Any]) -> bool:
    """The right answer is a refusal: the question is unanswerable, or its oracle passage is not in the context."""
    return example["type"] == "unanswerable" or not example.get("has_oracle", True)


def is_correct(example: Mapping[str, Any], generated: str) -> bool:
    """Correct = the key fact appears in the answer part (and it is no refusal), or a refusal where one is due."""
    answer = final_answer(generated)
    if should_refuse(example):
        return is_refusal(generated)
    return not is_refusal(answer) and squash(example["key_fact"]) in squash(answer)


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between the answer part of a prediction and the reference answer."""
    pred = re.findall(r"\w+", final_answer(prediction).lower())
    ref = re.findall(r"\w+", reference.lower())
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# -- the LLM judge's reply budget (notebook 06) ---------------------------------------------------------------------
# RAGAS's faithfulness asks the judge for its longest reply: a JSON verdict on every statement of the answer, each
# statement word for word with a reason (``NLIStatementOutput``, indented by 4 as in its few-shot examples). A reply cut
# at the token budget cannot be parsed and the sample counts as a parse failure: 256 tokens hold three verdicts, so
# they cut the reply for any answer of more than ~40 tokens. Measured with SmolLM2's tokenizer on ragas 0.4.3's own
# examples (tests/test_judge.py checks the budget against a complete reply for every preset's answer length):
ANSWER_TOKENS_PER_STATEMENT = 12  # the statement example splits a 51-token answer into 4 statements (12.75 tokens each)
JUDGE_VERDICT_TOKENS = 77  # one verdict: the longest example statement (18) and reason (38), keys and indentation
JUDGE_REPLY_HEAD_TOKENS = 11  # the braces and key around the list
JUDGE_MARGIN = 1.25  # other judges' tokenizers (Qwen2.5, Llama 3.1) and wordier reasons


def judge_max_new_tokens(answer_tokens: int) -> int:
    """The judge's ``max_new_tokens``: room for a complete faithfulness verdict on an answer of ``answer_tokens``
    (the preset's ``model.max_new_tokens``), with :data:`JUDGE_MARGIN`. Generation stops at the end of the JSON, so
    the budget only caps a reply; the memory plan holds room for it (``memory._judge_parts``)."""
    statements = math.ceil(answer_tokens / ANSWER_TOKENS_PER_STATEMENT)
    return math.ceil(JUDGE_MARGIN * (JUDGE_REPLY_HEAD_TOKENS + statements * JUDGE_VERDICT_TOKENS))
