"""Could a threshold make the cpu-smoke adapter refuse when it should (issue 19)? Two signals, measured.

``refusal_recipes.py`` showed that no training mix teaches the 135M model *when* to refuse: every mix that adds right
refusals adds wrong ones at about the same rate. The usual fallback is a threshold at answer time, on a score that
separates the refusal cases from the answerable questions. This script measures the two such scores the course
already has, on the adapters ``refusal_recipes.py`` trained (under its ``--output-root``; a missing one is trained):

* **likelihood margin**: the tuned model's mean negative log-likelihood per token of its own greedy answer minus that
  of the refusal "Not in the documents: ..." (``rag.course_llm(...).answer_nll``, notebook 05): high when the model
  finds the refusal about as likely as what it said;
* **retrieval similarity**: the highest cosine similarity between the question and the prompt's passages
  (all-MiniLM-L6-v2, the course's embedding model): low when no passage is about the question.

Cases, as in ``refusal_recipes.py``: each split's RAFT prompts plus a no-oracle copy of each answerable question (its
oracle passage removed). For each score: its ROC AUC (refusal cases vs answerable questions; 0.5 is chance), and the
policy "refuse when the model refuses, or when the score passes a threshold", with the threshold chosen on the
**validation** split (the most right refusals with wrong refusals at most 10% of its answerable questions) and
counted on the **test** split. The best threshold chosen on the test split itself is reported too, as an upper
bound no honest choice reaches.

Run it alone on the machine (a few minutes per adapter on 2 cores)::

    python benchmarks/refusal_signals.py                       # baseline and near-miss-25
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's ragcourse
sys.path.insert(0, str(HERE))

import refusal_recipes as recipes  # noqa: E402

import ragcourse  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)

RESULTS = HERE / "results"
WRONG_REFUSAL_BUDGET = 0.10  # issue 19: wrong refusals at most 10% of the answerable questions
SIGNALS = {"likelihood margin": "margin", "retrieval similarity (low = refuse)": "neg_similarity"}


def auc(positive: list[float], negative: list[float]) -> float:
    """P(score of a refusal case > score of an answerable question), ties counted half."""
    pairs = [(p > n) + 0.5 * (p == n) for p in positive for n in negative]
    return sum(pairs) / max(len(pairs), 1)


def policy(rows: list[dict[str, Any]], key: str, threshold: float) -> dict[str, int]:
    refuse = [r["refused"] or r[key] >= threshold for r in rows]
    return {
        "right_unanswerable": sum(f for f, r in zip(refuse, rows) if r["kind"] == "unanswerable"),
        "right_no_oracle": sum(f for f, r in zip(refuse, rows) if r["kind"] == "no-oracle"),
        "wrong": sum(f for f, r in zip(refuse, rows) if r["kind"] == "answerable"),
        "correct_kept": sum(r["correct"] and not f for f, r in zip(refuse, rows) if r["kind"] == "answerable"),
    }


def best_threshold(rows: list[dict[str, Any]], key: str) -> float:
    """The threshold with the most right refusals whose wrong refusals stay within the budget (inf: none does)."""
    budget = WRONG_REFUSAL_BUDGET * sum(r["kind"] == "answerable" for r in rows)
    best, best_right = float("inf"), -1
    for t in sorted({r[key] for r in rows}):
        counts = policy(rows, key, t)
        right = counts["right_unanswerable"] + counts["right_no_oracle"]
        if counts["wrong"] <= budget and right > best_right:
            best, best_right = t, right
    return best


def case_rows(
    cfg: Any, split: Any, adapter: Path, tokenizer: Any, embed: Any, nodes: dict[str, Any]
) -> list[dict[str, Any]]:
    import numpy as np
    from peft import PeftModel

    from ragcourse import models, prompts, rag, scoring

    cases = recipes.test_prompts(cfg, {"test": split}, tokenizer)
    passages = {ex["id"]: ex["context_ids"] for ex in split}
    passages |= {ex["id"] + "-no-oracle": [c for c in ex["context_ids"] if c not in ex["oracle_ids"]] for ex in split}
    questions = {ex["id"]: ex["question"] for ex in split}
    model = PeftModel.from_pretrained(models.load_for_answers(cfg), str(adapter)).eval()
    llm = rag.course_llm(model, tokenizer, cfg, name="tuned")
    texts = [tokenizer.apply_chat_template(c["messages"], tokenize=False, add_generation_prompt=True) for c in cases]
    answers = models.generate(model, tokenizer, texts, max_new_tokens=cfg.model.max_new_tokens)
    rows = []
    for c, a in zip(cases, answers):
        q = np.asarray(embed.get_query_embedding(questions[c["id"].removesuffix("-no-oracle")]))
        sims = [
            float(q @ v / (np.linalg.norm(q) * np.linalg.norm(v)))
            for v in map(
                np.asarray, embed.get_text_embedding_batch([nodes[i].get_content() for i in passages[c["id"]]])
            )
        ]
        rows.append(
            {
                "id": c["id"],
                "kind": c["kind"],
                "answer": a,
                "refused": prompts.is_refusal(a),
                "correct": bool(scoring.is_correct(c["example"], a)),
                "margin": round(
                    llm.answer_nll(c["messages"], a) - llm.answer_nll(c["messages"], prompts.NOT_IN_DOCUMENTS), 4
                ),
                "neg_similarity": round(-max(sims), 4),
            }
        )
    del model
    models.free_memory()
    return rows


def run_variant(name: str, root: Path) -> dict[str, Any]:
    from ragcourse import data, models, pipeline, retrieval
    from ragcourse.config import load_config

    overrides, what = recipes.VARIANTS[name]
    cfg = load_config(recipes.PRESET, paths={"output_root": str(root / name)}, **overrides)
    adapter = pipeline.ensure(cfg, "adapter")
    dataset = data.load_dataset(cfg)
    tokenizer = models.load_tokenizer(cfg)
    nodes = {n.node_id: n for n in data.corpus_chunks(cfg, tokenizer)}
    embed = retrieval.embedding_model(cfg)
    rows = {s: case_rows(cfg, dataset[s], adapter, tokenizer, embed, nodes) for s in ("validation", "test")}
    out: dict[str, Any] = {"variant": name, "what": what, "counts": {}, "signals": {}}
    for s, r in rows.items():
        out["counts"][s] = {k: sum(x["kind"] == k for x in r) for k in ("answerable", "unanswerable", "no-oracle")}
    out["greedy_test"] = policy(rows["test"], "margin", float("inf"))
    for label, key in SIGNALS.items():
        per = {}
        for s, r in rows.items():
            per[f"auc_{s}"] = round(
                auc([x[key] for x in r if x["kind"] != "answerable"], [x[key] for x in r if x["kind"] == "answerable"]),
                3,
            )
        chosen = best_threshold(rows["validation"], key)
        per["threshold_from_validation"] = chosen if chosen != float("inf") else None
        per["test_with_validation_threshold"] = policy(rows["test"], key, chosen)
        per["test_with_test_threshold"] = policy(rows["test"], key, best_threshold(rows["test"], key))
        out["signals"][label] = per
    out["rows"] = rows
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"Refusal by threshold on `{recipes.PRESET}` ({result['when']}, {result['machine']}): can a score tell the "
        f"refusal cases (unanswerable + no-oracle copies) from the answerable questions? Policy: refuse when the model "
        f"refuses or the score passes the threshold; threshold chosen on the validation split (most right refusals "
        f"with wrong refusals at most {WRONG_REFUSAL_BUDGET:.0%} of its answerable questions), counted on the test "
        "split.",
        "",
        "| adapter | signal | AUC validation | AUC test | test: right refusals (unans. + no-oracle) | "
        "test: wrong refusals | test: answers kept correct | best threshold on test itself: right / wrong |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        c = r["counts"]["test"]
        g = r["greedy_test"]
        lines.append(
            f"| {r['variant']} | greedy answer only | | | {g['right_unanswerable']}/{c['unanswerable']} + "
            f"{g['right_no_oracle']}/{c['no-oracle']} | {g['wrong']}/{c['answerable']} | "
            f"{g['correct_kept']}/{c['answerable']} | |"
        )
        for label, s in r["signals"].items():
            v, o = s["test_with_validation_threshold"], s["test_with_test_threshold"]
            lines.append(
                f"| {r['variant']} | {label} | {s['auc_validation']:.2f} | {s['auc_test']:.2f} | "
                f"{v['right_unanswerable']}/{c['unanswerable']} + {v['right_no_oracle']}/{c['no-oracle']} | "
                f"{v['wrong']}/{c['answerable']} | {v['correct_kept']}/{c['answerable']} | "
                f"{o['right_unanswerable'] + o['right_no_oracle']}/{c['unanswerable'] + c['no-oracle']} / "
                f"{o['wrong']}/{c['answerable']} |"
            )
    first = result["runs"][0]["counts"]["validation"] if result["runs"] else None
    if first:
        lines += [
            "",
            f"Validation split: {first['answerable']} answerable questions, {first['unanswerable']} unanswerable, "
            f"{first['no-oracle']} no-oracle copies. AUC 0.5 is chance.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["baseline", "near-miss-25"], choices=list(recipes.VARIANTS))
    parser.add_argument("--output-root", default="/tmp/refusal_recipes", help="refusal_recipes.py's --output-root")
    parser.add_argument("--out", default=str(RESULTS / f"refusal_signals_{recipes.PRESET}.json"))
    args = parser.parse_args()
    runs = []
    for name in args.variants:
        print(f"== {name}", flush=True)
        runs.append(run_variant(name, Path(args.output_root)))
    result = {"when": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU", "runs": runs}
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result), flush=True)


if __name__ == "__main__":
    main()
