"""Hybrid retrieval measured against dense-only and BM25-only (issue 10), on two corpora, with the chunking and the
fusion weight chosen by measurement.

* **sample**: the course's sample domain (data/corpus) and its curated questions (data/qa), located on the chunks
  with ``data.locate_oracles``; answerable questions only, on the test split (as ``data.prepare`` splits it: by
  document group, same seed) and on all questions.
* **real-docs**: the READMEs of installed packages (``realdocs.build_real_docs``), with queries made without an LLM
  by ``realdocs.identifier_queries``: an identifier from a prose sentence plus 3–6 content words of that sentence;
  the relevant chunks hold the identifier and the sentence (``realdocs.locate_identifier_queries``).

Measured: hit@k (k = 1..10) and MRR@k for dense, bm25 and hybrid at the preset's chunking (plus hybrid+rerank when
the preset's ``rag.rerank`` is on or ``--rerank-model`` names a cross-encoder), with BM25 on the course's tokens
(``rag.bm25_tokenizer: identifiers``, ``retrieval.lexical_tokens``) and, as the "before" of issue 33, on LlamaIndex's
default English tokens (``english``); a chunking sweep (chunk_size 64/128/256/384/512 tokens, 12.5 % overlap: the
presets' chunkings, hybrid); the prompt-token budget each chunking leaves; the fusion weight sweep (dense_weight 0..1)
at every chunking, for both tokenizers; the dense_weight each preset's chunking recommends.

    nice -n 19 python benchmarks/retrieval_quality.py            # cpu-smoke, 1 torch thread, ~10-15 min on 2 cores
    nice -n 19 python benchmarks/retrieval_quality.py --chunkings 64/8,128/16,256/32   # the run committed: ~7 min

Writes benchmarks/results/retrieval_quality.{json,md} and retrieval_at_k_<corpus>.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ragcourse import data, plots, prompts, rag, realdocs, retrieval, runtime
from ragcourse.config import CourseConfig

RESULTS = Path(__file__).resolve().parent / "results"
CHUNKINGS = ((64, 8), (128, 16), (256, 32), (384, 48), (512, 64))  # overlap 12.5 %; every preset's chunking
TOKENIZERS = ("identifiers", "english")  # rag.bm25_tokenizer: after / before issue 33
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
MAX_K = 10
REPORT_K = 5
PASSAGE_BUDGET = 256  # passage tokens compared at equal budget: 4 x 64, 2 x 128, 1 x 256
FIT_SHARE = 0.95  # a top_k "fits" when this share of prompts (+ max_new_tokens) stays within model.max_length

METHOD = {
    "sample": (
        "Curated questions of data/qa (written with their supporting passage), located on the chunks with "
        "data.locate_oracles; relevant = the oracle chunk(s); a hit = any relevant chunk in the top k. "
        "Unanswerable questions are left out. 'test' = the test split as data.prepare makes it "
        "(data.document_groups + data.group_split, training seed); 'all' = every answerable question."
    ),
    "real-docs": (
        "Package READMEs (realdocs.build_real_docs, default packages). 'as-words': the queries whose "
        "identifier holds punctuation (snake_case, dotted, --flag), with the identifier typed as words "
        "(get_config -> 'get config'), as a user who does not remember the exact spelling would. "
        "'reference-qa': the "
        "same identifiers asked as realdocs.write_reference_qa asks them for `ragcourse run-all` on real "
        "documentation ('What does the peft documentation say about `set_adapter`?'): the identifier is "
        "the only word that points at the chunk. Queries from "
        "realdocs.identifier_queries (seed 0): for each identifier (CLI flag, snake_case, dotted path or "
        "CamelCase in backticks, or a bare snake_case name/flag) found in a prose sentence (8-50 words, "
        "code blocks, headings and URLs left out; list items and table rows count as sentences), the query "
        "is the identifier plus 3-6 content words of the sentence (stopwords and words under 4 letters "
        "left out), in sentence order, never the sentence verbatim; at most 3 sentences per identifier and "
        "25 queries per package. Relevant = every chunk holding the identifier and the sentence "
        "(rapidfuzz partial_ratio >= 90 on lower-cased words). Queries no chunk holds are dropped."
    ),
}
CAVEATS = [
    "real-docs queries share their words with the relevant chunk by construction (identifier + words of its "
    "sentence): this favours BM25 and measures exact-term lookup, not paraphrased questions.",
    "The curated questions were drafted from their supporting passages (data/README.md), so they also share "
    "vocabulary with them; real users paraphrase more, which favours dense retrieval.",
    "About 100 real-docs queries and 25-30 answerable test questions: one question moves a hit rate by 1-4 points; "
    "differences under ~0.05 (test split: ~0.1) are within noise.",
    "tqdm and bm25s READMEs hold most identifiers in prose, so they supply about half of the real-docs queries.",
    "A larger chunk covers more text, so hit@k rises with chunk size for the same k; compare at an equal passage-"
    f"token budget ({PASSAGE_BUDGET} tokens: k = {PASSAGE_BUDGET} // chunk_size) and against what fits the prompt.",
    "Multi-hop questions count as a hit when any one of their oracle chunks is retrieved.",
    "Chunking sweep on real-docs: only queries that every chunking can hold (the intersection) are scored.",
]


def cached_queries(embed_model: Any) -> Any:
    """The embedding model with each query embedded once: the sweeps ask the same questions dozens of times (every
    weight, tokenizer and k), and the dense ranking of a question does not change between them."""
    import functools

    object.__setattr__(
        embed_model, "_get_query_embedding", functools.lru_cache(maxsize=None)(embed_model._get_query_embedding)
    )
    return embed_model


def with_tokenizer(cfg: CourseConfig, tokenizer: str) -> CourseConfig:
    """``cfg`` with ``rag.bm25_tokenizer`` set (the benchmark measures both)."""
    return dataclasses.replace(cfg, rag=dataclasses.replace(cfg.rag, bm25_tokenizer=tokenizer))


def load_questions(cfg: CourseConfig, docs: list[Any]) -> tuple[list[dict], set[str]]:
    """Curated Q&A and the ids of its test split (the split depends on documents only, not on the chunking)."""
    items = data.load_qa(cfg.data.qa_dir)
    split = data.group_split(items, data.document_groups(docs, items), cfg.data.split_fractions, cfg.training.seed)
    return items, {item["id"] for item in split["test"]}


def sample_sets(items: list[dict], test_ids: set[str]) -> Callable[[list[Any]], dict[str, list[dict]]]:
    """Question sets of the sample domain, located on a given chunking."""
    import copy

    def located(chunks: list[Any]) -> dict[str, list[dict]]:
        answerable = [i for i in data.locate_oracles(copy.deepcopy(items), chunks) if i["oracle_ids"]]
        return {"test": [i for i in answerable if i["id"] in test_ids], "all": answerable}

    return located


def as_words(item: dict) -> dict:
    """The query with its identifier typed as words (``get_config`` -> ``get config``, ``--resume`` -> ``resume``)."""
    import re

    words = re.sub(r"[^A-Za-z0-9]+", " ", item["identifier"]).strip()
    return {**item, "question": item["question"].replace(item["identifier"], words, 1)}


def reference_question(item: dict, titles: dict[str, str]) -> dict:
    """The question ``realdocs.write_reference_qa`` asks about the same identifier (what ``ragcourse run-all`` on real
    documentation is evaluated with): "What does the peft documentation say about `set_adapter`?"."""
    title = titles.get(item["doc_id"]) or item["doc_id"]
    return {**item, "question": f"What does the {title.split(':')[0]} documentation say about `{item['identifier']}`?"}


def real_docs_sets(items: list[dict], titles: dict[str, str]) -> Callable[[list[Any]], dict[str, list[dict]]]:
    """'all': the queries as made; 'as-words': those whose identifier holds punctuation, with it typed as words;
    'reference-qa': the same identifiers asked as realdocs.write_reference_qa asks them."""
    import re

    def located(chunks: list[Any]) -> dict[str, list[dict]]:
        rows = realdocs.locate_identifier_queries(items, chunks)
        return {
            "all": rows,
            "as-words": [as_words(r) for r in rows if re.search(r"[^A-Za-z0-9]", r["identifier"])],
            "reference-qa": [reference_question(r, titles) for r in rows],
        }

    return located


def summary(quality: Any, ks: Sequence[int] = (1, REPORT_K)) -> dict[str, float]:
    """hit@1, hit@5, MRR@5 from one retriever's rows of ``rag.retrieval_quality``."""
    by_k = quality.set_index("k")
    out = {f"hit@{k}": round(float(by_k.loc[k, "hit_rate"]), 4) for k in ks}
    out[f"mrr@{REPORT_K}"] = round(float(by_k.loc[REPORT_K, "mrr"]), 4)
    return out


def prompt_tokens(
    index: Any, rows: list[dict], cfg: CourseConfig, tokenizer: Any, max_top_k: int = 6
) -> dict[int, list[int]]:
    """Tokens of the inference prompt (chat template, system prompt, top-k hybrid passages, question) per top_k."""
    retriever = retrieval.make_retriever(index, cfg, "hybrid", top_k=max_top_k)
    count = data.token_counter(tokenizer)
    out: dict[int, list[int]] = {k: [] for k in range(1, max_top_k + 1)}
    for row in rows:
        passages = rag.passages_of(retriever.retrieve(row["question"]))
        for k in out:
            messages = prompts.messages(cfg.model.system_prompt, prompts.user_prompt(row["question"], passages[:k]))
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            out[k].append(len(count(text)))
    return out


def token_budget(tokens: dict[int, list[int]], cfg: CourseConfig) -> dict[str, Any]:
    """Per top_k: p95 of prompt + ``max_new_tokens`` and the share of prompts within ``model.max_length``; and the
    largest top_k that fits for ``FIT_SHARE`` of the prompts."""
    import numpy as np

    limit, answer = cfg.model.max_length, cfg.model.max_new_tokens
    p95 = {k: int(np.percentile(v, 95)) + answer for k, v in tokens.items()}
    share = {k: round(float(np.mean([t + answer <= limit for t in v])), 3) for k, v in tokens.items()}
    return {
        "p95_prompt_plus_answer_tokens": p95,
        "share_fitting": share,
        "max_top_k_fitting": max((k for k, s in share.items() if s >= FIT_SHARE), default=0),
    }


def evaluate_corpus(
    name: str,
    docs: list[Any],
    question_sets: Callable[[list[Any]], dict[str, list[dict]]],
    cfg: CourseConfig,
    tokenizer: Any,
    embed_model: Any,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Every measurement on one corpus: quality curves at the preset's chunking, the chunking and weight sweeps."""
    count = data.token_counter(tokenizer)
    preset = (cfg.data.chunk_size, cfg.data.chunk_overlap)
    chunkings = {c: data.chunk_documents(docs, *c, tokenizer=count) for c in dict.fromkeys([preset, *CHUNKINGS])}
    sets = {c: question_sets(chunks) for c, chunks in chunkings.items()}
    # The sweep scores the questions every chunking can hold, so that the settings answer the same questions.
    common = {s: set.intersection(*({r["question"] for r in sets[c][s]} for c in chunkings)) for s in sets[preset]}
    out: dict[str, Any] = {"documents": len(docs), "method": METHOD[name], "chunking_sweep": []}
    for (size, overlap), chunks in chunkings.items():
        start = time.perf_counter()
        index = retrieval.build_index(chunks, embed_model)
        log(f"{name}: {len(chunks)} chunks of {size}/{overlap} tokens embedded in {time.perf_counter() - start:.0f} s")
        mean_tokens = sum(len(count(c.get_content())) for c in chunks) / len(chunks)
        entry: dict[str, Any] = {
            "chunk_size": size,
            "chunk_overlap": overlap,
            "chunks": len(chunks),
            "mean_chunk_tokens": round(mean_tokens, 1),
        }
        for set_name, rows in sets[(size, overlap)].items():
            rows = [r for r in rows if r["question"] in common[set_name]]
            curve = rag.retrieval_quality(index, rows, cfg, kinds=["hybrid"], max_k=MAX_K)
            hits = [round(float(h), 4) for h in curve["hit_rate"]]
            fusion = {
                tok: rag.fusion_sweep(index, rows, with_tokenizer(cfg, tok), weights=WEIGHTS, k=REPORT_K)
                .round(4)
                .reset_index()
                .to_dict("records")
                for tok in TOKENIZERS
            }
            entry[set_name] = {
                "questions": len(rows),
                **summary(curve),
                "hit_at_k": hits,
                f"hit_at_{PASSAGE_BUDGET}_passage_tokens": hits[max(PASSAGE_BUDGET // size, 1) - 1],
                "fusion": fusion[cfg.rag.bm25_tokenizer],
                "fusion_by_bm25_tokenizer": fusion,
            }
        if name == "sample":
            entry["token_budget"] = token_budget(
                prompt_tokens(index, sets[(size, overlap)]["all"], cfg, tokenizer), cfg
            )
        out["chunking_sweep"].append(entry)
        if (size, overlap) == preset:
            out["preset_chunking"] = {"chunk_size": size, "chunk_overlap": overlap, "chunks": len(chunks), "sets": {}}
            for set_name, rows in sets[preset].items():
                quality = rag.retrieval_quality(index, rows, cfg, max_k=MAX_K)
                # The same question set with each BM25 tokenizer (dense does not depend on it), at the preset's
                # dense_weight and at each weight of the sweep.
                by_tokenizer = {
                    tok: {
                        kind: summary(g)
                        for kind, g in rag.retrieval_quality(
                            index, rows, with_tokenizer(cfg, tok), kinds=["dense", "bm25", "hybrid"], max_k=MAX_K
                        ).groupby("retriever", sort=False)
                    }
                    for tok in TOKENIZERS
                }
                out["preset_chunking"]["sets"][set_name] = {
                    "questions": len(rows),
                    "summary": {kind: summary(g) for kind, g in quality.groupby("retriever", sort=False)},
                    "summary_by_bm25_tokenizer": by_tokenizer,
                    "at_k": quality.round(4).to_dict("records"),
                }
                plots.retrieval_at_k(
                    quality,
                    cfg.rag.similarity_top_k,
                    RESULTS / f"retrieval_at_k_{name}-{set_name}.png",
                    title=f"{name} ({set_name}, {len(rows)} questions), chunks {size}/{overlap}",
                )
        log(f"{name}: {size}/{overlap} scored")
    return out


def recommend(corpora: dict[str, dict]) -> dict[str, Any]:
    """Per chunking, top_k = the most passages whose prompt fits max_length (sample questions); the chunking with
    the best mean hybrid hit rate at that top_k over both corpora wins (ties: MRR@5); then the dense_weight whose
    worse corpus has the best MRR@5 at that chunking (max-min: robust to one corpus's bias; ties: nearer 0.5)."""
    metric = f"mrr@{REPORT_K}"
    fit = {
        (e["chunk_size"], e["chunk_overlap"]): e["token_budget"]["max_top_k_fitting"]
        for e in corpora["sample"]["chunking_sweep"]
    }
    scores: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for corpus in corpora.values():
        for e in corpus["chunking_sweep"]:
            c = (e["chunk_size"], e["chunk_overlap"])
            if fit[c]:
                scores.setdefault(c, []).append((e["all"]["hit_at_k"][fit[c] - 1], e["all"][metric]))
    mean = {c: tuple(round(sum(x) / len(x), 4) for x in zip(*v)) for c, v in scores.items()}
    if not mean:
        return {"rule": " ".join(recommend.__doc__.split()), "note": "no chunking leaves room for one passage"}
    best = max(mean, key=mean.__getitem__)
    weights: dict[float, list[float]] = {}
    for corpus in corpora.values():
        entry = next(e for e in corpus["chunking_sweep"] if (e["chunk_size"], e["chunk_overlap"]) == best)
        for row in entry["all"]["fusion"]:
            weights.setdefault(row["dense_weight"], []).append(row[metric])
    weight = max(weights, key=lambda w: (min(weights[w]), -abs(w - 0.5)))
    return {
        "rule": " ".join(recommend.__doc__.split()),
        "chunk_size": best[0],
        "chunk_overlap": best[1],
        "similarity_top_k": fit[best],
        "dense_weight": weight,
        "dense_weight_by_chunking": {f"{c[0]}/{c[1]}": best_weight(corpora, c) for c in CHUNKINGS},
        "by_chunking": {
            f"{c[0]}/{c[1]}": {"top_k_fitting": fit[c], "mean_hit_at_that_k": m[0], "mean_mrr@5": m[1]}
            for c, m in mean.items()
        },
        "worst_corpus_mrr@5_by_dense_weight": {str(w): min(v) for w, v in weights.items()},
    }


def best_weight(corpora: dict[str, dict], chunking: tuple[int, int], tokenizer: str | None = None) -> dict[str, Any]:
    """At one chunking: the dense_weight whose worst question set has the best MRR@5 (every set but the small sample
    test split: sample 'all', real-docs 'all', 'as-words' and 'reference-qa'; ties: nearer 0.5), with the BM25
    tokenizer ``tokenizer`` (None: the configured one, whose sweep is ``fusion``)."""
    metric = f"mrr@{REPORT_K}"
    weights: dict[float, list[float]] = {}
    for corpus in corpora.values():
        entry = next(e for e in corpus["chunking_sweep"] if (e["chunk_size"], e["chunk_overlap"]) == chunking)
        for set_name in (n for n in corpus["preset_chunking"]["sets"] if n != "test"):
            sweep = entry[set_name]
            for row in sweep["fusion_by_bm25_tokenizer"][tokenizer] if tokenizer else sweep["fusion"]:
                weights.setdefault(row["dense_weight"], []).append(row[metric])
    weight = max(weights, key=lambda w: (min(weights[w]), -abs(w - 0.5)))
    return {
        "dense_weight": weight,
        "worst_set_mrr@5": min(weights[weight]),
        "worst_set_mrr@5_by_dense_weight": {str(w): min(v) for w, v in weights.items()},
    }


def markdown(result: dict[str, Any]) -> str:
    """The tables of benchmarks/README.md."""
    lines = [
        f"Retrieval quality ({result['settings']['preset']}, {result['settings']['embedding']}, hybrid = RRF of "
        f"top-{result['settings']['hybrid_candidates']} dense and BM25 lists, dense_weight "
        f"{result['settings']['dense_weight']}).",
        "",
        "| corpus | questions | chunks | retriever | hit@1 | hit@5 | MRR@5 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, corpus in result["corpora"].items():
        pc = corpus["preset_chunking"]
        for set_name, s in pc["sets"].items():
            for kind, m in s["summary"].items():
                lines.append(
                    f"| {name} ({set_name}) | {s['questions']} | {pc['chunks']} × {pc['chunk_size']} tok | "
                    f"{kind} | {m['hit@1']:.2f} | {m['hit@5']:.2f} | {m['mrr@5']:.2f} |"
                )
    lines += [
        "",
        "BM25 tokens before and after issue 33 (same questions, same chunks, same dense_weight "
        f"{result['settings']['dense_weight']}): before = LlamaIndex's default English tokens "
        "(`rag.bm25_tokenizer: english`), after = identifiers kept whole and as their words "
        "(`identifiers`, `retrieval.lexical_tokens`). Dense does not use BM25: one column.",
        "",
        "| corpus | retriever | before hit@1 | before hit@5 | before MRR@5 | after hit@1 | after hit@5 | after MRR@5 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, corpus in result["corpora"].items():
        for set_name, s in corpus["preset_chunking"]["sets"].items():
            before, after = (s["summary_by_bm25_tokenizer"][t] for t in ("english", "identifiers"))
            for kind in ("dense", "bm25", "hybrid"):
                b, a = before[kind], after[kind]
                lines.append(
                    f"| {name} ({set_name}, {s['questions']} q) | {kind} | {b['hit@1']:.2f} | {b['hit@5']:.2f} | "
                    f"{b['mrr@5']:.2f} | {a['hit@1']:.2f} | {a['hit@5']:.2f} | {a['mrr@5']:.2f} |"
                )
    lines += [
        "",
        f"Chunking sweep (hybrid; 'all' questions that every chunking holds; hit@{PASSAGE_BUDGET}t = hit rate "
        f"with {PASSAGE_BUDGET} passage tokens, i.e. top {PASSAGE_BUDGET}//chunk_size; fit = largest top_k whose "
        f"prompt + {result['settings']['max_new_tokens']} answer tokens stays within max_length "
        f"{result['settings']['max_length']} for {FIT_SHARE:.0%} of the sample questions).",
        "",
        f"| corpus | chunk/overlap | chunks | mean tokens | hit@1 | hit@5 | MRR@5 | hit@{PASSAGE_BUDGET}t | "
        f"fit top_k | hit@fit | prompts fitting at top {result['settings']['similarity_top_k']} | "
        "p95 tokens at top 1..6 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    budgets = {e["chunk_size"]: e["token_budget"] for e in result["corpora"]["sample"]["chunking_sweep"]}
    for name, corpus in result["corpora"].items():
        for e in corpus["chunking_sweep"]:
            a, budget = e["all"], budgets[e["chunk_size"]]
            fit = budget["max_top_k_fitting"]
            lines.append(
                f"| {name} ({a['questions']} q) | {e['chunk_size']}/{e['chunk_overlap']} | {e['chunks']} | "
                f"{e['mean_chunk_tokens']} | {a['hit@1']:.2f} | {a['hit@5']:.2f} | {a['mrr@5']:.2f} | "
                f"{a[f'hit_at_{PASSAGE_BUDGET}_passage_tokens']:.2f} | {fit} | "
                f"{a['hit_at_k'][fit - 1] if fit else 0:.2f} | "
                f"{budget['share_fitting'][result['settings']['similarity_top_k']]:.0%} | "
                + " / ".join(str(t) for t in budget["p95_prompt_plus_answer_tokens"].values())
                + " |"
            )
    lines += [
        "",
        "Fusion weight sweep (hybrid MRR@5, 'all' questions; 0 = BM25 ranking only, 1 = dense only), with "
        "each BM25 tokenizer.",
        "",
        "| corpus | chunk | BM25 tokens | " + " | ".join(f"w={w}" for w in WEIGHTS) + " |",
        "|---|---|---|" + "---|" * len(WEIGHTS),
    ]
    for name, corpus in result["corpora"].items():
        for e in corpus["chunking_sweep"]:
            for tok, rows in e["all"]["fusion_by_bm25_tokenizer"].items():
                mrr = " | ".join(f"{row[f'mrr@{REPORT_K}']:.3f}" for row in rows)
                lines.append(f"| {name} | {e['chunk_size']} | {tok} | {mrr} |")
    r = result["recommendation"]
    lines += [
        "",
        "dense_weight per chunking, with the course's BM25 tokens (max-min rule: the weight whose worst "
        "question set — sample all, real-docs all / as-words / reference-qa — has the best hybrid MRR@5; the "
        "presets: cpu-smoke 64, colab-t4 256, gpu-24gb 384, gpu-80gb 512):",
        "",
        "| chunk/overlap | dense_weight | worst set MRR@5 | worst set MRR@5 at w = "
        + " / ".join(str(w) for w in WEIGHTS)
        + " |",
        "|---|---|---|---|",
    ]
    for c, w in r.get("dense_weight_by_chunking", {}).items():
        lines.append(
            f"| {c} | {w['dense_weight']} | {w['worst_set_mrr@5']:.3f} | "
            + " / ".join(f"{v:.3f}" for v in w["worst_set_mrr@5_by_dense_weight"].values())
            + " |"
        )
    choice = r.get("note") or (
        f"chunk_size {r['chunk_size']}, chunk_overlap {r['chunk_overlap']}, "
        f"similarity_top_k {r['similarity_top_k']}, dense_weight {r['dense_weight']}"
    )
    lines += [
        "",
        f"Recommendation (rule: {r['rule'].rstrip('.')}): {choice}.",
        "",
        "Caveats:",
        *(f"- {c}" for c in result["caveats"]),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    global CHUNKINGS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=os.environ.get("RAGCOURSE_PRESET", "cpu-smoke"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0 keeps torch's default)")
    parser.add_argument("--queries", type=int, default=300, help="at most this many real-docs queries")
    parser.add_argument(
        "--chunkings",
        default=",".join(f"{s}/{o}" for s, o in CHUNKINGS),
        help="chunk_size/chunk_overlap pairs of the sweep (default: every preset's)",
    )
    parser.add_argument(
        "--rerank-model",
        help="also measure hybrid+rerank with this cross-encoder (hub id or local "
        "folder); GPU presets measure their own rag.rerank_model anyway",
    )
    args = parser.parse_args()
    CHUNKINGS = tuple(tuple(int(v) for v in c.split("/")) for c in args.chunkings.split(","))
    overrides: dict[str, Any] = {"training": {"torch_threads": args.threads}} if args.threads else {}
    if args.rerank_model:
        overrides["rag"] = {"rerank": True, "rerank_model": args.rerank_model}
    cfg = runtime.start(args.preset, quiet=True, **overrides)
    from ragcourse.models import load_tokenizer

    begin = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - begin:5.0f} s] {msg}", flush=True)

    tokenizer, embed_model = load_tokenizer(cfg), cached_queries(retrieval.embedding_model(cfg))
    corpora: dict[str, dict] = {}
    docs = data.load_documents(cfg.data.corpus_dir)
    items, test_ids = load_questions(cfg, docs)
    corpora["sample"] = evaluate_corpus("sample", docs, sample_sets(items, test_ids), cfg, tokenizer, embed_model, log)
    with tempfile.TemporaryDirectory() as tmp:
        realdocs.build_real_docs(Path(tmp))
        docs = data.load_documents(tmp)
        queries = realdocs.identifier_queries(docs, n=args.queries)
        titles = {d.metadata.get("doc_id", d.doc_id): d.metadata.get("title", "") for d in docs}
        corpora["real-docs"] = evaluate_corpus(
            "real-docs", docs, real_docs_sets(queries, titles), cfg, tokenizer, embed_model, log
        )
        corpora["real-docs"].update(
            packages=sorted(d.metadata["doc_id"] for d in docs),
            queries_made=len(queries),
            query_examples=[q["question"] for q in queries[:8]],
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Saved before the recommendation, so that a failure there does not lose minutes of measurements.
    (RESULTS / "retrieval_quality.json").write_text(json.dumps({"corpora": corpora}, indent=2) + "\n")
    result = {
        "settings": {
            "preset": cfg.preset,
            "embedding": cfg.embedding.name,
            "tokenizer": cfg.model.name,
            "dense_weight": cfg.rag.dense_weight,
            "similarity_top_k": cfg.rag.similarity_top_k,
            "hybrid_candidates": 20,
            "rrf_k": retrieval.RRF_K,
            "chunkings": [f"{size}/{overlap}" for size, overlap in CHUNKINGS],
            "rerank_model": cfg.rag.rerank_model if cfg.rag.rerank else None,
            "rerank_candidates": cfg.rag.rerank_candidates if cfg.rag.rerank else None,
            "max_length": cfg.model.max_length,
            "max_new_tokens": cfg.model.max_new_tokens,
            "torch_threads": args.threads,
            "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
            "versions": runtime.versions(),
        },
        "caveats": CAVEATS,
        "corpora": corpora,
        "recommendation": recommend(corpora),
        "seconds": round(time.perf_counter() - begin),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (RESULTS / "retrieval_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "retrieval_quality.md").write_text(markdown(result))
    print(markdown(result))
    log(f"written to {RESULTS / 'retrieval_quality.json'}")


if __name__ == "__main__":
    main()
