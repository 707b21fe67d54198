"""Retrieval: the local embedding model, the vector index, BM25, their fusion and the reranker (notebooks 01 and 05).

The same retriever picks the RAFT distractors in notebook 01 and the passages at question time in
notebook 05, so the model is trained on the kind of context it will be given. The index holds **the same chunks**
the dataset was built from (``data.corpus_chunks``), so the passages at question time look like those of training.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import re
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .config import CourseConfig
from .errors import CourseError
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


QDRANT_COLLECTION = "ragcourse"
QDRANT_HELP = (
    "rag.vector_store: qdrant needs the Qdrant client and LlamaIndex's Qdrant integration:\n"
    "    pip install qdrant-client llama-index-vector-stores-qdrant   (or: pip install 'ragcourse[qdrant]')\n"
    "then either a local folder, which needs no server (Qdrant's embedded mode, one process at a time):\n"
    "    rag.vector_store_url: outputs/qdrant\n"
    "or a running Qdrant server, for example with Docker:\n"
    '    docker run -d -p 6333:6333 -v "$PWD/qdrant_storage:/qdrant/storage" qdrant/qdrant\n'
    "and rag.vector_store_url: http://localhost:6333 (or use rag.vector_store: simple, which needs neither)."
)
POSTGRES_TABLE = "ragcourse"
POSTGRES_HELP = (
    "rag.vector_store: postgres needs LlamaIndex's PostgreSQL integration (pgvector), "
    "and pgserver for a local folder:\n"
    "    pip install llama-index-vector-stores-postgres pgserver   (or: pip install 'ragcourse[postgres]')\n"
    "then either a local folder, where pgserver runs a private PostgreSQL with pgvector "
    "(Unix socket only, no TCP port):\n"
    "    rag.vector_store_url: outputs/pgvector\n"
    "or a PostgreSQL server with the pgvector extension, for example with Docker:\n"
    "    docker run -d -p 5432:5432 -e POSTGRES_PASSWORD=rag pgvector/pgvector:pg17\n"
    "and rag.vector_store_url: postgresql://postgres@localhost:5432/postgres with the password in PGPASSWORD, not in\n"
    "the URL (the URL is saved in the index manifest). Or use rag.vector_store: simple, which needs neither."
)
# Where each store looks when rag.vector_store_url is unset: a server on this machine, at the store's usual port.
DEFAULT_URLS = {"qdrant": "http://localhost:6333", "postgres": "postgresql://postgres@localhost:5432/postgres"}
SERVER_SCHEMES = ("http://", "https://", "postgresql://", "postgres://")


class VectorStoreUnavailable(CourseError, RuntimeError):
    """The configured vector store cannot be used; the message says what to install or start."""


# -- 1. the index: same chunks as the dataset, persisted and reloaded ------------------------------------------


def is_server_url(location: str) -> bool:
    """``rag.vector_store_url``: a server when it is a URL (http(s):// for Qdrant, postgresql:// for PostgreSQL), else
    a local folder (Qdrant's embedded mode, or a PostgreSQL that pgserver starts in that folder)."""
    return location.startswith(SERVER_SCHEMES)


def shown_location(location: str) -> str:
    """A location fit for messages: a URL's password becomes ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@]+@", r"\1***@", location)


def store_location(cfg: CourseConfig) -> str:
    """Where the configured store's vectors live: the server URL, or a local folder (relative to the project)."""
    from .config import resolve_path

    location = cfg.rag.vector_store_url or DEFAULT_URLS[cfg.rag.vector_store]
    return location if is_server_url(location) else str(resolve_path(location))


@functools.lru_cache(maxsize=None)
def open_qdrant(location: str) -> Any:
    """One ``QdrantClient`` per location in this process: ``url=`` for a server, ``path=`` for the embedded on-disk
    mode (same API, no server). An embedded folder is locked by the client that opened it, so it is opened once; it
    commits every point in its own SQLite transaction whatever the batch size (insert rates: benchmarks/results/
    retrieval_speed.md) and keeps every vector in memory, so it suits the sample corpus and tests, and a server
    suits 100k+ chunks."""
    try:
        import qdrant_client as qc
        from llama_index.vector_stores.qdrant import QdrantVectorStore  # noqa: F401  (fail here, not at first use)
    except ImportError as exc:
        raise VectorStoreUnavailable(f"{QDRANT_HELP}\n(import failed: {exc})") from None
    if not is_server_url(location):
        try:
            client = qc.QdrantClient(path=location)
            atexit.register(client.close)  # release the folder's lock before the interpreter tears modules down
            return client
        except RuntimeError as exc:  # "Storage folder ... is already accessed by another instance of Qdrant client"
            raise VectorStoreUnavailable(
                f"The embedded Qdrant folder {location} is open in another process ({exc}); "
                "close that process, or use a Qdrant server URL for shared access."
            ) from None
    client = qc.QdrantClient(url=location)
    try:
        client.get_collections()
    except Exception as exc:  # the client raises several transport errors; all mean "no server there"
        raise VectorStoreUnavailable(f"No Qdrant server answers at {location} ({exc}).\n{QDRANT_HELP}") from None
    return client


def qdrant_point_id(node_id: str) -> str:
    """Qdrant takes only UUIDs or integers as point ids: a chunk id (``fsr-7.md#003``) becomes a stable UUID. The chunk
    id itself travels in the point's payload, so retrieved nodes keep the ids the dataset and the docstore use."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"ragcourse-chunk:{node_id}"))


@functools.lru_cache(maxsize=None)
def _qdrant_store_class() -> type:
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    def point_ids(node_ids: Sequence[str] | None) -> list[str] | None:
        return None if node_ids is None else [qdrant_point_id(n) for n in node_ids]

    class CourseQdrantStore(QdrantVectorStore):
        """LlamaIndex's Qdrant store with the course's chunk ids mapped to UUID point ids (:func:`qdrant_point_id`),
        wherever ids go to Qdrant: writing points, the retriever's "only this index's nodes" filter, get and delete."""

        def _build_points(self, nodes: Any, sparse_vector_name: str) -> tuple[list[Any], list[str]]:
            points, ids = super()._build_points(nodes, sparse_vector_name)
            for point in points:
                point.id = qdrant_point_id(str(point.id))
            return points, ids

        def _build_query_filter(self, query: Any) -> Any:
            return super()._build_query_filter(dataclasses.replace(query, node_ids=point_ids(query.node_ids)))

        def get_nodes(self, node_ids: list[str] | None = None, **kwargs: Any) -> Any:
            return super().get_nodes(node_ids=point_ids(node_ids), **kwargs)

        async def aget_nodes(self, node_ids: list[str] | None = None, **kwargs: Any) -> Any:
            return await super().aget_nodes(node_ids=point_ids(node_ids), **kwargs)

        def delete_nodes(self, node_ids: list[str] | None = None, **kwargs: Any) -> None:
            return super().delete_nodes(node_ids=point_ids(node_ids), **kwargs)

        async def adelete_nodes(self, node_ids: list[str] | None = None, **kwargs: Any) -> None:
            return await super().adelete_nodes(node_ids=point_ids(node_ids), **kwargs)

    return CourseQdrantStore


def postgres_table(cfg: CourseConfig) -> str:
    """The preset's table name as LlamaIndex's PGVectorStore takes it (it stores the vectors in ``data_<name>``)."""
    return re.sub(r"[^a-z0-9_]", "_", f"{POSTGRES_TABLE}_{cfg.preset}".lower())


def _pgserver() -> Any:
    import warnings

    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset (containers), harmlessly
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import pgserver
    except ImportError as exc:
        raise VectorStoreUnavailable(f"{POSTGRES_HELP}\n(import failed: {exc})") from None
    return pgserver


def pgserver_url(folder: str) -> str:
    """Start, or join, the PostgreSQL + pgvector server that pgserver runs on the data folder ``folder``, and return its
    ``postgresql://`` URL: a Unix socket, the server listens on no TCP port. pgserver stops the server when the last
    process using it exits (or calls :func:`close_postgres`). As root (Colab, Docker) pgserver runs it as a system user
    ``pgserver`` that it creates, since PostgreSQL refuses to run as root."""
    pgserver = _pgserver()
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    try:
        return pgserver.get_server(folder, cleanup_mode="stop").get_uri()
    except (OSError, subprocess.SubprocessError) as exc:
        raise VectorStoreUnavailable(
            f"pgserver could not start PostgreSQL in {folder} ({exc}); its log is {Path(folder) / 'log'}."
        ) from None


_POSTGRES_ENGINES: dict[str, tuple[Any, Any]] = {}  # location -> (engine, async engine), see open_postgres


def open_postgres(location: str) -> tuple[Any, Any]:
    """One pair of SQLAlchemy engines (psycopg2 and asyncpg, as LlamaIndex's PGVectorStore uses them) per location in
    this process: a ``postgresql://`` server URL, or a folder where :func:`pgserver_url` runs the server. pgvector is
    enabled here. :func:`close_postgres` lets go of them."""
    if location in _POSTGRES_ENGINES:
        return _POSTGRES_ENGINES[location]
    try:
        import sqlalchemy
        from llama_index.vector_stores.postgres import PGVectorStore  # noqa: F401  (fail here, not at first use)
        from sqlalchemy.ext.asyncio import create_async_engine
    except ImportError as exc:
        raise VectorStoreUnavailable(f"{POSTGRES_HELP}\n(import failed: {exc})") from None
    url = sqlalchemy.make_url(location if is_server_url(location) else pgserver_url(location))
    engine = sqlalchemy.create_engine(url.set(drivername="postgresql+psycopg2"))
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text("CREATE EXTENSION IF NOT EXISTS vector"))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        engine.dispose()
        raise VectorStoreUnavailable(
            f"No PostgreSQL with pgvector answers at {shown_location(location)} "
            f"({str(getattr(exc, 'orig', None) or exc).strip()}).\n{POSTGRES_HELP}"
        ) from None
    atexit.register(engine.dispose)  # close the connections before pgserver's own exit handler stops the server
    _POSTGRES_ENGINES[location] = engine, create_async_engine(url.set(drivername="postgresql+asyncpg"))
    return _POSTGRES_ENGINES[location]


def close_postgres(location: str) -> None:
    """Close this process's connections to ``location``; for a folder, also let go of its server, which pgserver stops
    when no other process uses it (as it does at exit). The next :func:`open_postgres` starts it again."""
    engine, _ = _POSTGRES_ENGINES.pop(location, (None, None))
    if engine is not None:
        engine.dispose()
    if not is_server_url(location) and (Path(location) / "postmaster.pid").exists():
        _pgserver().get_server(location).cleanup()


def postgres_vectors(engine: Any, table: str) -> tuple[int, int | None]:
    """How many vectors the table ``data_<table>`` holds, and their dimension (0 and None when it does not exist)."""
    import sqlalchemy

    with engine.connect() as conn:
        dim = conn.execute(
            sqlalchemy.text(
                "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(:t) AND attname = 'embedding'"
            ),
            {"t": f"public.data_{table}"},
        ).scalar()
        count = conn.execute(sqlalchemy.text(f"SELECT count(*) FROM public.data_{table}")).scalar() if dim else 0
    return count, dim


def _postgres_store(cfg: CourseConfig, fresh: bool, embed_dim: int | None) -> Any:
    engine, async_engine = open_postgres(store_location(cfg))  # first: it says what is missing
    import sqlalchemy
    from llama_index.vector_stores.postgres import PGVectorStore

    table = postgres_table(cfg)
    if fresh:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP TABLE IF EXISTS public.data_{table}"))
    _, stored_dim = postgres_vectors(engine, table)
    if stored_dim and embed_dim and stored_dim != embed_dim:
        raise VectorStoreUnavailable(
            f"The PostgreSQL table data_{table} holds {stored_dim}-dimensional vectors, the embedding model makes "
            f"{embed_dim}; rebuild it: ragcourse index --rebuild --preset {cfg.preset}."
        )
    if not (embed_dim or stored_dim):
        raise VectorStoreUnavailable(
            f"The PostgreSQL table data_{table} does not exist yet; build the index: "
            f"ragcourse index --rebuild --preset {cfg.preset}."
        )
    # Exact search (no HNSW index): the same top-k as the default store. initialization_fail_on_error: LlamaIndex
    # would otherwise log a failed CREATE TABLE as a warning and fail later, further from the cause.
    return PGVectorStore(
        engine=engine,
        async_engine=async_engine,
        table_name=table,
        embed_dim=embed_dim or stored_dim,
        initialization_fail_on_error=True,
    )


def embedding_dim(embed_model: Any, nodes: Sequence["BaseNode"] = ()) -> int:
    """The vectors' dimension: from a node that carries its embedding, else by embedding one short text."""
    known = next((n.embedding for n in nodes if n.embedding is not None), None)
    return len(known if known is not None else embed_model.get_text_embedding("dimension"))


def vector_store(cfg: CourseConfig, fresh: bool = False, embed_dim: int | None = None) -> Any:
    """``None`` for the default in-memory store (``rag.vector_store: simple``), else a Qdrant or PostgreSQL + pgvector
    store (notebook 05, section 1).

    ``rag.vector_store_url`` is a server URL or a local folder (Qdrant's embedded mode; for postgres, a server that
    pgserver starts there). ``fresh`` drops the collection or table first, so a rebuilt index never keeps the vectors
    of the last one. ``embed_dim`` sizes a new PostgreSQL table. Each store's client is imported only here.
    """
    if cfg.rag.vector_store == "simple":
        return None
    if cfg.rag.vector_store == "postgres":
        return _postgres_store(cfg, fresh, embed_dim)
    if cfg.rag.vector_store != "qdrant":
        raise VectorStoreUnavailable(
            f"rag.vector_store must be simple, qdrant or postgres, got {cfg.rag.vector_store!r}."
        )
    client = open_qdrant(store_location(cfg))
    name = f"{QDRANT_COLLECTION}-{cfg.preset}"
    if fresh and client.collection_exists(name):
        client.delete_collection(name)
    return _qdrant_store_class()(client=client, collection_name=name)


def stored_vectors(cfg: CourseConfig, store: Any) -> int:
    """How many vectors the configured store holds for this preset (0 when its collection or table is gone)."""
    if cfg.rag.vector_store == "postgres":
        return postgres_vectors(open_postgres(store_location(cfg))[0], postgres_table(cfg))[0]
    return (
        store.client.count(store.collection_name).count if store.client.collection_exists(store.collection_name) else 0
    )


def build_index(
    nodes: Sequence["BaseNode"], embed_model: Any, cfg: CourseConfig | None = None, show_progress: bool = False
) -> "VectorStoreIndex":
    """A vector index over ``nodes`` (in memory, or in the vector store ``cfg`` names); :func:`save_index` persists it.

    The chunk texts stay in the docstore whatever the store, because BM25 needs them.
    """
    from llama_index.core import StorageContext, VectorStoreIndex

    dim = embedding_dim(embed_model, nodes) if cfg is not None and cfg.rag.vector_store == "postgres" else None
    store = vector_store(cfg, fresh=True, embed_dim=dim) if cfg is not None else None
    storage = StorageContext.from_defaults(vector_store=store) if store is not None else None
    return VectorStoreIndex(
        list(nodes),
        embed_model=embed_model,
        storage_context=storage,
        store_nodes_override=True,
        show_progress=show_progress,
    )


def stored_nodes(index: "VectorStoreIndex") -> list["BaseNode"]:
    """The index's chunks with the vectors its store holds (notebook 05, section 1): to fill another vector store
    with the very same index, without embedding every chunk again."""
    store = index.vector_store
    out = []
    for node in index.docstore.docs.values():
        copy = node.model_copy()
        copy.embedding = store.get(node.node_id)
        out.append(copy)
    return out


def save_index(index: "VectorStoreIndex", cfg: CourseConfig, target: Path | None = None) -> Path:
    """Persist ``index`` to ``outputs/<preset>/index``, atomically, with its manifest (notebook 05, section 1)."""
    from .artifacts import atomic_dir, write_manifest

    target = Path(target or cfg.artifact_dir("index"))
    with atomic_dir(target) as tmp:
        index.storage_context.persist(persist_dir=str(tmp))
        write_manifest(tmp, cfg, "index", chunks=len(index.docstore.docs))
    return target


def load_index(cfg: CourseConfig, embed_model: Any = None, path: Path | None = None) -> "VectorStoreIndex":
    """Reload a persisted index (``StorageContext.from_defaults(persist_dir=...)`` + ``load_index_from_storage``)."""
    from llama_index.core import StorageContext, load_index_from_storage

    path = Path(path or cfg.artifact_dir("index"))
    embed_model = embed_model or embedding_model(cfg)
    store = vector_store(cfg, embed_dim=embedding_dim(embed_model) if cfg.rag.vector_store == "postgres" else None)
    kwargs = {"vector_store": store} if store is not None else {}
    storage = StorageContext.from_defaults(persist_dir=str(path), **kwargs)
    index = load_index_from_storage(storage, embed_model=embed_model)
    if store is not None:
        stored = stored_vectors(cfg, store)
        if stored != len(index.docstore.docs):
            where = (
                f"Qdrant collection {store.collection_name}"
                if cfg.rag.vector_store == "qdrant"
                else f"PostgreSQL table data_{postgres_table(cfg)}"
            )
            raise VectorStoreUnavailable(
                f"The {where} at {shown_location(store_location(cfg))} holds {stored} vectors, the index at {path} "
                f"{len(index.docstore.docs)} chunks; rebuild it: ragcourse index --rebuild --preset {cfg.preset}."
            )
    return index


def data_prep_shares_index(cfg: CourseConfig) -> bool:
    """Whether data prep ranks its distractors with the persisted index (so the corpus is embedded once for the dataset
    and notebook 05): only with the in-memory store; a vector database is left to notebook 05 and ``data.prepare``
    ranks with an in-memory index of its own."""
    return cfg.rag.vector_store == "simple"


def configured_kind(cfg: CourseConfig) -> str:
    """The configured retriever's name: ``rag.retriever``, plus ``+rerank`` when the cross-encoder stage is on."""
    return cfg.rag.retriever + ("+rerank" if cfg.rag.rerank else "")


def cross_encoder(cfg: CourseConfig):
    """The cross-encoder named by ``rag.rerank_model`` (hub id or local folder) as a LlamaIndex postprocessor."""
    if not cfg.rag.rerank_model:
        raise ValueError(
            "Reranking needs rag.rerank_model: a cross-encoder hub id (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2) "
            "or a local folder saved by sentence-transformers."
        )
    return cross_encoder_reranker(resolve_model(cfg.rag.rerank_model, cfg))


def reranker(cfg: CourseConfig):
    """The configured second stage: :func:`cross_encoder`, or None when ``rag.rerank`` is off (cpu-smoke)."""
    return cross_encoder(cfg) if cfg.rag.rerank else None


def describe_retrieval(cfg: CourseConfig) -> str:
    """One line: what happens between a question and the passages the model reads."""
    first = {
        "dense": f"dense ({cfg.embedding.name})",
        "bm25": "BM25",
        "hybrid": f"hybrid RRF (dense weight {cfg.rag.dense_weight:g}, BM25 {1 - cfg.rag.dense_weight:g})",
    }[cfg.rag.retriever]
    if not cfg.rag.rerank:
        return f"{first} -> top {cfg.rag.similarity_top_k} passages (rag.rerank is off)"
    return (
        f"{first} -> {cfg.rag.rerank_candidates} candidates -> cross-encoder {cfg.rag.rerank_model} "
        f"-> top {cfg.rag.similarity_top_k} passages"
    )


def rrf_fuse(
    rankings: Sequence[Sequence["NodeWithScore"]], weights: Sequence[float], top_k: int
) -> list["NodeWithScore"]:
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
    cfg: CourseConfig,
    kind: str | None = None,
    top_k: int | None = None,
    dense_weight: float | None = None,
    candidates: int | None = None,
):
    """A LlamaIndex retriever with the config's defaults (``rag.retriever``, ``similarity_top_k``, ``dense_weight``).

    ``kind`` is ``dense`` (embeddings), ``bm25`` (exact terms) or ``hybrid`` (RRF of both), optionally with
    ``+rerank``: the first stage returns ``rag.rerank_candidates`` chunks and the cross-encoder re-scores them
    against the question; the best ``top_k`` are kept. None is the configured retriever (:func:`configured_kind`).
    """
    from llama_index.core.retrievers import BaseRetriever

    first_kind, _, stage = (kind or configured_kind(cfg)).partition("+")
    if stage not in ("", "rerank") or first_kind not in ("dense", "bm25", "hybrid"):
        raise ValueError(f"retriever kind must be dense, bm25 or hybrid, optionally with +rerank; got {kind!r}")
    top_k = top_k or cfg.rag.similarity_top_k
    dense_weight = cfg.rag.dense_weight if dense_weight is None else dense_weight
    if stage:
        pool = max(candidates or cfg.rag.rerank_candidates, top_k)
        first = make_retriever(index, cfg, first_kind, top_k=pool, dense_weight=dense_weight, candidates=pool)
        rerank = cross_encoder(cfg)

        class RerankedRetriever(BaseRetriever):
            """First-stage retrieval, then a cross-encoder re-scores every (question, chunk) pair."""

            def _retrieve(self, query_bundle):
                return rerank.postprocess_nodes(first.retrieve(query_bundle), query_bundle=query_bundle)[:top_k]

        return RerankedRetriever()

    nodes = list(index.docstore.docs.values())

    def bm25(k: int):
        return bm25_retriever(nodes, min(k, len(nodes)), cfg.rag.bm25_tokenizer)

    if first_kind == "dense":
        return dense_retriever(index, top_k)
    if first_kind == "bm25":
        return bm25(top_k)
    pool = max(candidates or 20, top_k)
    dense_r = dense_retriever(index, pool)
    lexical_r = bm25(pool)

    class HybridRetriever(BaseRetriever):
        """Dense + BM25, fused by weighted reciprocal rank."""

        def _retrieve(self, query_bundle):
            return rrf_fuse(
                [dense_r.retrieve(query_bundle), lexical_r.retrieve(query_bundle)],
                [dense_weight, 1.0 - dense_weight],
                top_k,
            )

    return HybridRetriever()


# -- the lexical side: BM25 over tokens that keep identifiers (notebook 05, section 4) -----------------------------

BM25_TOKENIZERS = ("identifiers", "english")  # rag.bm25_tokenizer: the course's tokenizer, or LlamaIndex's default
# Whitespace and the characters that never belong to an identifier split a text into pieces; quotes and backticks are
# dropped inside a piece, so `dtype='bf16'` and dtype=bf16 are one piece.
_PIECE_BREAK = re.compile(r"[\s()\[\]{}<>,;|!?*]+")
_QUOTES = re.compile(r"[\"'`\u2018\u2019\u201c\u201d]")
_CODE_SPAN = re.compile(r"`([^`\n]{1,80})`")
# A piece is an identifier when it has an underscore, a hump (getConfig, BM25Retriever), a leading - or -- (a flag), or
# punctuation between two word characters (Module.method, a/b, ECN-12, key=value, pkg::name).
_IDENTIFIER = re.compile(r"_|[a-z0-9][A-Z]|[A-Z]{2}[a-z]|^--?[A-Za-z]|\w[.:/=+-]+\w")
_HUMPS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_WORD = re.compile(r"[^\W_]{2,}")  # bm25s's default \w\w+, less the underscore (snake_case splits into its words)


@functools.lru_cache(maxsize=1)
def _english() -> tuple[Any, frozenset[str]]:
    """PyStemmer's English stemmer and bm25s's English stop words: what LlamaIndex's BM25Retriever uses by default."""
    import Stemmer
    from bm25s.stopwords import STOPWORDS_EN

    return Stemmer.Stemmer("english"), frozenset(STOPWORDS_EN)


@functools.lru_cache(maxsize=2**16)
def _stem(word: str) -> str | None:
    stemmer, stopwords = _english()
    return None if word in stopwords else stemmer.stemWord(word)


def _english_tokens(text: str) -> list[str]:
    """Plain English: lower-cased words of 2+ letters or digits, stop words dropped, stemmed."""
    return [t for t in (_stem(w) for w in _WORD.findall(text.lower())) if t]


def _identifier_tokens(piece: str) -> list[str]:
    """One identifier whole (lower-cased, ``()`` and edge dots dropped), its dotted tails (``Trainer.train`` in
    ``transformers.Trainer.train``), each side of a ``key=value``, then its parts as plain words."""
    whole = piece.lower()
    out = [whole]
    if "=" in piece.strip("="):
        for side in piece.split("="):
            out += _piece_tokens(side)
        return out
    if "." in piece:
        dotted = whole.split(".")
        out += [".".join(dotted[i:]) for i in range(1, len(dotted) - 1)]
    parts = " ".join(_HUMPS.findall(piece))
    return out + _english_tokens(parts)


def _piece_tokens(piece: str) -> list[str]:
    piece = piece.strip(".:=+/").removesuffix("()")
    if not piece:
        return []
    if _IDENTIFIER.search(piece) and _WORD.search(piece):
        return _identifier_tokens(piece)
    return _english_tokens(piece)


def lexical_tokens(text: str) -> list[str]:
    """BM25's tokens for a chunk or a query (the same function for both), keeping identifiers (notebook 05, section 4).

    Plain words are lower-cased, stripped of English stop words and stemmed, as LlamaIndex's default BM25 does. A
    dotted name (``Module.method``), ``snake_case``, ``camelCase``, a ``--flag``, ``Name()``, ``key=value`` or
    ``ECN-12`` gives its whole form *and* its parts, so ``get_config()`` matches "get config" and ``get_config`` both,
    and ``chunk_size`` is no longer one opaque token that "chunk size" never reaches. A multi-word code span adds its
    whole text as one more token.
    """
    out = [" ".join(span.lower().split()) for span in _CODE_SPAN.findall(text) if _PIECE_BREAK.search(span.strip())]
    for piece in _PIECE_BREAK.split(_QUOTES.sub("", text)):
        out += _piece_tokens(piece)
    return out


def bm25_retriever(nodes: Sequence["BaseNode"], top_k: int, tokenizer: str = "identifiers"):
    """LlamaIndex's ``BM25Retriever`` over ``nodes``: its default English tokenization (``tokenizer="english"``), or
    over :func:`lexical_tokens`, the course's default, for the chunks and every query alike.

    The BM25 statistics are not persisted: they are rebuilt from the index's docstore each time a retriever is made,
    so a reloaded index always meets the tokenizer of the code that loads it.
    """
    from llama_index.retrievers.bm25 import BM25Retriever

    if tokenizer == "english":
        return BM25Retriever.from_defaults(nodes=list(nodes), similarity_top_k=top_k, language="english")
    if tokenizer != "identifiers":
        raise ValueError(f"rag.bm25_tokenizer must be one of {', '.join(BM25_TOKENIZERS)}; got {tokenizer!r}")
    return _identifier_bm25_class().build(nodes, top_k)


@functools.lru_cache(maxsize=1)
def _identifier_bm25_class() -> type:
    import bm25s
    from llama_index.core.schema import MetadataMode, NodeWithScore
    from llama_index.retrievers.bm25 import BM25Retriever

    class IdentifierBM25Retriever(BM25Retriever):
        """``BM25Retriever`` on a ``bm25s.BM25`` indexed with :func:`lexical_tokens`; queries take the same tokens."""

        @classmethod
        def build(cls, nodes: Sequence["BaseNode"], top_k: int) -> "IdentifierBM25Retriever":
            nodes = list(nodes)
            bm25 = bm25s.BM25()
            # The text LlamaIndex's BM25Retriever indexes: the content with the metadata the embedding sees.
            bm25.index(
                [lexical_tokens(n.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes], show_progress=False
            )
            retriever = cls(existing_bm25=bm25, similarity_top_k=min(top_k, len(nodes)))
            retriever._course_nodes = nodes
            return retriever

        def _retrieve(self, query_bundle):
            vocab = self.bm25.vocab_dict
            tokens = [t for t in lexical_tokens(query_bundle.query_str) if t in vocab]
            if not tokens:  # no query word occurs in any chunk: BM25 has nothing to rank
                return []
            ids, scores = self.bm25.retrieve([tokens], k=self.similarity_top_k, show_progress=False)
            return [
                NodeWithScore(node=self._course_nodes[int(i)], score=float(s))
                for i, s in zip(ids[0], scores[0])
                if s > 0
            ]

    return IdentifierBM25Retriever


def dense_retriever(index: "VectorStoreIndex", top_k: int):
    """``index.as_retriever(similarity_top_k=top_k)``, less its filter to the index's own nodes in a vector database.

    ``as_retriever`` sends every node id of the index with each query, so that a store shared by several indexes
    answers for this one only. The course's Qdrant collection or PostgreSQL table holds exactly one index
    (:func:`build_index` drops it first, :func:`load_index` counts it), so there the filter changes nothing but the
    cost: embedded Qdrant checks it point by point in Python, which made its queries slower than the in-memory
    store's at 10k chunks (benchmarks/README.md). The in-memory store keeps LlamaIndex's default.
    """
    from llama_index.core.indices.vector_store.retrievers import VectorIndexRetriever
    from llama_index.core.vector_stores import SimpleVectorStore

    if isinstance(index.vector_store, SimpleVectorStore):
        return index.as_retriever(similarity_top_k=top_k)
    return VectorIndexRetriever(index, similarity_top_k=top_k, node_ids=None)


@functools.lru_cache(maxsize=4)
def cross_encoder_reranker(model: str, device: str | None = None):
    """LlamaIndex's ``SentenceTransformerRerank`` on a cross-encoder (a local folder or a hub id), loaded once.

    It returns every node it is given, best first (``top_n`` is left unbounded; :func:`make_retriever` keeps the
    top k). Pairs are cut at 512 tokens. ``trust_remote_code`` is off: LlamaIndex's own default is on.
    """
    from llama_index.core.postprocessor import SentenceTransformerRerank

    return SentenceTransformerRerank(
        model=model, top_n=10**9, device=device or ("cuda" if _cuda() else "cpu"), trust_remote_code=False
    )


def retrieval_metrics(
    ranked_ids: Sequence[Sequence[str]], relevant: Sequence[set[str]], ks: Sequence[int]
) -> dict[str, dict[int, float]]:
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
