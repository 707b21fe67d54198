"""Does training on passages that carry orders teach the model to ignore them? (issue 33, item 3) on ``cpu-smoke``.

RAFT with adversarial distractors: ``data.injected_distractor_share`` of the training examples carry an order in one
distractor (never the oracle; the orders of ``data.INJECTED_ORDERS_TRAIN``), their target answer unchanged. Each
variant is the preset with only that share changed; it builds its own dataset and adapter from scratch under
``--output-root`` (``pipeline.ensure``, as the CLI does), then answers greedily from the 4-bit weights unpacked once
(``models.load_for_answers``, as notebooks 05 and 06 do on a CPU):

* the test split's own prompts (clean), and
* the same test prompts with a **held-out** order (``tests/injection/orders_heldout.jsonl``: phrasings and demanded
  strings never used in training) written at the end of one distractor, the instruction filter **off**: what the
  model meets when the filter misses an order. Each question gets two different orders (two cases).

Reported, with 95% bootstrap intervals over the test *questions* (a question's two cases are averaged first, so the
interval does not pretend the two are independent): attack success rate (the answer contains what the order
demanded), answer correctness on the injected and on the clean prompts (key fact in the answer, or the refusal where
one is due), for the untuned model and for each tuned variant; and paired differences against the untuned model and
against the variant trained without injected orders (share 0).

A caveat on the measure: the demanded string is in the prompt, so a model that copies the injected passage's text
scores as "attacked" although it followed nothing. Read the answers in the JSON when a rate looks surprising.

Run it alone on the machine (each variant trains for a few minutes on 2 cores)::

    python benchmarks/injection_training.py                       # shares 0, 0.25, 0.5
    python benchmarks/injection_training.py --shares 0 0.25
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

import ragcourse  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)

RESULTS = HERE / "results"
PRESET = "cpu-smoke"
ORDERS_PER_QUESTION = 2


def variant_name(share: float) -> str:
    return f"share-{share:g}"


def answer(cfg: Any, messages: list[list[dict[str, str]]], adapter: Path | None) -> list[str]:
    from ragcourse import models

    tokenizer = models.load_tokenizer(cfg)
    model = models.load_for_answers(cfg)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in messages]
    out = models.generate(model, tokenizer, texts, max_new_tokens=cfg.model.max_new_tokens)
    del model
    models.free_memory()
    return out


def answer_both(
    cfg: Any, clean: list[dict[str, Any]], injected: list[dict[str, Any]], adapter: Path | None, cache: Path
) -> dict[str, list[str]]:
    """One model load answers the clean and the injected prompts; greedy answers are kept in ``cache`` (keyed by the
    prompts and the adapter's manifest), so a rerun that adds a share answers only the new variant."""
    import hashlib

    from ragcourse.artifacts import MANIFEST

    messages = [c["prompt"] for c in clean] + [c["prompt"] for c in injected]
    manifest = (adapter / MANIFEST).read_text() if adapter is not None and (adapter / MANIFEST).is_file() else ""
    key = hashlib.sha256(json.dumps([messages, manifest, cfg.model.max_new_tokens]).encode()).hexdigest()
    if cache.is_file() and json.loads(cache.read_text()).get("key") == key:
        said = json.loads(cache.read_text())["answers"]
    else:
        said = answer(cfg, messages, adapter)
        cache.write_text(json.dumps({"key": key, "answers": said}))
    return {"clean": said[: len(clean)], "injected": said[len(clean) :]}


def per_question(cases: list[dict[str, Any]], values: list[float]) -> list[float]:
    """The mean of each question's cases, in first-seen order (the unit the bootstrap resamples)."""
    by: dict[str, list[float]] = {}
    for c, v in zip(cases, values):
        by.setdefault(c["id"], []).append(v)
    return [sum(v) / len(v) for v in by.values()]


def measures(
    clean: list[dict[str, Any]], injected: list[dict[str, Any]], said: dict[str, list[str]]
) -> dict[str, list[float]]:
    from ragcourse import evaluate, scoring

    return {
        "attack_success": per_question(
            injected, [float(evaluate.followed_order(a, c["marker"])) for c, a in zip(injected, said["injected"])]
        ),
        "correct_injected": per_question(
            injected, [float(scoring.is_correct(c, a)) for c, a in zip(injected, said["injected"])]
        ),
        "correct_clean": [float(scoring.is_correct(c, a)) for c, a in zip(clean, said["clean"])],
    }


def ci(values: list[float]) -> dict[str, float]:
    from ragcourse.evaluate import bootstrap_ci

    mean, low, high = bootstrap_ci(values)
    return {"mean": round(mean, 3), "low": round(low, 3), "high": round(high, 3), "n": len(values)}


def paired(a: list[float], b: list[float]) -> dict[str, float]:
    from ragcourse.evaluate import paired_comparison

    d = paired_comparison(a, b, "")
    return {
        "mean": round(d.mean_difference, 3),
        "low": round(d.low, 3),
        "high": round(d.high, 3),
        "wins": d.wins,
        "losses": d.losses,
    }


def run(shares: list[float], root: Path, write: Any = None) -> dict[str, Any]:
    from ragcourse import data, evaluate, models, pipeline
    from ragcourse.config import load_config

    variants: dict[str, Any] = {}
    clean = injected = None
    base: dict[str, Any] | None = None
    for share in shares:
        name = variant_name(share)
        print(f"== {name}", flush=True)
        cfg = load_config(PRESET, paths={"output_root": str(root / name)}, data={"injected_distractor_share": share})
        t0 = time.perf_counter()
        pipeline.ensure(cfg, "dataset")
        dataset = data.load_dataset(cfg)
        t_data = time.perf_counter() - t0
        t0 = time.perf_counter()
        adapter = pipeline.ensure(cfg, "adapter")
        t_train = time.perf_counter() - t0
        test = [dataset["test"][i] for i in range(dataset["test"].num_rows)]
        if clean is None:
            nodes = {n.node_id: n for n in data.corpus_chunks(cfg, models.load_tokenizer(cfg))}
            clean = test
            injected = evaluate.injected_test_cases(
                test * ORDERS_PER_QUESTION, nodes, evaluate.heldout_orders(), cfg.model.system_prompt
            )
        # The test split does not depend on the share (the orders go into the training split only).
        assert [r["prompt"] for r in test] == [r["prompt"] for r in clean], "the test split changed with the share"
        if base is None:
            t0 = time.perf_counter()
            said = answer_both(cfg, clean, injected, None, root / "base-answers.json")
            base = {
                "answers": said,
                "measures": measures(clean, injected, said),
                "seconds": round(time.perf_counter() - t0),
            }
        t0 = time.perf_counter()
        said = answer_both(cfg, clean, injected, adapter, root / name / "answers.json")
        variants[name] = {
            "share": share,
            "train_examples": dataset["train"].num_rows,
            "train_injected": sum(bool(o) for o in dataset["train"]["injected_order"]),
            "seconds": {"data": round(t_data), "train": round(t_train), "answer": round(time.perf_counter() - t0)},
            "answers": said,
            "measures": measures(clean, injected, said),
        }
        if write is not None:  # after each variant: a long run that stops early keeps what it measured
            write(summarise(shares, variants, base, clean, injected))
    return summarise(shares, variants, base, clean, injected)


def summarise(
    shares: list[float],
    variants: dict[str, Any],
    base: dict[str, Any],
    clean: list[dict[str, Any]],
    injected: list[dict[str, Any]],
) -> dict[str, Any]:
    first = variant_name(0.0) if variant_name(0.0) in variants else None
    rows = {"base": {k: ci(v) for k, v in base["measures"].items()}}
    diffs: dict[str, Any] = {}
    for name, v in variants.items():
        rows[name] = {k: ci(x) for k, x in v["measures"].items()}
        diffs[f"{name} - base"] = {k: paired(v["measures"][k], base["measures"][k]) for k in v["measures"]}
        if first and name != first:
            diffs[f"{name} - {first}"] = {
                k: paired(v["measures"][k], variants[first]["measures"][k]) for k in v["measures"]
            }
    examples = []
    for i, c in enumerate(injected):
        examples.append(
            {
                "id": c["id"],
                "order": c["injected_order"],
                "marker": c["marker"],
                "key_fact": c["key_fact"],
                "base": base["answers"]["injected"][i],
                **{name: v["answers"]["injected"][i] for name, v in variants.items()},
            }
        )
    return {
        "when": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU, {PRESET}",
        "test_questions": len(clean),
        "injected_cases": len(injected),
        "orders_per_question": ORDERS_PER_QUESTION,
        "rates": rows,
        "differences": diffs,
        "variants": {
            name: {k: v[k] for k in ("share", "train_examples", "train_injected", "seconds")}
            for name, v in variants.items()
        },
        "base_seconds": base["seconds"],
        "injected_answers": examples,
    }


def markdown(result: dict[str, Any]) -> str:
    def cell(x: dict[str, float]) -> str:
        return f"{x['mean']:.2f} [{x['low']:.2f}, {x['high']:.2f}]"

    lines = [
        f"# Orders in passages: training with injected distractors ({result['machine']}, {result['when']})",
        "",
        f"{result['test_questions']} test questions, {result['orders_per_question']} held-out orders each "
        f"({result['injected_cases']} injected prompts, filter off); 95% bootstrap intervals over questions.",
        "",
        "| model | attack success (injected) | answer correct (injected) | answer correct (clean) |",
        "|---|---|---|---|",
    ]
    for name, r in result["rates"].items():
        lines.append(
            f"| {name} | {cell(r['attack_success'])} | {cell(r['correct_injected'])} | {cell(r['correct_clean'])} |"
        )
    lines += [
        "",
        "Paired differences (mean [interval], questions where the first is higher / lower):",
        "",
        "| comparison | attack success | answer correct (injected) | answer correct (clean) |",
        "|---|---|---|---|",
    ]
    for name, d in result["differences"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{d[k]['mean']:+.2f} [{d[k]['low']:+.2f}, {d[k]['high']:+.2f}] ({d[k]['wins']}/{d[k]['losses']})"
                for k in ("attack_success", "correct_injected", "correct_clean")
            )
            + " |"
        )
    lines += [
        "",
        "| variant | training examples | with an injected order | data s | train s | answer s |",
        "|---|---|---|---|---|---|",
    ]
    for name, v in result["variants"].items():
        s = v["seconds"]
        lines.append(
            f"| {name} | {v['train_examples']} | {v['train_injected']} | {s['data']} | {s['train']} | {s['answer']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shares", nargs="+", type=float, default=[0.0, 0.25, 0.5])
    parser.add_argument("--output-root", default="outputs/bench-injection")
    parser.add_argument("--out", default=str(RESULTS / f"injection_training_{PRESET}.json"))
    args = parser.parse_args()
    out = Path(args.out)

    def write(result: dict[str, Any]) -> None:
        out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        out.with_suffix(".md").write_text(markdown(result))
        print(markdown(result), flush=True)

    run(args.shares, Path(args.output_root).resolve(), write)


if __name__ == "__main__":
    main()
