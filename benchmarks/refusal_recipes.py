"""Refusal recipes side by side on ``cpu-smoke`` (issue 19): which training mix teaches the 135M model to say
"Not in the documents" when the passages do not hold the answer, without refusing the questions they do answer.

Each variant is the preset with a few config values changed; it builds its own dataset and adapter from scratch under
``--output-root`` (``pipeline.ensure``, as the CLI does; a ``+dpo`` variant reuses its SFT variant's), then answers,
greedily, from the 4-bit weights unpacked once (``models.load_for_answers``, as notebooks 05 and 06 do on a CPU):

* the test split's RAFT prompts (every answerable question with its oracle passage among its distractors, and the
  unanswerable questions with the passages the retriever ranks highest), and
* **no-oracle copies** of the answerable test questions: the same prompt with the oracle passage removed, so only the
  near-miss passages remain (what a retrieval miss looks like). The right answer there is the refusal.

Reported per variant, with 95% bootstrap intervals: answer correctness on the answerable questions (key fact in the
answer, no refusal), right refusals on the refusal cases (unanswerable + no-oracle), wrong refusals on the answerable
questions; and the paired difference in correctness over all test prompts against the untuned model (a refusal where
one is due counts as correct). The untuned model is answered once per distinct test set.

Also measured, and dropped from ``data.with_refusal_share``: near-miss refusals drawn only from the questions the
sample also keeps *with* their oracle (each question seen answered and refused). The 135M model then refused nothing
at all and answered fewer questions than with either mix above: with the question's wording no longer telling the two
apart, 31 steps did not teach it to look for the passage.

Run it alone on the machine (each variant trains for several minutes on 2 cores)::

    python benchmarks/refusal_recipes.py                      # all variants
    python benchmarks/refusal_recipes.py --variants baseline near-miss-25
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's ragcourse

import ragcourse  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)

RESULTS = HERE / "results"
PRESET = "cpu-smoke"
# name: (config overrides by section, what it tries)
VARIANTS: dict[str, tuple[dict[str, dict[str, Any]], str]] = {
    "baseline": ({}, "the preset as it is: every oracle kept, refusals only from the unanswerable questions"),
    "near-miss-25": (
        {"data": {"refusal_share": 0.25, "refusal_source": "near-miss"}},
        "25% refusals; the extra ones are training questions with their oracle removed (near-miss passages)",
    ),
    "unanswerable-25": (
        {"data": {"refusal_share": 0.25, "refusal_source": "unanswerable"}},
        "25% refusals; the extra ones are the unanswerable questions again",
    ),
    "near-miss-40": (
        {"data": {"refusal_share": 0.40, "refusal_source": "near-miss"}},
        "40% refusals from near-miss copies",
    ),
    "near-miss-25+dpo": (
        {"data": {"refusal_share": 0.25, "refusal_source": "near-miss"}},
        "near-miss-25, then a short DPO stage (TRL's DPOTrainer on the SFT adapter, its copy as the "
        "reference): refusal preferred to the answer without the oracle and to the SFT model's own answer "
        "to an unanswerable question, the answer preferred to the refusal with the oracle",
    ),
    "quote-then-answer": (
        {"data": {"target_style": "quote-then-answer"}},
        "RAFT's own answer style (quote the passage, "
        "then answer; the GPU presets' default) instead of answer-then-cite, the preset otherwise unchanged",
    ),
    "near-miss-25+dpo-more": (
        {"data": {"refusal_share": 0.25, "refusal_source": "near-miss"}, "dpo": {"pairs_per_kind": 32, "seed": 42}},
        (
            "near-miss-25, then a longer DPO stage: up to 32 pairs of each kind instead of 16 (no more than the "
            "training split holds)"
        ),
    ),
    "near-miss-25+dpo-more-s1": (
        {"data": {"refusal_share": 0.25, "refusal_source": "near-miss"}, "dpo": {"pairs_per_kind": 32, "seed": 1}},
        "near-miss-25+dpo-more with the pairs drawn by another seed",
    ),
    "near-miss-25-2ep": (
        {"data": {"refusal_share": 0.25, "refusal_source": "near-miss"}, "training": {"num_train_epochs": 2}},
        "near-miss-25 trained for two epochs instead of one (twice the steps)",
    ),
}
DPO = {"pairs_per_kind": 16, "learning_rate": 5e-4, "beta": 0.1, "batch": 4}


def test_prompts(cfg: Any, dataset: Any, tokenizer: Any) -> list[dict[str, Any]]:
    """The test split's prompts, then a no-oracle copy of each answerable one (oracle passage removed)."""
    from ragcourse import data, prompts

    nodes = {n.node_id: n for n in data.corpus_chunks(cfg, tokenizer)}
    cases = []
    for ex in dataset["test"]:
        cases.append(
            {
                "id": ex["id"],
                "kind": "unanswerable" if ex["type"] == "unanswerable" else "answerable",
                "example": {"type": ex["type"], "key_fact": ex["key_fact"], "has_oracle": ex["has_oracle"]},
                "messages": ex["prompt"],
            }
        )
    for ex in dataset["test"]:
        if ex["type"] == "unanswerable" or not ex["oracle_ids"]:
            continue
        passages = [
            data._passage(nodes[c], cfg.rag.filter_instructions) for c in ex["context_ids"] if c not in ex["oracle_ids"]
        ]
        cases.append(
            {
                "id": ex["id"] + "-no-oracle",
                "kind": "no-oracle",
                "example": {"type": ex["type"], "key_fact": ex["key_fact"], "has_oracle": False},
                "messages": prompts.messages(cfg.model.system_prompt, prompts.user_prompt(ex["question"], passages)),
            }
        )
    return cases


def answer(cfg: Any, cases: list[dict[str, Any]], adapter: Path | None) -> list[str]:
    from ragcourse import models

    tokenizer = models.load_tokenizer(cfg)
    model = models.load_for_answers(cfg)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    texts = [tokenizer.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True) for c in cases]
    out = models.generate(model, tokenizer, texts, max_new_tokens=cfg.model.max_new_tokens)
    del model
    models.free_memory()
    return out


def scores(cases: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    from ragcourse import prompts, scoring
    from ragcourse.evaluate import bootstrap_ci

    refused = [prompts.is_refusal(a) for a in answers]
    correct = [float(scoring.is_correct(c["example"], a)) for c, a in zip(cases, answers)]
    answerable = [i for i, c in enumerate(cases) if c["kind"] == "answerable"]
    refusal_cases = [i for i, c in enumerate(cases) if c["kind"] != "answerable"]

    def ci(values: list[float]) -> list[float]:
        return [round(v, 3) for v in bootstrap_ci(values)]

    return {
        "answer_correct": ci([correct[i] for i in answerable]),
        "right_refusals": ci([float(refused[i]) for i in refusal_cases]),
        "right_refusals_unanswerable": int(
            sum(refused[i] for i in refusal_cases if cases[i]["kind"] == "unanswerable")
        ),
        "right_refusals_no_oracle": int(sum(refused[i] for i in refusal_cases if cases[i]["kind"] == "no-oracle")),
        "wrong_refusals": ci([float(refused[i]) for i in answerable]),
        "counts": {
            "answerable": len(answerable),
            "unanswerable": sum(cases[i]["kind"] == "unanswerable" for i in refusal_cases),
            "no_oracle": sum(cases[i]["kind"] == "no-oracle" for i in refusal_cases),
            "correct_answerable": int(sum(correct[i] for i in answerable)),
            "refused_answerable": int(sum(refused[i] for i in answerable)),
        },
        "correct_all": correct,
    }


def run_variant(name: str, root: Path, base_cache: dict[str, Any]) -> dict[str, Any]:
    import shutil

    from ragcourse import artifacts, data, models, pipeline, prompts
    from ragcourse.config import load_config
    from ragcourse.evaluate import paired_comparison

    overrides, what = VARIANTS[name]
    dpo = {**DPO, **overrides.get("dpo", {})} if "+dpo" in name else None
    overrides = {k: v for k, v in overrides.items() if k != "dpo"}
    cfg = load_config(PRESET, paths={"output_root": str(root / name)}, **overrides)
    base_run = root / name.split("+dpo")[0]
    if dpo and base_run.is_dir() and not (root / name).exists():
        shutil.copytree(base_run, root / name)  # the same SFT stage: pipeline.ensure reuses its dataset and adapter
    t0 = time.perf_counter()
    pipeline.ensure(cfg, "dataset")
    dataset = data.load_dataset(cfg)
    t_data = time.perf_counter() - t0
    train_mix = sum(ex["completion"][0]["content"] == prompts.NOT_IN_DOCUMENTS for ex in dataset["train"])
    t0 = time.perf_counter()
    built = artifacts.stale_reason(cfg, "adapter") is not None
    adapter = pipeline.ensure(cfg, "adapter")
    t_train = time.perf_counter() - t0 if built else None  # None: the SFT stage of the variant it extends
    t_dpo = None
    if dpo:
        t0 = time.perf_counter()
        adapter = preference_stage(cfg, dataset, adapter, dpo)
        t_dpo = round(time.perf_counter() - t0)
    tokenizer = models.load_tokenizer(cfg)
    cases = test_prompts(cfg, dataset, tokenizer)
    key = hashlib.sha256(json.dumps([c["messages"] for c in cases]).encode()).hexdigest()
    if key not in base_cache:
        base_answers = answer(cfg, cases, None)
        base_cache[key] = {"answers": base_answers, "scores": scores(cases, base_answers)}
    t0 = time.perf_counter()
    tuned_answers = answer(cfg, cases, adapter)
    t_answer = time.perf_counter() - t0
    tuned = scores(cases, tuned_answers)
    base = base_cache[key]["scores"]
    diff = paired_comparison(tuned["correct_all"], base["correct_all"], "answer_correct")
    return {
        "variant": name,
        "what": what,
        "data": overrides.get("data", {}),
        **({"training": overrides["training"]} if "training" in overrides else {}),
        **({"dpo": dpo} if dpo else {}),
        "train_examples": len(dataset["train"]),
        "train_refusals": int(train_mix),
        "seconds": {
            "data": round(t_data),
            "train": round(t_train) if t_train is not None else None,
            "answer": round(t_answer),
            **({"dpo": t_dpo} if t_dpo is not None else {}),
        },
        "tuned": {k: v for k, v in tuned.items() if k != "correct_all"},
        "base": {k: v for k, v in base.items() if k != "correct_all"},
        "tuned_minus_base": {
            "mean": round(diff.mean_difference, 3),
            "low": round(diff.low, 3),
            "high": round(diff.high, 3),
            "wins": diff.wins,
            "losses": diff.losses,
        },
        "examples": [
            {"id": c["id"], "kind": c["kind"], "base": b, "tuned": t}
            for c, b, t in zip(cases, base_cache[key]["answers"], tuned_answers)
        ],
    }


def preference_stage(cfg: Any, dataset: Any, adapter: Path, dpo: dict[str, Any]) -> Path:
    """DPO on the SFT adapter (TRL copies it as the frozen reference): three kinds of pairs, ``dpo['pairs_per_kind']``
    each, drawn from the training split: no oracle (chosen: the refusal, rejected: the answer the same question has
    with its oracle), unanswerable (chosen: the refusal, rejected: the SFT model's own greedy answer, where it answers),
    and with the oracle (chosen: the answer, rejected: the refusal)."""
    import random
    import shutil

    import torch
    from datasets import Dataset
    from peft import PeftModel, prepare_model_for_kbit_training
    from trl import DPOConfig, DPOTrainer

    from ragcourse import models, prompts, train

    refusal = prompts.NOT_IN_DOCUMENTS
    tokenizer = models.load_tokenizer(cfg, str(adapter))
    train.ensure_pad_token(tokenizer)
    examples = list(dataset["train"])
    by_id = {ex["id"]: ex for ex in examples}
    target = lambda ex: ex["completion"][0]["content"]  # noqa: E731
    seed = dpo.get("seed", cfg.training.seed)
    rng = random.Random(seed)
    no_oracle = [
        (ex, target(by_id[ex["id"].split("-refuse")[0]]))
        for ex in examples
        if "-refuse" in ex["id"] and ex["id"].split("-refuse")[0] in by_id
    ]
    unanswerable = [ex for ex in examples if ex["type"] == "unanswerable"]
    answered = [ex for ex in examples if target(ex) != refusal]
    k = dpo["pairs_per_kind"]
    base = prepare_model_for_kbit_training(models.load_causal_lm(cfg), use_gradient_checkpointing=False)
    model = PeftModel.from_pretrained(base, str(adapter), is_trainable=True)
    asked = rng.sample(unanswerable, min(k // 2, len(unanswerable)))
    own = models.generate(
        model,
        tokenizer,
        [tokenizer.apply_chat_template(ex["prompt"], tokenize=False, add_generation_prompt=True) for ex in asked],
        max_new_tokens=cfg.model.max_new_tokens,
    )
    turn = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    pairs = [
        {"prompt": ex["prompt"], "chosen": turn(refusal), "rejected": turn(answer)}
        for ex, answer in zip(asked, own)
        if not prompts.is_refusal(answer)
    ]
    pairs += [
        {"prompt": ex["prompt"], "chosen": turn(refusal), "rejected": turn(answer)}
        for ex, answer in rng.sample(no_oracle, min(k, len(no_oracle)))
    ]
    pairs += [
        {"prompt": ex["prompt"], "chosen": ex["completion"], "rejected": turn(refusal)}
        for ex in rng.sample(answered, min(k, len(answered)))
    ]
    rng.shuffle(pairs)
    out = adapter.parent / "adapter_dpo"
    args = DPOConfig(
        output_dir=str(out / "run"),
        per_device_train_batch_size=dpo["batch"],
        learning_rate=dpo["learning_rate"],
        beta=dpo["beta"],
        num_train_epochs=1,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        fp16=False,
        max_length=cfg.model.max_length,
        seed=seed,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs), processing_class=tokenizer)
    for param in trainer.model.parameters():  # fp32 trainable weights on a CPU, as train.make_trainer keeps them
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    trainer.train()
    trainer.model.save_pretrained(str(out), selected_adapters=["default"])
    tokenizer.save_pretrained(str(out))
    shutil.rmtree(out / "run", ignore_errors=True)
    del trainer, model, base
    models.free_memory()
    return out


def fmt(ci: list[float]) -> str:
    mean, low, high = ci
    return f"{mean:.2f} [{low:.2f}, {high:.2f}]"


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Refusal recipes on `{PRESET}` ({result['when']}, {result['machine']}); each variant trained from scratch, "
        f"answers greedy from the unpacked 4-bit weights. Refusal cases = the unanswerable test questions + a "
        f"no-oracle copy of each answerable one (its oracle passage removed). 95% bootstrap intervals.",
        "",
        "| variant | training refusals | answer correct (answerable) | right refusals (unanswerable + no-oracle) | "
        "wrong refusals (answerable) | tuned − base, all prompts | train s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        t, c = r["tuned"], r["tuned"]["counts"]
        d = r["tuned_minus_base"]
        lines.append(
            f"| {r['variant']} | {r['train_refusals']}/{r['train_examples']} | "
            f"{c['correct_answerable']}/{c['answerable']} = {fmt(t['answer_correct'])} | "
            f"{t['right_refusals_unanswerable']}/{c['unanswerable']} + "
            f"{t['right_refusals_no_oracle']}/{c['no_oracle']} = {fmt(t['right_refusals'])} | "
            f"{c['refused_answerable']}/{c['answerable']} = {fmt(t['wrong_refusals'])} | "
            f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] | {r['seconds']['train'] or 'SFT reused'}"
            + (f" + {r['seconds']['dpo']} DPO" if r["seconds"].get("dpo") else "")
            + " |"
        )

    def untuned(b: dict[str, Any]) -> str:
        c = b["counts"]
        return (
            f"answer correct {c['correct_answerable']}/{c['answerable']}, "
            f"right refusals {b['right_refusals_unanswerable']}/{c['unanswerable']} + "
            f"{b['right_refusals_no_oracle']}/{c['no_oracle']}, "
            f"wrong refusals {c['refused_answerable']}/{c['answerable']}"
        )

    if result["runs"]:
        first = result["runs"][0]
        lines += ["", f"Untuned model on the same prompts: {untuned(first['base'])}."]
        for r in result["runs"][1:]:
            if r["base"]["counts"] != first["base"]["counts"]:  # its examples differ (e.g. longer targets dropped some)
                lines.append(
                    f"{r['variant']}: {r['train_examples']} training examples and "
                    f"{r['base']['counts']['answerable']} answerable test questions fit `model.max_length`; "
                    f"the untuned model on its prompts: {untuned(r['base'])}."
                )
    lines += ["", "Variants:", ""] + [
        f"- **{r['variant']}**: {r['what']} (`data: {json.dumps(r['data'])}`"
        + (f"; training: `{json.dumps(r['training'])}`" if r.get("training") else "")
        + (f"; DPO: `{json.dumps(r['dpo'])}`" if r.get("dpo") else "")
        + ")"
        for r in result["runs"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output-root", default="/tmp/refusal_recipes")
    parser.add_argument("--out", default=str(RESULTS / f"refusal_recipes_{PRESET}.json"))
    args = parser.parse_args()
    import platform

    out = Path(args.out)
    previous = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    runs = {r["variant"]: r for r in previous["runs"]}
    base_cache: dict[str, Any] = {}
    for name in args.variants:
        print(f"== {name}", flush=True)
        runs[name] = run_variant(name, Path(args.output_root), base_cache)
        result = {
            "when": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()} CPU",
            "runs": [runs[n] for n in VARIANTS if n in runs],
        }
        out.write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
