"""Does what the adapter learned carry over to documents it never saw? (issue 19, item 2)

The ``cpu-smoke`` adapter, trained on the sample domain (Vellmark's heat pumps) and unchanged, answers questions over a
domain nobody on this course wrote: the README files of the installed Python packages (``ragcourse.realdocs``), with
reference Q&A made from them without an LLM (``realdocs.write_reference_qa``: "What does the X documentation say
about `identifier`?", the sentence that names it as the reference answer). Both models answer through the same
retrieval (the course's hybrid retriever over the new corpus, ``rag.similarity_top_k`` passages, the training prompt),
base + RAG against tuned + RAG on the same questions, from the 4-bit weights unpacked once (as notebooks 05/06 do on a
CPU). Reported, each with its paired 95% bootstrap interval: token F1 against the reference sentence (the main
measure: the identifier is in the question, so "key fact in the answer" is easy to meet by echoing it), the key-fact
match anyway, answers in the trained form (ending in a passage citation), and refusals (every question is answerable
from the documentation, but retrieval can miss its sentence: "retrieval hit" counts the questions whose top passages
hold it).

    python benchmarks/transfer.py                                    # the adapter under outputs/cpu-smoke/adapter
    python benchmarks/transfer.py --adapter /tmp/x/cpu-smoke/adapter --name near-miss-25

Run it alone on the machine (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's ragcourse

import ragcourse  # noqa: E402,F401  (sets the OpenMP wait policy before torch loads)

RESULTS = HERE / "results"
PRESET = "cpu-smoke"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--adapter", default=None, help="adapter folder (default: the preset's outputs/<preset>/adapter)"
    )
    parser.add_argument("--name", default=None, help="a label for the adapter in the result (default: its recipe)")
    parser.add_argument("--questions", type=int, default=60)
    parser.add_argument("--out", default=str(RESULTS / f"transfer_{PRESET}.json"))
    args = parser.parse_args()

    import platform

    from peft import PeftModel

    from ragcourse import data, evaluate, models, prompts, rag, realdocs, retrieval
    from ragcourse.config import load_config
    from ragcourse.errors import DataError

    course = load_config(PRESET)
    adapter = Path(args.adapter) if args.adapter else course.artifact_dir("adapter")
    if not (adapter / "adapter_config.json").is_file():
        raise SystemExit(
            f"No adapter at {adapter}: train one first (`ragcourse train --preset {PRESET}`), or pass --adapter."
        )
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        realdocs.build_real_docs(root / "docs")
        cfg = load_config(
            PRESET,
            data={"corpus_dir": str(root / "docs"), "qa_dir": str(root / "qa")},
            paths={"output_root": str(root / "outputs")},
        )
        tokenizer = (
            models.load_tokenizer(cfg, str(adapter))
            if (adapter / "tokenizer_config.json").is_file()
            else models.load_tokenizer(cfg)
        )
        docs = data.load_documents(cfg.data.corpus_dir)
        chunks = data.chunk_documents(
            docs, cfg.data.chunk_size, cfg.data.chunk_overlap, tokenizer=data.token_counter(tokenizer)
        )
        realdocs.write_reference_qa(docs, root / "qa", n=args.questions)
        items = []
        for item in data.load_qa(cfg.data.qa_dir):  # a sentence no chunk holds whole (markup, a cut) is left out
            try:
                items += data.locate_oracles([item], chunks)
            except DataError:
                continue
        index = retrieval.build_index(chunks, retrieval.embedding_model(cfg))
        retriever = retrieval.make_retriever(index, cfg)
        cache: dict[str, list[dict[str, str]]] = {}

        def retrieve(question: str) -> list[dict[str, str]]:
            if question not in cache:
                cache[question] = rag.passages_of(retriever.retrieve(question), cfg.rag.filter_instructions)
            return cache[question]

        examples = [{**it, "key_fact": it.get("key_fact") or ""} for it in items]
        rows = {}
        for name, with_adapter in (("base + RAG", False), ("tuned + RAG", True)):
            model = models.load_for_answers(cfg)
            if with_adapter:
                model = PeftModel.from_pretrained(model, str(adapter))
            answers = evaluate.answer_questions(
                model, tokenizer, cfg.model.system_prompt, examples, retrieve, cfg.model.max_new_tokens
            )
            rows[name] = evaluate.score_rows(examples, answers, name)
            del model
            models.free_memory()
        hits = [bool(set(it.get("oracle_ids", [])) & {p["id"] for p in retrieve(it["question"])}) for it in items]
        n_chunks, n_docs = len(chunks), len(docs)

    style = course.data.target_style
    per = {}
    for name, rs in rows.items():
        per[name] = {
            "token_f1": [round(v, 3) for v in evaluate.bootstrap_ci([r["token_f1"] for r in rs])],
            "answer_correct": [round(v, 3) for v in evaluate.bootstrap_ci([r["answer_correct"] for r in rs])],
            "trained_form": sum(prompts.in_trained_form(r["answer"], style) for r in rs),
            "refused": sum(r["refused"] for r in rs),
            "refused_when_retrieval_hit": sum(r["refused"] for r, h in zip(rs, hits) if h),
        }
    diffs = {}
    for metric in ("token_f1", "answer_correct"):
        d = evaluate.paired_comparison(
            [r[metric] for r in rows["tuned + RAG"]], [r[metric] for r in rows["base + RAG"]], metric
        )
        diffs[metric] = {
            "mean": round(d.mean_difference, 3),
            "low": round(d.low, 3),
            "high": round(d.high, 3),
            "wins": d.wins,
            "losses": d.losses,
            "p_value": round(d.p_value, 4),
        }
    data_knobs = {k: getattr(course.data, k) for k in ("oracle_fraction", "refusal_share", "refusal_source")}
    result = {
        "when": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} CPU",
        "preset": PRESET,
        "adapter": args.name or f"{PRESET} adapter ({style}; data: {json.dumps(data_knobs)})",
        "corpus": {"documents": n_docs, "chunks": n_chunks, "questions": len(items), "retrieval_hit": sum(hits)},
        "conditions": per,
        "tuned_minus_base": diffs,
        "seconds": round(time.perf_counter() - t_start),
        "examples": [
            {"question": a["question"], "reference": a["reference"], "base": a["answer"], "tuned": b["answer"]}
            for a, b in zip(rows["base + RAG"][:12], rows["tuned + RAG"][:12])
        ],
    }
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict[str, Any]) -> str:
    c = r["corpus"]
    n = c["questions"]
    lines = [
        f"Transfer to an unseen domain ({r['when']}, {r['machine']}): the {r['adapter']}, unchanged, on "
        f"{c['documents']} installed packages' READMEs ({c['chunks']} chunks), {n} reference questions made from "
        f"them without an LLM; retrieval's top passages hold the reference sentence for {c['retrieval_hit']} of {n}. "
        f"95% bootstrap intervals; {r['seconds']} s in all.",
        "",
        "| condition | token F1 vs reference | key fact in answer | trained form (cites a passage) | "
        "refusals (of which retrieval hit) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in r["conditions"].items():
        f1, ac = s["token_f1"], s["answer_correct"]
        lines.append(
            f"| {name} | {f1[0]:.3f} [{f1[1]:.3f}, {f1[2]:.3f}] | {ac[0]:.2f} [{ac[1]:.2f}, {ac[2]:.2f}] | "
            f"{s['trained_form']}/{n} | {s['refused']}/{n} ({s['refused_when_retrieval_hit']}) |"
        )
    lines += [
        "",
        "| tuned + RAG − base + RAG | mean | 95% interval | better / worse | sign test p |",
        "|---|---:|---:|---:|---:|",
    ]
    for metric, d in r["tuned_minus_base"].items():
        lines.append(
            f"| {metric} | {d['mean']:+.3f} | [{d['low']:+.3f}, {d['high']:+.3f}] | {d['wins']} / {d['losses']} | "
            f"{d['p_value']:.3f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
