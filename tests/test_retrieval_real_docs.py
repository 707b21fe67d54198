"""Retrieval on real documentation (issue 10): the query maker of ``ragcourse.realdocs`` and hybrid vs dense vs BM25
on a few installed packages' READMEs (benchmarks/retrieval_quality.py measures the full set)."""

import random

import pytest

from ragcourse import data, rag, realdocs, retrieval
from ragcourse.config import load_config

# READMEs that name identifiers in running text (installed with the course's own dependencies).
PACKAGES = ("nbval", "tokenizers", "peft")
SENTENCE = "To switch between adapters, call `set_adapter` with the name of the adapter you want to activate."


def test_identifier_query_is_the_identifier_plus_a_few_words_of_the_sentence():
    assert realdocs.sentence_identifiers(SENTENCE) == ["set_adapter"]
    query = realdocs.identifier_query("set_adapter", SENTENCE, random.Random(0))
    name, *words = query.split()
    assert name == "set_adapter" and 3 <= len(words) <= 6 and query not in SENTENCE
    assert all(w in SENTENCE.lower() and len(w) >= 4 for w in words)
    assert words == sorted(words, key=SENTENCE.lower().index)  # in the sentence's order
    assert realdocs.identifier_query("set_adapter", "Call `set_adapter` now.", random.Random(0)) is None


def test_identifiers_and_sentences_come_from_prose_only():
    text = (
        "# Install\n\nUse the flag `--nbval-lax` to compare only the outputs of marked cells in a notebook.\n\n"
        "```python\nmodel = get_peft_model(model, LoraConfig(r=8))\n```\n\n"
        "    indented_code = call_me()\n\n- `update()` refreshes the bar when it is called by the user code.\n"
    )
    sentences = realdocs.prose_sentences(text)
    assert sentences == [
        "Use the flag `--nbval-lax` to compare only the outputs of marked cells in a notebook.",
        "`update()` refreshes the bar when it is called by the user code.",
    ]
    assert realdocs.sentence_identifiers(sentences[0]) == ["--nbval-lax"]
    assert realdocs.sentence_identifiers(sentences[1]) == []  # a plain word, not a test of exact matching
    assert realdocs.is_identifier("LoraConfig") and realdocs.is_identifier("torch.distributed.run")
    assert not realdocs.is_identifier("GPU") and not realdocs.is_identifier("model")


def test_relevant_chunks_hold_the_identifier_and_the_sentence():
    from llama_index.core.schema import TextNode

    item = {"question": "set_adapter switch adapters activate", "identifier": "set_adapter", "sentence": SENTENCE}
    chunks = [
        TextNode(text=f"## Adapters\n\n{SENTENCE}", id_="a#0"),
        TextNode(text="Call `set_adapter` later.", id_="a#1"),
        TextNode(text="To switch between adapters, call the method with a name.", id_="a#2"),
    ]
    assert realdocs.locate_identifier_queries([item], chunks)[0]["oracle_ids"] == ["a#0"]
    assert realdocs.locate_identifier_queries([item], chunks[1:]) == []


@pytest.fixture(scope="module")
def real_docs(tmp_path_factory):
    """An index over three packages' READMEs (cpu-smoke's chunk sizes; tiktoken counts, so no model to load) and the
    identifier queries located on it."""
    cfg = load_config("cpu-smoke")
    folder = tmp_path_factory.mktemp("realdocs")
    if len(realdocs.build_real_docs(folder, packages=PACKAGES)) < len(PACKAGES):
        pytest.skip(f"needs the READMEs of {', '.join(PACKAGES)} (installed with the course)")
    docs = data.load_documents(folder)
    chunks = data.chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap)
    rows = realdocs.locate_identifier_queries(realdocs.identifier_queries(docs, n=100), chunks)
    assert len(rows) >= 10, "too few identifier queries to measure anything"
    return cfg, retrieval.build_index(chunks, retrieval.embedding_model(cfg)), rows


@pytest.mark.slow  # 8 s on an idle 2-core CPU, ~50 s beside a training job
def test_hybrid_is_not_worse_than_dense_on_real_docs(real_docs):
    cfg, index, rows = real_docs
    quality = rag.retrieval_quality(index, rows, cfg, max_k=5).set_index(["retriever", "k"])["hit_rate"]
    assert quality["hybrid", 5] >= quality["dense", 5] - 0.05, quality.unstack().to_string()


@pytest.mark.slow
def test_bm25_finds_an_exact_identifier_that_dense_misses_and_hybrid_keeps_it(real_docs):
    cfg, index, rows = real_docs
    questions = [r["question"] for r in rows]
    ranks = {
        kind: [
            rag.first_relevant_rank(ids, set(r["oracle_ids"])) or 99
            for ids, r in zip(rag.ranked_ids(retrieval.make_retriever(index, cfg, kind, top_k=20), questions), rows)
        ]
        for kind in ("dense", "bm25", "hybrid")
    }
    # The first query, in the generator's seeded order, that BM25 ranks in the top 5 and dense below it.
    case = next((i for i in range(len(rows)) if ranks["bm25"][i] <= 5 < ranks["dense"][i]), None)
    if case is None:
        pytest.skip("no query here that BM25 finds in the top 5 and dense does not")
    where = {kind: ranks[kind][case] for kind in ranks}
    assert where["hybrid"] <= 5, f"{rows[case]['question']!r}: ranks {where}"


@pytest.mark.slow
def test_identifier_tokens_find_identifiers_typed_either_way(real_docs):
    """BM25 on ``retrieval.lexical_tokens`` (issue 33) against LlamaIndex's default English tokens, on questions where
    the identifier is the only pointer ("What does the documentation say about set_adapter?"), with the identifier as
    written and typed as words ("set adapter"): the course's tokens rank the relevant chunk at least as well as
    written, and better as words."""
    import dataclasses
    import re

    cfg, index, rows = real_docs
    rows = [r for r in rows if re.search(r"[^A-Za-z0-9]", r["identifier"].lstrip("-"))]

    def asked(name: str) -> list[dict]:
        return [{**r, "question": f"What does the documentation say about {name(r['identifier'])}?"} for r in rows]

    sets = {"as written": asked(lambda i: i), "as words": asked(lambda i: re.sub(r"[^A-Za-z0-9]+", " ", i).strip())}
    mrr = {}
    for tokenizer in ("identifiers", "english"):
        tcfg = dataclasses.replace(cfg, rag=dataclasses.replace(cfg.rag, bm25_tokenizer=tokenizer))
        for name, qs in sets.items():
            quality = rag.retrieval_quality(index, qs, tcfg, kinds=["bm25"], max_k=5).set_index("k")["mrr"]
            mrr[tokenizer, name] = round(float(quality[5]), 3)
    assert mrr["identifiers", "as written"] >= mrr["english", "as written"] - 0.02, mrr
    assert mrr["identifiers", "as words"] > mrr["english", "as words"], mrr
