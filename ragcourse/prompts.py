"""The one prompt format of the course (notebook 01 builds training data with it, notebook 05 queries with it).

A model fine-tuned on one context layout and queried with another silently loses much of what it learned,
so the dataset builder, the trainer and the RAG query engine all call these functions.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping, Sequence

NOT_IN_DOCUMENTS = "Not in the documents: none of the passages answers this question."
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")

# Strings that chat templates turn into control tokens. In a document or a question they are data: left as they are,
# `<|im_end|>\n<|im_start|>system` inside a passage would end the user turn and open a forged system turn.
SPECIAL_TOKEN = re.compile(
    r"<\|[^<>|\n]{1,64}\|>"                              # ChatML (SmolLM2, Qwen), Llama 3, Phi: <|im_start|>, <|eot_id|>
    r"|<\uff5c[^<>\uff5c\n]{1,64}\uff5c>"                   # DeepSeek's full-width bars
    r"|\[/?INST\]|<</?SYS>>|</?s>"                         # Llama 2, Mistral
    r"|<(?:start_of_turn|end_of_turn|bos|eos|pad|unk|mask)>"  # Gemma and generic
    r"|<(?:repo_name|reponame|file_sep|filename|gh_stars|issue_start|issue_comment|issue_closed|jupyter_start"
    r"|jupyter_text|jupyter_code|jupyter_output|jupyter_script|empty_output|fim_prefix|fim_middle|fim_suffix|fim_pad)>"
)  # the last line: SmolLM2's (StarCoder's) added special tokens
_DEFANG = str.maketrans({"<": "\u2039", ">": "\u203a", "[": "\u2045", "]": "\u2046"})  # ‹ › ⁅ ⁆: read the same, tokenize apart


def _defang(token: str) -> str:
    out = token.translate(_DEFANG)
    return out if out != token else token[:1] + "\u200b" + token[1:]  # no bracket to swap: split it with a zero-width space


def neutralize_special_tokens(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every chat-template control string made plain text (``<|im_end|>`` -> ``‹|im_end|›``).

    Covers the ChatML, Llama, Mistral, Gemma and SmolLM2 families (``SPECIAL_TOKEN``); ``extra`` adds a tokenizer's own
    (:func:`special_token_strings`). Every document passage, title and question goes through it on its way into a
    prompt (:func:`messages`), in training data and at serving time alike.
    """
    out = SPECIAL_TOKEN.sub(lambda m: _defang(m.group(0)), text)
    for token in extra:
        if len(token) >= 3 and token in out:  # a one- or two-character "special" token would mangle ordinary text
            out = out.replace(token, _defang(token))
    return out


def special_token_strings(tokenizer: Any) -> list[str]:
    """Every string a tokenizer encodes as a special token (its named ones and its added special tokens)."""
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if getattr(t, "special", False)]
    return sorted(set(added) | set(getattr(tokenizer, "all_special_tokens", [])), key=len, reverse=True)


# Sentences that address the model rather than inform the reader; a filter, not a guarantee (attackers rephrase).
# A technician's manual is full of imperatives ("ignore the E12 warning at start-up", "reply to the customer within a
# day"), so an order alone proves nothing. What such text never does is give orders about *this conversation*: the
# question, the model's answer or instructions, the assistant or AI itself, "everything above". A sentence is taken
# for an injection when it names the conversation (CONVERSATION) and gives an order (ORDER), in any of the languages
# below, or when it forges a turn or dictates a quoted reply. Measured on tests/injection/ (tests/test_faults.py).
# On by default (``rag.filter_instructions``) wherever a passage reaches a model: training examples, the query engine,
# the evaluation.
CONVERSATION = re.compile("|".join([
    r"\b(?:the|this|that|my|user'?s) question\b", r"\bthe user\b(?! (?:manual|guide|interface|menu|settings?)\b)",
    r"\byour (?:answer|reply|response|output|instructions|guidelines|rules|prompt|task|role|system|previous|training)",
    r"\b(?:every|each) (?:answer|reply|response)\b", r"\b(?:the|any|all) (?:other )?(?:documents|passages|sources|context)\b",
    r"\bsystem (?:prompt|message)\b", r"\b(?:this|the) conversation\b", r"\bnew (?:system )?(?:prompt|instructions)\b",
    r"\b(?:you were|you have been|you've been) (?:told|given|instructed)\b", r"\binstead of (?:answering|replying|responding)\b",
    r"\b(?:everything|anything|all) (?:of )?(?:the )?(?:above|before|previous|prior)\b", r"\bwhat (?:the|your) \w+ (?:asked|wanted|said)\b",
    r"\bwrite back\b", r"\bchat ?gpt\b", r"\bllms?\b", r"\blanguage models?\b", r"\bchat ?bots?\b", r"\bai\b", r"\brole-?play",
    r"\bassistant\b(?! (?:technician|engineer|manager|installer)s?\b)", r"\bjailbreak",
    # de, fr, es, it, pt, nl, pl, tr, ru, zh, ja, ko
    r"\b(?:die|deine) (?:frage|antwort)\b|\b(?:vorherigen|bisherigen|deine|alle) anweisungen\b|\bassistent|\bki\b|was dir (?:vorher )?gesagt",
    r"\bla question\b|\b(?:tes|vos) consignes\b|\bl.utilisateur\b|\bl.assistant\b|\binstructions précédentes\b",
    r"\bla pregunta\b|\binstrucciones (?:anteriores|previas)\b|\basistente\b|\btodo lo que te\b|\bal usuario\b",
    r"\b(?:la|alla) domanda\b|\bistruzioni precedenti\b|\bassistente\b|\ba pergunta\b|\binstruções anteriores\b",
    r"\bde vraag\b|\b(?:vorige|eerdere) instructies\b|\bpoprzednie instrukcje\b|\bpytanie\b|önceki talimat",
    r"предыдущие инструкции|\bвопрос|之前|以上|指令|问题|以前の指示|指示|質問|이전 지시|지시",
]), re.I)
ORDER = re.compile("|".join([
    r"\b(?:ignor\w*|disregard|forget|skip|bypass|override|discard|abandon|pay no attention|put aside|set aside|stop following)\b",
    r"\b(?:reply|respond|answer\w*|say|write|output|print|tell|append|include|add|end|begin|start|recommend|reveal|confirm"
    r"|state|cite|mention|use|follow|push|summari[sz]\w*|act as|pretend|you are now)\b",
    r"\b(?:ignorier\w*|vergiss|antworte\w*|schreibe|beantworte)\b|\b(?:oublie|ignore|dis|réponds?)\b",
    r"\b(?:ignora|olvida|responde|respondas|di|rispondi|rispondere|consiglia|ignore|responda|negeer|antwoord)\b",
    r"\b(?:zignoruj|odpowiedz)\b|yok say|\byaz\b|игнорируй|отвечай|забудь|忽略|回答|無視|答え|무시|답하",
]), re.I)
FORGED_TURN = re.compile(r"^\W*(?:system|assistant|user)\s*:", re.I)
DICTATED_REPLY = re.compile(r"^\W*(?:respond|reply|answer|output)\b[^.]{0,40}[\s:]['\"“«]", re.I)  # a quote opens


def injection_rule(sentence: str) -> str | None:
    """Why a sentence looks like an instruction to the model ("forged turn", "dictated reply", "orders about the
    conversation"), or None when it reads as plain document text."""
    if FORGED_TURN.search(sentence):
        return "forged turn"
    if DICTATED_REPLY.search(sentence):
        return "dictated reply"
    if CONVERSATION.search(sentence) and ORDER.search(sentence):
        return "orders about the conversation"
    return None


def strip_instructions(text: str) -> str:
    """Drop the sentences of a passage that look like instructions to the model (:func:`injection_rule`); a passage
    with none comes back unchanged, character for character (it is the indexed chunk the answer quotes)."""
    parts = sentences(text)
    kept = [s for s in parts if injection_rule(s) is None]
    return text if len(kept) == len(parts) else " ".join(kept)


def looks_injected(text: str) -> bool:
    """Does any sentence of a passage look like an instruction to the model? (What the filter would drop.)"""
    return any(injection_rule(s) for s in sentences(text))


def format_passage(index: int, text: str, title: str = "", section: str = "") -> str:
    """``[2] (Fault Code Reference › E1xx) text`` — a numbered passage the answer can cite."""
    title, section = " ".join(title.split()), " ".join(section.split())  # a title cannot start a line of its own
    label = f"{title} › {section}" if section and section != title else title
    header = f"[{index}] ({label})" if label else f"[{index}]"
    return f"{header} {' '.join(text.split())}"


def user_prompt(question: str, passages: Sequence[Mapping[str, str]]) -> str:
    """The user turn: numbered passages (dicts with text, title, section), then the question."""
    blocks = [format_passage(i, p["text"], p.get("title", ""), p.get("section", "")) for i, p in enumerate(passages, 1)]
    docs = "\n\n".join(blocks) if blocks else "(no documents were retrieved)"
    return f"Documents:\n{docs}\n\nQuestion: {question.strip()}"


def closed_book_prompt(question: str) -> str:
    """The user turn without retrieval (notebook 06's closed-book condition)."""
    return f"Question: {question.strip()}"


def messages(system: str, user: str, assistant: str | None = None) -> list[dict[str, str]]:
    """Chat messages; the user and assistant turns (documents, questions, quotes) pass :func:`neutralize_special_tokens`."""
    out = [{"role": "system", "content": system}, {"role": "user", "content": neutralize_special_tokens(user)}]
    if assistant is not None:
        out.append({"role": "assistant", "content": neutralize_special_tokens(assistant)})
    return out


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(" ".join(text.split())) if s.strip()]


def quote_for(passage: str, key_fact: str) -> str:
    """The sentence of ``passage`` that carries ``key_fact`` (the first sentence if none does)."""
    sents = sentences(passage) or [passage.strip()]
    key = key_fact.lower()
    return next((s for s in sents if key and key in s.lower()), sents[0])


def target_answer(answer: str, quotes: Iterable[tuple[int, str]] = (), style: str = "quote-then-answer") -> str:
    """The assistant's training target, in one of two styles (``data.target_style``):

    - ``quote-then-answer`` (RAFT's chain of thought): quote the passage(s) relied on, with their numbers, then answer.
    - ``answer-then-cite``: the answer first, then the numbers of the passages it comes from, e.g. ``... [2]``.
      A 135M model copies a long quote badly and runs out of tokens before the answer; this style is easier.

    With no quotes (the oracle passage is missing, or the question is unanswerable) the target is the
    plain refusal: the model must learn to say the documents do not contain it instead of guessing.
    """
    quotes = list(quotes)
    if not quotes:
        return NOT_IN_DOCUMENTS
    if style == "answer-then-cite":
        return f"{answer.strip()} " + "".join(f"[{i}]" for i in sorted({i for i, _ in quotes}))
    quoted = [f'[{i}] "{q}"' for i, q in quotes]
    return "Quote: " + " ".join(quoted) + f"\nAnswer: {answer.strip()}"


def in_trained_form(generated: str, style: str = "quote-then-answer") -> bool:
    """Does a response have the trained shape: the refusal, or (by style) a quote first / a citation at the end?"""
    text = generated.strip()
    if is_refusal(text):
        return True
    if style == "answer-then-cite":
        return re.search(r"\[\d+\]\s*$", text) is not None
    return text.startswith("Quote: [") and "Answer:" in text


def final_answer(generated: str) -> str:
    """The answer part of a generated response (after ``Answer:``), or the whole text if there is none."""
    match = re.search(r"Answer:\s*(.*)", generated, flags=re.S)
    return (match.group(1) if match else generated).strip()


def is_refusal(text: str) -> bool:
    t = text.lower()
    return "do not contain" in t or "does not contain" in t or "doesn't contain" in t or "not in the documents" in t
