"""Recipes checked against the data (notebook 03, "How many steps is this?").

A preset's training numbers (batch, epochs, ``eval_steps``, ``save_steps``, ``max_length``) only mean something next to
the dataset they run on: 150 training examples at an effective batch of 16 are 10 steps an epoch, and an
``eval_steps`` of 50 then never validates, so early stopping never acts. :func:`check_recipe` builds the sample
domain's examples the way notebook 01 does, with the preset's chunking, passages and ``max_length``, and counts what
the trainer will do with them, without loading a model:

* examples kept and dropped at ``max_length`` per split, and the synthetic pairs the teacher may add;
* steps per epoch and in all, how many times validation and checkpoints fire, and whether early stopping can act.

Two things are estimated rather than run: distractors are drawn at random from the split's own chunks (notebook 01
ranks them with the retriever: the same chunks, in the same number), and every synthetic chunk is counted as one
accepted pair (the upper bound: the teacher's filters reject some). Token counts use the preset's own tokenizer when
it is on this machine; a hub model's family is counted with a local stand-in (:func:`proxy_token_counter`).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .config import CourseConfig

# Qwen2.5's and Llama 3's tokenizers both grew from OpenAI's cl100k_base (100k merges, shipped with llama-index):
# Llama 3 keeps its pre-tokenizer, Qwen2.5 splits numbers into single digits. The chat templates add a fixed frame.
_CL100K_DIGITS = r"\p{N}{1,3}+"
_FAMILIES = {
    # arch name prefix: (digit pattern, text before the first message, one message, special tokens per message)
    "qwen2.5": (r"\p{N}", "", "<|im_start|>{role}\n{content}<|im_end|>\n", 2),
    "llama-3": (
        _CL100K_DIGITS,
        "<|begin_of_text|>",
        "<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
        3,
    ),
}
# Llama 3.1's template opens the system message with its knowledge cut-off and a date.
_SYSTEM_PREFIX = {"llama-3": "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"}


def _family(model: str) -> str:
    from .lora import arch_for_model

    arch = arch_for_model(model) or ""
    for prefix in _FAMILIES:
        if arch.startswith(prefix):
            return prefix
    raise ValueError(
        f"No local stand-in tokenizer for {model!r} (families: {', '.join(_FAMILIES)}): pass its tokenizer."
    )


def proxy_token_counter(model: str) -> Callable[[str], list[int]]:
    """Token ids of ``text`` for a hub model's family, counted offline (notebook 03): cl100k_base's merges with the
    family's pre-tokenizer. Within a few percent of the real tokenizer on English prose; digits follow the family."""
    import os

    from .env import llama_index_static_dir

    static = llama_index_static_dir()
    if static is not None:
        os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(static / "tiktoken_cache"))
    import tiktoken

    base = tiktoken.get_encoding("cl100k_base")
    digits = _FAMILIES[_family(model)][0]
    encoding = tiktoken.Encoding(
        name=f"cl100k-{_family(model)}",
        pat_str=base._pat_str.replace(_CL100K_DIGITS, digits),
        mergeable_ranks=base._mergeable_ranks,
        special_tokens={},
    )
    return encoding.encode_ordinary


def proxy_example_tokens(model: str) -> Callable[[dict[str, Any]], int]:
    """Tokens of a training example (its ``messages`` in the family's chat template) for a hub model (notebook 03)."""
    count = proxy_token_counter(model)
    family = _family(model)
    _, opening, message, specials = _FAMILIES[family]
    frame = len(count(opening.replace("<|begin_of_text|>", ""))) + (1 if opening else 0)

    def tokens(example: dict[str, Any]) -> int:
        total = frame
        for m in example["messages"]:
            content = (_SYSTEM_PREFIX.get(family, "") if m["role"] == "system" else "") + m["content"]
            text = message.format(role=m["role"], content=content)
            for special in ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
                text = text.replace(special, "")
            total += len(count(text)) + specials
        return total

    return tokens


@dataclass
class RecipeCheck:
    """What a preset's training recipe does with the sample domain's data (notebook 03)."""

    preset: str
    with_synthetic: bool
    counted_with: str
    max_length: int
    kept: dict[str, int]
    dropped: dict[str, int]
    synthetic_pairs: int
    train_tokens: dict[str, int]  # median and max tokens of a kept training example
    effective_batch: int
    steps_per_epoch: int
    total_steps: int
    eval_steps: int
    evaluations: int
    checkpoints: int
    early_stopping_patience: int
    notes: list[str] = field(default_factory=list)

    @property
    def dropped_fraction(self) -> float:
        """Dropped at ``max_length`` over all examples built, all splits together."""
        built = sum(self.kept.values()) + sum(self.dropped.values())
        return sum(self.dropped.values()) / built if built else 0.0

    @property
    def early_stopping_can_act(self) -> bool:
        """Early stopping needs a best validation loss and then ``patience`` evaluations without a better one,
        all before the last step."""
        return self.evaluations > self.early_stopping_patience + 1

    def row(self) -> dict[str, Any]:
        """One table row (notebook 03's table of steps per preset)."""
        return {
            "preset": self.preset,
            "data": "curated + synthetic" if self.with_synthetic else "curated only",
            "train kept": self.kept["train"],
            "dropped (all splits)": sum(self.dropped.values()),
            "synthetic pairs (at most)": self.synthetic_pairs,
            "median / max tokens": f"{self.train_tokens['median']} / {self.train_tokens['max']}",
            "max_length": self.max_length,
            "effective batch": self.effective_batch,
            "steps / epoch": self.steps_per_epoch,
            "total steps": self.total_steps,
            "validations": self.evaluations,
            "checkpoints": self.checkpoints,
            "early stopping can act": self.early_stopping_can_act,
        }


def trainer_schedule(n_train: int, cfg: CourseConfig, world_size: int = 1) -> dict[str, int]:
    """Steps per epoch, total steps, evaluations and checkpoints as transformers' Trainer counts them (notebook 03):
    ``eval_steps``/``save_steps`` multiples, plus one more of each at the last step when it is not a multiple."""
    t = cfg.training
    batches = math.ceil(n_train / (t.per_device_train_batch_size * world_size))
    per_epoch = max(batches // t.gradient_accumulation_steps + int(batches % t.gradient_accumulation_steps > 0), 1)
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * per_epoch)
    evaluations = total // t.eval_steps + int(total % t.eval_steps > 0)
    checkpoints = total // t.save_steps + int(total % t.save_steps > 0)
    return {
        "effective_batch": t.per_device_train_batch_size * t.gradient_accumulation_steps * world_size,
        "steps_per_epoch": per_epoch,
        "total_steps": total,
        "evaluations": evaluations,
        "checkpoints": checkpoints,
    }


def _synthetic_placeholders(chunks: Sequence[Any], cfg: CourseConfig) -> list[dict[str, Any]]:
    """One pair per chunk the teacher is given (the upper bound), shaped like ``data.generate_synthetic``'s, with a
    question and an answer of a curated pair's length made from the chunk's own words (so no two are duplicates)."""
    from .data import pick_synthetic_chunks

    out = []
    for chunk in pick_synthetic_chunks(chunks, cfg.data.synthetic_chunks, cfg.training.seed):
        words = chunk.get_content().split()
        answer = " ".join(words[:6])
        question = f"What does {chunk.metadata.get('title', 'the document')} say about {' '.join(words[6:14])}?"
        out.append(
            {
                "id": f"syn-{chunk.node_id}",
                "question": question,
                "answer": answer,
                "key_fact": answer,
                "type": "synthetic",
                "source": "synthetic",
                "doc_ids": [chunk.metadata["doc_id"]],
                "supporting_passages": [chunk.get_content()],
                "oracle_ids": [chunk.node_id],
                "regulation_version": None,
            }
        )
    return out


def _token_functions(cfg: CourseConfig, tokenizer: Any) -> tuple[Callable[[str], list], Callable[[dict], int], str]:
    from .data import example_tokens, token_counter
    from .env import needs_network

    if tokenizer is None and not needs_network(cfg.model.name):
        from .models import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    if tokenizer is not None:
        return token_counter(tokenizer), lambda ex: example_tokens(ex, tokenizer), "the model's tokenizer"
    return (
        proxy_token_counter(cfg.model.name),
        proxy_example_tokens(cfg.model.name),
        f"cl100k_base with the {_family(cfg.model.name)} pre-tokenizer and chat template (a local stand-in)",
    )


def check_recipe(cfg: CourseConfig, tokenizer: Any = None, with_synthetic: bool = True) -> RecipeCheck:
    """Build the preset's examples from the sample domain (as notebook 01 does, distractors drawn at random) and count
    what training will do with them (notebook 03). ``tokenizer``: the model's; default: its own if local, else a
    stand-in of its family (:func:`proxy_example_tokens`). ``with_synthetic=False``: the curated pairs alone, what
    ``ragcourse data`` without ``--synthetic`` (and ``run-all``) trains on; notebook 01 adds the teacher's pairs."""
    from . import data

    count, example_tokens, counted_with = _token_functions(cfg, tokenizer)
    docs = data.load_documents(cfg.data.corpus_dir)
    chunks = data.chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap, tokenizer=count)
    nodes = {n.node_id: n for n in chunks}
    curated = data.locate_oracles(data.load_qa(cfg.data.qa_dir), chunks)
    synthetic = _synthetic_placeholders(chunks, cfg) if with_synthetic else []
    items = curated + synthetic
    splits = data.group_split(items, data.document_groups(docs, items), cfg.data.split_fractions, cfg.training.seed)
    data.remove_cross_split_duplicates(splits, cfg.data.dedup_threshold)
    rng = random.Random(cfg.training.seed)
    split_of_doc = {d: s for s in data.SPLITS for it in splits[s] for d in it["doc_ids"]}
    limits = {"train": cfg.data.max_train_examples, "validation": cfg.data.max_eval_examples, "test": None}
    kept, dropped, train_lengths = {}, {}, []
    for split in data.SPLITS:
        allowed = sorted(n for n, node in nodes.items() if split_of_doc.get(node.metadata["doc_id"], split) == split)
        lengths = []
        for item in splits[split]:
            include = split != "train" or rng.random() < cfg.data.oracle_fraction
            ex = data.raft_example(
                item,
                nodes,
                candidates=[],
                num_distractors=cfg.data.num_distractors,
                include_oracle=include,
                rng=rng,
                system_prompt=cfg.model.system_prompt,
                pool=allowed,
                target_style=cfg.data.target_style,
                filter_instructions=cfg.rag.filter_instructions,
            )
            lengths.append(example_tokens(ex))
        fitting = [n for n in lengths if n <= cfg.model.max_length]
        dropped[split] = len(lengths) - len(fitting)
        kept[split] = min(len(fitting), limits[split]) if limits[split] is not None else len(fitting)
        if split == "train":
            train_lengths = fitting
    schedule = trainer_schedule(kept["train"], cfg)
    check = RecipeCheck(
        preset=cfg.preset,
        with_synthetic=with_synthetic,
        counted_with=counted_with,
        max_length=cfg.model.max_length,
        kept=kept,
        dropped=dropped,
        synthetic_pairs=len(synthetic),
        train_tokens={"median": int(statistics.median(train_lengths or [0])), "max": max(train_lengths or [0])},
        eval_steps=cfg.training.eval_steps,
        early_stopping_patience=cfg.training.early_stopping_patience,
        **schedule,
    )
    if not check.early_stopping_can_act:
        check.notes.append(
            f"validation runs {check.evaluations} time(s) in {check.total_steps} steps: early stopping "
            f"(patience {check.early_stopping_patience}) cannot act; lower training.eval_steps"
        )
    if check.dropped_fraction > 0.05:
        check.notes.append(
            f"{check.dropped_fraction:.0%} of the examples exceed max_length {cfg.model.max_length}: "
            f"raise model.max_length, or lower data.chunk_size or data.num_distractors"
        )
    return check


def recipe_table(presets: Sequence[str]) -> Any:
    """:func:`check_recipe` of several presets, with and without the teacher's pairs: two rows each (pandas;
    notebook 03)."""
    import pandas as pd

    from .config import load_config

    rows = [check_recipe(load_config(p), with_synthetic=s).row() for p in presets for s in (False, True)]
    return pd.DataFrame(rows).set_index(["preset", "data"])
