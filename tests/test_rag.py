"""ragcourse.rag (notebook 05).

Persisted index, explicit LlamaIndex settings, the training prompt, metrics, hybrid search.
"""

import sys

import pytest

from ragcourse import prompts, rag, retrieval
from ragcourse.config import load_config

# A small fixture in which the identifier appears in one passage only, and every other passage talks about the
# query's topic: the embedding model ranks those first, BM25 matches the rare token exactly.
TARGET = "VT-20417 is shipped with four M8 bolts, a torque card and a new warranty label."
TOPICAL = [
    "The compressor isolation mounts of the AH-14 damp vibration between the compressor and the base plate.",
    "Check the isolation mounts for cracks at every annual service; replace all four if one is cracked.",
    "Tighten the isolation mount bolts to 10 Nm; a higher torque makes the mounts transmit noise.",
    "Worn isolation mounts are the most common cause of a humming outdoor unit.",
    "Isolation mounts are wear parts and are not covered by the extended warranty.",
    "Order isolation mounts as a set of four; mixing old and new mounts tilts the compressor.",
    "The fan motor of the AH-14 sits on a steel bracket with rubber dampers.",
]
QUESTION = "Which isolation mount is VT-20417?"


@pytest.fixture(scope="module")
def cfg():
    return load_config("cpu-smoke", model={"max_new_tokens": 12})


@pytest.fixture(scope="module")
def embed_model(cfg):
    return retrieval.embedding_model(cfg)


def _nodes():
    from llama_index.core.schema import TextNode

    meta = {"title": "AH-14 Service Manual", "section": "Compressor", "doc_id": "ah14"}
    return [TextNode(text=t, id_=f"ah14#{i:03d}", metadata=dict(meta)) for i, t in enumerate([TARGET, *TOPICAL])]


@pytest.fixture(scope="module")
def persisted(cfg, embed_model, tmp_path_factory):
    target = tmp_path_factory.mktemp("index") / "index"
    index = retrieval.build_index(_nodes(), embed_model, cfg)
    retrieval.save_index(index, cfg, target)
    return index, target


@pytest.fixture(scope="module")
def llm(cfg):
    from ragcourse.models import load_causal_lm, load_tokenizer
    from ragcourse.train import ensure_pad_token

    tokenizer = load_tokenizer(cfg)
    ensure_pad_token(tokenizer)
    return rag.course_llm(load_causal_lm(cfg, quantize=False), tokenizer, cfg, "base")


def test_persisted_index_reloads_and_answers_identically(cfg, embed_model, persisted, llm):
    index, target = persisted
    assert (target / "docstore.json").is_file() and (target / "manifest.json").is_file()
    reloaded = retrieval.load_index(cfg, embed_model, path=target)
    assert set(reloaded.docstore.docs) == set(index.docstore.docs)
    first = rag.query_engine(retrieval.make_retriever(index, cfg, "hybrid", top_k=3), llm, cfg).query(QUESTION)
    second = rag.query_engine(retrieval.make_retriever(reloaded, cfg, "hybrid", top_k=3), llm, cfg).query(QUESTION)
    assert [n.node.node_id for n in first.source_nodes] == [n.node.node_id for n in second.source_nodes]
    assert [n.score for n in first.source_nodes] == pytest.approx([n.score for n in second.source_nodes])
    assert first.response and first.response == second.response


def test_settings_are_ours_never_openai(cfg, embed_model, persisted, llm, monkeypatch):
    from llama_index.core import Settings

    for name in [n for n in sys.modules if n.startswith("llama_index.llms.openai")]:
        monkeypatch.delitem(sys.modules, name)  # test_serve's OpenAILike may have loaded it: watch for a new import
    retrieval.configure_llamaindex(cfg, llm=llm, embed_model=embed_model)
    assert Settings.llm is llm and Settings.embed_model is embed_model
    assert Settings.llm.metadata.is_chat_model
    # LlamaIndex's stock engine, built without an explicit LLM, must pick ours up from Settings.
    from llama_index.core.query_engine import RetrieverQueryEngine

    engine = RetrieverQueryEngine.from_args(retrieval.make_retriever(persisted[0], cfg, "dense", top_k=2))
    assert engine.query(QUESTION).response is not None
    assert "You are an expert Q&A system" in llm.last_prompt  # it really went through our LLM
    assert not any(name.startswith("llama_index.llms.openai") for name in sys.modules)


def test_query_engine_prompt_is_the_training_format(cfg, persisted, llm):
    engine = rag.query_engine(retrieval.make_retriever(persisted[0], cfg, "hybrid", top_k=3), llm, cfg)
    response = engine.query(QUESTION)
    passages = [
        {"text": n.node.get_content(), "title": n.node.metadata["title"], "section": n.node.metadata["section"]}
        for n in response.source_nodes
    ]
    expected = prompts.messages(cfg.model.system_prompt, prompts.user_prompt(QUESTION, passages))
    assert response.metadata["messages"] == expected
    assert expected[1]["content"].startswith("Documents:\n[1] (AH-14 Service Manual › Compressor) ")
    templated = llm.template(expected)
    assert response.metadata["prompt"] == templated == llm.last_prompt
    assert templated.startswith("<|im_start|>system\n" + cfg.model.system_prompt)  # the chat template is applied


def test_hit_rate_and_mrr_on_a_hand_made_case():
    ranked = [["a", "b", "c"], ["x", "y", "a"], ["p", "q", "r"], ["b", "m", "n"]]
    relevant = [{"a"}, {"a"}, {"a"}, {"b", "n"}]
    m = retrieval.retrieval_metrics(ranked, relevant, ks=[1, 2, 3])
    assert m["hit_rate"] == pytest.approx({1: 2 / 4, 2: 2 / 4, 3: 3 / 4})
    assert m["mrr"] == pytest.approx({1: 2 / 4, 2: 2 / 4, 3: (1 + 1 / 3 + 1) / 4})
    assert rag.first_relevant_rank(["x", "y", "a"], {"a"}) == 3 and rag.first_relevant_rank(["x"], {"a"}) is None


def test_retrieval_quality_table(cfg, persisted):
    rows = [{"question": QUESTION, "oracle_ids": ["ah14#000"]}, {"question": "unanswerable", "oracle_ids": []}]
    table = rag.retrieval_quality(persisted[0], rows, cfg, max_k=3)
    assert set(table.retriever) == {"dense", "bm25", "hybrid"} and list(table.k.unique()) == [1, 2, 3]
    assert table.set_index(["retriever", "k"]).loc[("bm25", 1), "hit_rate"] == 1.0


def test_hybrid_finds_the_identifier_that_dense_misses(cfg, persisted):
    index, _ = persisted
    k = 3
    ranks = {
        kind: rag.first_relevant_rank(
            rag.ranked_ids(retrieval.make_retriever(index, cfg, kind, top_k=len(TOPICAL) + 1), [QUESTION])[0],
            {"ah14#000"},
        )
        for kind in ("dense", "bm25", "hybrid")
    }
    assert ranks["dense"] > k, ranks
    assert ranks["bm25"] == 1 and ranks["hybrid"] <= k, ranks


def test_qdrant_switch_explains_what_is_missing(monkeypatch, embed_model, tmp_path):
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # as if not installed, even where it is
    qcfg = load_config("cpu-smoke", rag={"vector_store": "qdrant", "vector_store_url": "http://localhost:6333"})
    with pytest.raises(retrieval.VectorStoreUnavailable, match="pip install qdrant-client") as err:
        retrieval.vector_store(qcfg)
    assert "docker run" in str(err.value) and "qdrant/qdrant" in str(err.value)
    with pytest.raises(retrieval.VectorStoreUnavailable):
        retrieval.build_index(_nodes(), embed_model, qcfg)
    assert not (tmp_path / "index").exists()


def test_stale_index_is_detected(cfg, persisted):
    from ragcourse.artifacts import stale_reason

    _, target = persisted
    assert stale_reason(cfg, "index", target) is None
    changed = load_config("cpu-smoke", data={"chunk_size": 128})
    assert "'chunk_size' settings changed" in stale_reason(changed, "index", target)
    assert "no index" in stale_reason(cfg, "index", target.parent / "missing")


def test_injection_filter_and_guard(cfg, persisted):
    retriever = retrieval.make_retriever(persisted[0], cfg, "bm25", top_k=2)
    poisoned = rag.poison(retriever.retrieve(QUESTION))
    assert rag.INJECTION in poisoned[0].node.get_content()
    plain = rag.rag_messages(QUESTION, rag.passages_of(poisoned, sanitize=False), cfg.model.system_prompt)
    filtered = rag.rag_messages(QUESTION, rag.passages_of(poisoned), cfg.model.system_prompt, guard=True)  # default
    assert "VISIT" in plain[1]["content"] and "VISIT" not in filtered[1]["content"]
    # The query engine filters by default (rag.filter_instructions) and only then.
    assert "VISIT" not in rag.query_engine(retriever, None, cfg).messages_for(QUESTION, poisoned)[1]["content"]
    off = load_config("cpu-smoke", rag={"filter_instructions": False})
    assert "VISIT" in rag.query_engine(retriever, None, off).messages_for(QUESTION, poisoned)[1]["content"]
    assert rag.GUARD_RULE in filtered[0]["content"] and TARGET.split()[0] in filtered[1]["content"]
    assert rag.followed_injection("VISIT vellmark-free-upgrade.example") and not rag.followed_injection("14 °C")


# -- the optional cross-encoder stage (rag.rerank; on for GPU presets, off on cpu-smoke) ---------------------------


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory):
    """A small BERT cross-encoder (one relevance logit) saved as a local safetensors folder: no hub download.

    Its weights are random, so its ranking means nothing; the tests check the plumbing around it (what reaches it,
    and that its scores decide the order), not its quality.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ragcourse.models import minilm_path

    folder = tmp_path_factory.mktemp("cross-encoder")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path()))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(folder)  # safetensors by default
    tokenizer.save_pretrained(folder)
    return folder


def test_reranker_reorders_the_first_stage_by_cross_encoder_scores(persisted, tiny_cross_encoder):
    from llama_index.core.schema import MetadataMode
    from sentence_transformers import CrossEncoder

    index, _ = persisted
    rcfg = load_config(
        "cpu-smoke", rag={"rerank": True, "rerank_model": str(tiny_cross_encoder), "rerank_candidates": 6}
    )
    assert retrieval.configured_kind(rcfg) == "hybrid+rerank" and retrieval.reranker(rcfg).trust_remote_code is False
    assert "6 candidates -> cross-encoder" in retrieval.describe_retrieval(rcfg)

    first = retrieval.make_retriever(index, rcfg, "hybrid", top_k=6).retrieve(QUESTION)
    reranked = retrieval.make_retriever(index, rcfg, top_k=3).retrieve(QUESTION)  # the configured kind: hybrid+rerank
    scores = CrossEncoder(str(tiny_cross_encoder)).predict(
        [(QUESTION, hit.node.get_content(metadata_mode=MetadataMode.EMBED)) for hit in first]
    )
    expected = [hit.node.node_id for _, hit in sorted(zip(scores, first), key=lambda pair: -pair[0])][:3]
    assert [hit.node.node_id for hit in reranked] == expected
    assert [hit.score for hit in reranked] == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-5)

    table = rag.retrieval_quality(index, [{"question": QUESTION, "oracle_ids": ["ah14#000"]}], rcfg, max_k=3)
    assert set(table.retriever) == {"dense", "bm25", "hybrid", "hybrid+rerank"}


def test_rerank_settings_are_checked_and_change_the_dataset():
    from ragcourse.artifacts import fingerprint
    from ragcourse.config import ConfigError

    with pytest.raises(ConfigError, match="rag.rerank_model"):
        load_config("cpu-smoke", rag={"rerank": True})
    with pytest.raises(ConfigError, match="rerank_candidates"):
        load_config("cpu-smoke", rag={"rerank": True, "rerank_model": "owner/x", "rerank_candidates": 2})
    with pytest.raises(ValueError, match="dense, bm25 or hybrid"):
        retrieval.make_retriever(None, load_config("cpu-smoke"), "hybrid+colbert")
    assert load_config("colab-t4").rag.rerank and "rag.rerank is off" in retrieval.describe_retrieval(
        load_config("cpu-smoke")
    )

    # The distractors of notebook 01 are ranked by the serving retriever, so turning the reranker on rebuilds the data;
    # a reranker model that is switched off does not.
    def settings(**rag_):
        return fingerprint(load_config("cpu-smoke", rag=rag_), "dataset")["settings"]

    assert settings() != settings(rerank=True, rerank_model="owner/m")
    assert settings() == settings(rerank_model="owner/m")


# -- BM25 tokens that keep identifiers (issue 33) ---------------------------------------------------------------


def test_lexical_tokens_keep_identifiers_whole_and_as_their_words():
    tokens = retrieval.lexical_tokens(
        "Call get_config() and Trainer.train(resume_from_checkpoint=True) with --resume, "
        "dtype='bf16', getConfig, ECN-12 and `pip install -U peft`."
    )
    for whole in (
        "get_config",
        "trainer.train",
        "resume_from_checkpoint=true",
        "resume_from_checkpoint",
        "--resume",
        "dtype=bf16",
        "dtype",
        "getconfig",
        "ecn-12",
        "pip install -u peft",
    ):
        assert whole in tokens, whole
    for part in ("get", "config", "trainer", "train", "resum", "checkpoint", "bf16", "ecn", "12", "peft"):
        assert part in tokens, part  # the parts are stemmed like any word: --resume also matches "resume"
    assert retrieval.lexical_tokens("transformers.Trainer.train")[:2] == ["transformers.trainer.train", "trainer.train"]


def test_lexical_tokens_of_plain_english_are_llamaindex_defaults():
    """Without identifiers, the tokens are those of LlamaIndex's default BM25: stop words out, English stems."""
    import bm25s
    import Stemmer

    text = "The engines were running quickly, and the technicians stopped them at the valves of the circuit."
    default = bm25s.tokenize(
        [text], stopwords="english", stemmer=Stemmer.Stemmer("english"), return_ids=False, show_progress=False
    )[0]
    assert retrieval.lexical_tokens(text) == default
    assert "the" not in default and "engin" in default and "run" in default


def test_an_identifier_query_finds_its_passage_in_either_spelling():
    from llama_index.core.schema import TextNode

    texts = [
        "Call get_config() once at start-up; it reads chunk_size and the --resume flag from the YAML file.",
        "The configuration file is read when the course starts, and every setting has a default.",
        "Chunks are cut from each document with an overlap, so that a sentence is never lost at a boundary.",
        "Training resumes from the last checkpoint when you pass the resume option to the trainer.",
    ]
    nodes = [TextNode(text=t, id_=f"doc#{i}") for i, t in enumerate(texts)]
    ours, default = (retrieval.bm25_retriever(nodes, 4, tok) for tok in ("identifiers", "english"))
    for query in ("get_config()", "get config", "chunk size", "chunk_size", "--resume flag"):
        assert ours.retrieve(query)[0].node.node_id == "doc#0", query
    # LlamaIndex's default tokens never meet "get_config" or "chunk_size" in a query written as words.
    assert "doc#0" not in [h.node.node_id for h in default.retrieve("get config chunk size") if h.score > 0]
    assert ours.retrieve("zzz qqq") == []  # no query word in the index: nothing to rank


def test_the_bm25_tokenizer_is_a_config_key_and_a_dataset_input(cfg, persisted):
    from ragcourse import artifacts

    identifiers = load_config("cpu-smoke", rag={"bm25_tokenizer": "identifiers"})
    assert cfg.rag.bm25_tokenizer == "english"
    hits = [retrieval.make_retriever(persisted[0], c, "bm25", top_k=2).retrieve(QUESTION) for c in (cfg, identifiers)]
    assert all(h[0].node.node_id == "ah14#000" for h in hits)
    # The distractors of a dataset are ranked with BM25 too: a dataset built with other tokens is stale.
    assert (
        artifacts.fingerprint(cfg, "dataset")["settings"]["distractors"]
        != artifacts.fingerprint(identifiers, "dataset")["settings"]["distractors"]
    )
    with pytest.raises(Exception, match="bm25_tokenizer"):
        load_config("cpu-smoke", rag={"bm25_tokenizer": "porter"})
