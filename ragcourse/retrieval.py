"""Retrieval: the local embedding model, the vector index, BM25 and their fusion (notebooks 01 and 05).

The same retriever picks the RAFT distractors in notebook 01 and the passages at question time in
notebook 05, so the model is trained on the kind of context it will be given.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Sequence

from .config import CourseConfig
from .models import resolve_model

if TYPE_CHECKING:  # pragma: no cover
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import BaseNode, NodeWithScore

RRF_K = 60  # the constant of reciprocal rank fusion (Cormack et al., 2009)


def embedding_model(cfg: CourseConfig):
    """LlamaIndex's HuggingFaceEmbedding on the preset's local sentence-embedding model."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    return HuggingFaceEmbedding(
        model_name=resolve_model(cfg.embedding.name, cfg),
        embed_batch_size=cfg.embedding.batch_size,
        trust_remote_code=False,
        device="cpu" if not _cuda() else None,
    )


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def configure_llamaindex(cfg: CourseConfig, llm: Any | None = None, embed_model: Any | None = None) -> None:
    """Set LlamaIndex's global embedding model and LLM explicitly, so it never falls back to OpenAI.

    Without an LLM, a ``MockLLM`` stands in (retrieval-only work never needs one).
    """
    from llama_index.core import Settings
    from llama_index.core.llms import MockLLM

    Settings.embed_model = embed_model or embedding_model(cfg)
    Settings.llm = llm or MockLLM()


def build_index(nodes: Sequence["BaseNode"], embed_model: Any, show_progress: bool = False) -> "VectorStoreIndex":
    """An in-memory vector index over ``nodes`` (persist it with ``index.storage_context.persist``)."""
    from llama_index.core import VectorStoreIndex

    return VectorStoreIndex(list(nodes), embed_model=embed_model, show_progress=show_progress)


def rrf_fuse(rankings: Sequence[Sequence["NodeWithScore"]], weights: Sequence[float], top_k: int) -> list["NodeWithScore"]:
    """Weighted reciprocal rank fusion: ``score = Σ w_i / (60 + rank_i)``; scores are rank-based, not raw."""
    from llama_index.core.schema import NodeWithScore

    scores: dict[str, float] = {}
    nodes: dict[str, Any] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, hit in enumerate(ranking, 1):
            nid = hit.node.node_id
            scores[nid] = scores.get(nid, 0.0) + weight / (RRF_K + rank)
            nodes[nid] = hit.node
    best = sorted(scores, key=scores.__getitem__, reverse=True)[:top_k]
    return [NodeWithScore(node=nodes[n], score=scores[n]) for n in best]


def make_retriever(
    index: "VectorStoreIndex",
    kind: str = "hybrid",
    top_k: int = 4,
    dense_weight: float = 0.5,
    candidates: int = 20,
    reranker: Any = None,
):
    """A LlamaIndex retriever: ``dense`` (embeddings), ``bm25`` (exact terms) or ``hybrid`` (RRF of both).

    With a ``reranker`` (:func:`cross_encoder_reranker`), the first stage returns ``candidates`` chunks and the
    cross-encoder re-scores them against the question; the best ``top_k`` are kept.
    """
    from llama_index.core.retrievers import BaseRetriever

    if reranker is not None:
        first = make_retriever(index, kind, top_k=max(candidates, top_k), dense_weight=dense_weight, candidates=candidates)

        class RerankedRetriever(BaseRetriever):
            """First-stage retrieval, then a cross-encoder re-scores every (question, chunk) pair."""

            def _retrieve(self, query_bundle):
                return reranker.postprocess_nodes(first.retrieve(query_bundle), query_bundle=query_bundle)[:top_k]

        return RerankedRetriever()

    nodes = list(index.docstore.docs.values())

    def bm25(k: int):
        from llama_index.retrievers.bm25 import BM25Retriever

        return BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=min(k, len(nodes)), language="english")

    if kind == "dense":
        return index.as_retriever(similarity_top_k=top_k)
    if kind == "bm25":
        return bm25(top_k)
    if kind != "hybrid":
        raise ValueError(f"retriever kind must be dense, bm25 or hybrid, got {kind!r}")

    dense_r = index.as_retriever(similarity_top_k=candidates)
    lexical_r = bm25(candidates)

    class HybridRetriever(BaseRetriever):
        """Dense + BM25, fused by weighted reciprocal rank."""

        def _retrieve(self, query_bundle):
            return rrf_fuse([dense_r.retrieve(query_bundle), lexical_r.retrieve(query_bundle)],
                            [dense_weight, 1.0 - dense_weight], top_k)

    return HybridRetriever()


@functools.lru_cache(maxsize=4)
def cross_encoder_reranker(model: str, device: str | None = None):
    """LlamaIndex's ``SentenceTransformerRerank`` on a cross-encoder (a local folder or a hub id), loaded once.

    It returns every node it is given, best first (``top_n`` is left unbounded; :func:`make_retriever` keeps the
    top k). Pairs are cut at 512 tokens. ``trust_remote_code`` is off: LlamaIndex's own default is on.
    """
    from llama_index.core.postprocessor import SentenceTransformerRerank

    return SentenceTransformerRerank(model=model, top_n=10**9, device=device or ("cuda" if _cuda() else "cpu"),
                                     trust_remote_code=False)


def retrieval_metrics(ranked_ids: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int]) -> dict[str, dict[int, float]]:
    """Hit rate and MRR at each k: a question counts as a hit when any relevant id is in its top k."""
    hit = {k: 0.0 for k in ks}
    mrr = {k: 0.0 for k in ks}
    n = max(len(ranked_ids), 1)
    for ranked, rel in zip(ranked_ids, relevant):
        first = next((i for i, r in enumerate(ranked, 1) if r in rel), None)
        for k in ks:
            if first is not None and first <= k:
                hit[k] += 1 / n
                mrr[k] += 1 / first / n
    return {"hit_rate": hit, "mrr": mrr}
