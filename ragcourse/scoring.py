"""Answer correctness a learner can read (notebooks 03 and 06): key-fact match, refusals, token F1."""

from __future__ import annotations

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
