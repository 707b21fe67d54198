"""Retrieval speed on this CPU (issues 9 and 18): embedding throughput of the local MiniLM model, index build time
with the default in-memory store (LlamaIndex's SimpleVectorStore + BM25), query latency at 1k, 10k and 100k chunks,
and the same index in real vector databases at each size, in the same run: Qdrant in its embedded on-disk mode
(``rag.vector_store: qdrant`` with a folder) and PostgreSQL + pgvector on a server that pgserver starts from its wheel
(``rag.vector_store: postgres`` with a folder), each through ``retrieval.build_index`` as the course uses it.

Only the first 1,000 chunks are real embeddings (real documentation: package READMEs, chunked as the preset
chunks). The 10k and 100k stores are copies of them: each copy's embedding is the original plus Gaussian noise
(sigma 0.01 per dimension, re-normalised) and its text is the original text plus a unique token, so that dense and
BM25 scoring do the work of a store that size without hours of embedding on a CPU.

For each vector database it records the insert time (``build_index`` on embedded nodes: the store's write path), the
dense query latency as the course's retriever sees it (query embedding included), the search alone (a
``VectorStoreQuery`` with a ready query vector), and the ratio of its dense p50 to the in-memory store's at the same
size. Both stores search exactly (no approximate index); the results say for what share of the queries their top-k
is the in-memory store's, ids and order. A store whose insert rate at the previous size predicts more than
``--max-build-s`` for the next is not run at that size; the results say so and why. Qdrant's server mode is not
measured: no Qdrant server installs from a package here.

    python benchmarks/retrieval_speed.py                                   # everything: 1k/10k/100k, both stores
    python benchmarks/retrieval_speed.py --sizes 1000 10000 --stores qdrant --output-dir /tmp/rs   # a partial run

Writes benchmarks/results/retrieval_speed.{json,md} (or --output-dir).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ragcourse import data, realdocs, retrieval, runtime
from ragcourse.config import CourseConfig

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1_000, 10_000, 100_000)
KINDS = ("dense", "bm25", "hybrid")
STORES = {"qdrant": "Qdrant, embedded on disk", "postgres": "PostgreSQL + pgvector (pgserver)"}
STORE_OPEN = {
    "qdrant": "importing qdrant-client and opening the folder",
    "postgres": "initdb, starting the server, CREATE EXTENSION vector",
}
MAX_BUILD_S = 300  # a store whose insert rate predicts more than this at the next size is not run at it
NOISE = 0.01
BUSY_PROBE_S = 3  # system-wide CPU use is sampled this long before the run
SHARED_ABOVE_PERCENT = 25  # more than this (of all cores) means another job is running


def real_chunks(cfg: CourseConfig, tmp: Path, n: int, count: Callable[[str], list[int]]) -> tuple[list[Any], list[str]]:
    """``n`` real chunks (package READMEs at the preset's chunking, seeded sample) and identifier queries on them."""
    realdocs.build_real_docs(tmp)
    docs = data.load_documents(tmp)
    chunks = data.chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap, tokenizer=count)
    if len(chunks) < n:  # the READMEs alone are short of n: top up with the sample domain
        chunks += data.chunk_documents(
            data.load_documents(cfg.data.corpus_dir), cfg.data.chunk_size, cfg.data.chunk_overlap, tokenizer=count
        )
    queries = [q["question"] for q in realdocs.identifier_queries(docs, n=60)]
    return random.Random(0).sample(chunks, n), queries


def embed_throughput(embed_model: Any, texts: Sequence[str], threads: int) -> tuple[list[list[float]], float]:
    """Embeddings of ``texts`` and chunks per second with ``threads`` torch threads (after a warm-up batch)."""
    from ragcourse.hardware import set_torch_threads

    set_torch_threads(threads)
    embed_model.get_text_embedding_batch(list(texts[:32]))
    start = time.perf_counter()
    vectors = embed_model.get_text_embedding_batch(list(texts))
    return vectors, len(texts) / (time.perf_counter() - start)


def scaled_nodes(nodes: Sequence[Any], vectors: Sequence[Sequence[float]], size: int, seed: int = 0) -> list[Any]:
    """``size`` nodes: the real ones, then perturbed copies (embedding + noise, text + a unique token)."""
    import numpy as np
    from llama_index.core.schema import TextNode

    rng = np.random.default_rng(seed)
    base = np.asarray(vectors, dtype=np.float32)
    out = []
    for i in range(size):
        j, copy = i % len(nodes), i // len(nodes)
        vec = base[j] if copy == 0 else base[j] + rng.normal(0, NOISE, base.shape[1]).astype(np.float32)
        text = nodes[j].get_content() + ("" if copy == 0 else f" copy{copy}")
        out.append(
            TextNode(
                text=text,
                id_=f"{nodes[j].node_id}~{copy}",
                metadata=dict(nodes[j].metadata),
                embedding=(vec / np.linalg.norm(vec)).tolist(),
            )
        )
    return out


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[Any, float]:
    """``fn()``'s value and its median wall seconds over ``repeats`` calls (short timings jitter on a shared CPU)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        seconds.append(time.perf_counter() - start)
    return value, statistics.median(seconds)


def latencies(retriever: Any, queries: Sequence[str], warmup: int = 2) -> dict[str, float]:
    """p50/p95 milliseconds of ``retriever.retrieve`` over ``queries``."""
    import numpy as np

    for q in queries[:warmup]:
        retriever.retrieve(q)
    ms = [1000 * timed(lambda q=q: retriever.retrieve(q))[1] for q in queries]
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "queries": len(ms),
    }


def search(store: Any, vector: Sequence[float], top_k: int) -> list[str]:
    """The ids of the store's top-k for a ready query vector (the store's own ``VectorStoreQuery``)."""
    from llama_index.core.vector_stores import VectorStoreQuery

    result = store.query(VectorStoreQuery(query_embedding=list(vector), similarity_top_k=top_k))
    # Stores that keep the text return nodes, whose ids are the chunk ids (Qdrant's own ids are UUIDs).
    return [n.node_id for n in result.nodes] if result.nodes else list(result.ids)


def search_latency(store: Any, query_vectors: Sequence[Sequence[float]], top_k: int) -> dict[str, float]:
    """p50/p95 milliseconds of :func:`search` over ``query_vectors``."""
    import numpy as np

    search(store, query_vectors[0], top_k)
    ms = [1000 * timed(lambda v=v: search(store, v, top_k))[1] for v in query_vectors]
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2)}


def store_config(cfg: CourseConfig, store: str, folder: Path) -> CourseConfig:
    """``cfg`` with ``rag.vector_store: <store>`` in a local folder (embedded Qdrant, or pgserver's data folder)."""
    return dataclasses.replace(cfg, rag=dataclasses.replace(cfg.rag, vector_store=store, vector_store_url=str(folder)))


def open_store(cfg: CourseConfig) -> float:
    """Seconds to first open the configured store: import its client and, for postgres, initdb + server start +
    pgvector."""
    start = time.perf_counter()
    if cfg.rag.vector_store == "postgres":
        retrieval.open_postgres(retrieval.store_location(cfg))
    else:
        retrieval.vector_store(cfg)
    return round(time.perf_counter() - start, 2)


def skip_reason(store: str, size: int, measured: Sequence[dict[str, Any]], budget_s: float) -> str | None:
    """Why ``store`` is not run at ``size`` (its insert rate at the largest size measured predicts over the budget)."""
    done = [m for m in measured if m["store"] == store and "insert_s" in m]
    if not done:
        return None
    last = max(done, key=lambda m: m["chunks"])
    predicted = size / last["insert_per_s"]
    if predicted <= budget_s:
        return None
    return (
        f"not run: {last['insert_per_s']:.0f} inserts/s at {last['chunks']:,} chunks predict {predicted / 60:.0f} min "
        f"for {size:,}, over the {budget_s / 60:.0f}-minute cap (--max-build-s)"
    )


def measure_store(
    cfg: CourseConfig,
    pool: Sequence[Any],
    embed_model: Any,
    sample: Sequence[str],
    query_vectors: Sequence[Sequence[float]],
    baseline: dict[str, Any],
) -> dict[str, Any]:
    """Insert ``pool`` into the configured store (a fresh collection or table), time dense queries on it, and compare
    its top-k with the in-memory store's (``baseline``: its dense p50 and its top-k ids per query)."""
    index, insert_s = timed(lambda: retrieval.build_index(pool, embed_model, cfg))
    dense = latencies(retrieval.make_retriever(index, cfg, "dense"), sample)
    top_k = cfg.rag.similarity_top_k
    same = [search(index.vector_store, v, top_k) == ids for v, ids in zip(query_vectors, baseline["top_ids"])]
    return {
        "store": cfg.rag.vector_store,
        "chunks": len(pool),
        "insert_s": round(insert_s, 2),
        "insert_per_s": round(len(pool) / insert_s, 1),
        "dense": dense,
        "search": search_latency(index.vector_store, query_vectors, top_k),
        "same_top_k_as_in_memory": round(sum(same) / len(same), 3),
        "dense_p50_vs_in_memory": round(dense["p50_ms"] / baseline["dense_p50_ms"], 3),
    }


def vector_store_lines(result: dict[str, Any]) -> list[str]:
    """The table of the vector databases beside the in-memory store, size by size, and how long each took to open."""
    measured = result.get("vector_stores", [])
    opened = result.get("store_open_s", {})
    if not opened:
        return ["Vector databases: not measured in this run (--stores)."]
    lines = [
        "| chunks | store | insert (s) | inserts/s | dense p50 / p95 (ms) | search only p50 / p95 (ms) | "
        "dense p50 vs in-memory | same top-k as in-memory |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for base in result["stores"]:
        size = base["chunks"]
        lines.append(
            f"| {size:,} | in-memory (SimpleVectorStore) | {base['vector_store_build_s']:.2f} | "
            f"{size / base['vector_store_build_s']:,.0f} | {base['latency']['dense']['p50_ms']:.1f} / "
            f"{base['latency']['dense']['p95_ms']:.1f} | {base['search']['p50_ms']:.2f} / "
            f"{base['search']['p95_ms']:.2f} | 1 | |"
        )
        for m in (m for m in measured if m["chunks"] == size):
            name = STORES[m["store"]]
            if "skipped" in m:
                lines.append(f"| {size:,} | {name} | {m['skipped']} | | | | | |")
                continue
            lines.append(
                f"| {size:,} | {name} | {m['insert_s']:.2f} | {m['insert_per_s']:,.0f} | "
                f"{m['dense']['p50_ms']:.1f} / {m['dense']['p95_ms']:.1f} | {m['search']['p50_ms']:.2f} / "
                f"{m['search']['p95_ms']:.2f} | {m['dense_p50_vs_in_memory']:.3g} | "
                f"{m['same_top_k_as_in_memory']:.0%} of queries |"
            )
    lines += [
        "",
        "First open, before the first insert: "
        + "; ".join(f"{STORES[s]} {v:.2f} s ({STORE_OPEN[s]})" for s, v in opened.items())
        + ".",
    ]
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The tables of benchmarks/README.md."""
    e = result["embedding"]
    busy = result.get("cpu_busy_percent_at_start")
    state = (
        "n/a"
        if busy is None
        else f"CPU {busy:.0f}% busy in the {BUSY_PROBE_S} s before the run: "
        + ("the machine was shared" if busy > SHARED_ABOVE_PERCENT else "the machine was idle")
    )
    lines = [
        f"Measured on {result['machine']} ({state}), {result['settings']['embedding']}, "
        f"chunks of {result['settings']['chunk_size']} tokens (mean {e['mean_chunk_tokens']} SmolLM2 tokens).",
        "",
        "| embedding (MiniLM-L6, CPU) | chunks/s |",
        "|---|---|",
    ]
    lines += [
        f"| {t} torch thread(s), batch {e['batch_size']}, {e['chunks']} chunks | {v:.1f} |"
        for t, v in e["chunks_per_s"].items()
    ]
    lines += [
        "",
        "| chunks in store | build: SimpleVectorStore insert (s) | build: BM25 (s) | build per 1,000 chunks, "
        "excl. embedding (s) | dense p50 / p95 (ms) | bm25 p50 / p95 (ms) | hybrid p50 / p95 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for store in result["stores"]:
        lat = " | ".join(f"{store['latency'][k]['p50_ms']:.1f} / {store['latency'][k]['p95_ms']:.1f}" for k in KINDS)
        lines.append(
            f"| {store['chunks']:,} | {store['vector_store_build_s']:.2f} | {store['bm25_build_s']:.2f} | "
            f"{store['build_per_1000_s']:.2f} | {lat} |"
        )
    lines += [
        "",
        "End-to-end build of 1,000 chunks including embedding at 1 thread: "
        f"{result['build_1000_with_embedding_s']:.0f} s.",
        "",
        "Vector databases, same chunks, same run:",
        "",
        *vector_store_lines(result),
        "",
        *(f"- {n}" for n in result["notes"]),
    ]
    return "\n".join(lines) + "\n"


def store_versions(store_cfgs: dict[str, CourseConfig]) -> dict[str, str]:
    """The installed clients of the stores measured and, for postgres, the server's and pgvector's versions."""
    from importlib.metadata import version

    out = {}
    if "qdrant" in store_cfgs:
        out |= {p: version(p) for p in ("qdrant-client", "llama-index-vector-stores-qdrant")}
    if "postgres" in store_cfgs:
        import sqlalchemy

        out |= {p: version(p) for p in ("pgserver", "llama-index-vector-stores-postgres", "psycopg2-binary")}
        engine = retrieval.open_postgres(retrieval.store_location(store_cfgs["postgres"]))[0]
        with engine.connect() as conn:
            out["postgresql"] = conn.execute(sqlalchemy.text("SHOW server_version")).scalar()
            out["pgvector"] = conn.execute(
                sqlalchemy.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
            ).scalar()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=os.environ.get("RAGCOURSE_PRESET", "cpu-smoke"))
    parser.add_argument("--real", type=int, default=1_000, help="chunks embedded for real")
    parser.add_argument("--queries", type=int, default=40, help="timed queries per store and retriever (100k: half)")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="chunks in the store (default: %(default)s)"
    )
    parser.add_argument(
        "--stores",
        nargs="*",
        choices=list(STORES),
        default=list(STORES),
        help="vector databases measured beside the in-memory store, which is always measured",
    )
    parser.add_argument(
        "--max-build-s",
        type=float,
        default=MAX_BUILD_S,
        help="skip a store at a size its insert rate at the previous size predicts over this",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS,
        help="where retrieval_speed.{json,md} go (a partial run elsewhere keeps the committed results)",
    )
    args = parser.parse_args()
    cfg = runtime.start(args.preset, quiet=True)
    import psutil
    from llama_index.core.schema import MetadataMode

    from ragcourse.hardware import set_torch_threads
    from ragcourse.models import load_tokenizer

    busy = psutil.cpu_percent(interval=BUSY_PROBE_S)  # the load average lags by minutes; this is the present
    load = os.getloadavg()[0]
    embed_model, count = retrieval.embedding_model(cfg), data.token_counter(load_tokenizer(cfg))
    with tempfile.TemporaryDirectory() as tmp:
        nodes, queries = real_chunks(cfg, Path(tmp), args.real, count)
    texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    per_s: dict[int, float] = {}
    vectors, per_s[1] = embed_throughput(embed_model, texts, threads=1)
    _, per_s[2] = embed_throughput(embed_model, texts, threads=2)
    print(f"embedding: {per_s[1]:.1f} chunks/s (1 thread), {per_s[2]:.1f} chunks/s (2 threads)", flush=True)
    set_torch_threads(1)  # latencies at 1 thread: steadier on a shared machine
    retrieval.make_retriever(
        retrieval.build_index(scaled_nodes(nodes, vectors, 100), embed_model), cfg, "hybrid"
    )  # warm-up
    query_vectors = {q: embed_model.get_query_embedding(q) for q in queries}
    folders = tempfile.TemporaryDirectory(prefix="retrieval_speed-")  # the stores' folders, on this machine's disk
    store_cfgs = {s: store_config(cfg, s, Path(folders.name) / s) for s in args.stores}
    opened = {s: open_store(c) for s, c in store_cfgs.items()}
    print("opened: " + ", ".join(f"{s} in {v:.2f} s" for s, v in opened.items()), flush=True)
    stores, measured = [], []
    try:
        for size in args.sizes:
            pool = scaled_nodes(nodes, vectors, size)
            repeats = 5 if size <= 10_000 else 1
            index, build_s = timed(functools.partial(retrieval.build_index, pool, embed_model), repeats)
            retrievers = {kind: retrieval.make_retriever(index, cfg, kind) for kind in KINDS if kind != "bm25"}
            retrievers["bm25"], bm25_s = timed(functools.partial(retrieval.make_retriever, index, cfg, "bm25"), repeats)
            n_queries = args.queries if size < 100_000 else max(args.queries // 2, 5)
            sample = (queries * (n_queries // len(queries) + 1))[:n_queries]
            latency = {kind: latencies(retrievers[kind], sample) for kind in KINDS}
            sample_vectors = [query_vectors[q] for q in sample]
            search_ms = search_latency(index.vector_store, sample_vectors, cfg.rag.similarity_top_k)
            baseline = {
                "dense_p50_ms": latency["dense"]["p50_ms"],
                "top_ids": [search(index.vector_store, v, cfg.rag.similarity_top_k) for v in sample_vectors],
            }
            stores.append(
                {
                    "chunks": size,
                    "vector_store_build_s": round(build_s, 2),
                    "bm25_build_s": round(bm25_s, 2),
                    "build_per_1000_s": round((build_s + bm25_s) / size * 1000, 3),
                    "latency": latency,
                    "search": search_ms,
                }
            )
            print(
                f"{size:>7,} chunks: build {build_s:.1f} s + BM25 {bm25_s:.1f} s; "
                + ", ".join(f"{k} p50 {v['p50_ms']:.0f} ms" for k, v in latency.items()),
                flush=True,
            )
            del index, retrievers
            for store, store_cfg in store_cfgs.items():
                reason = skip_reason(store, size, measured, args.max_build_s)
                if reason:
                    measured.append({"store": store, "chunks": size, "skipped": reason})
                else:
                    measured.append(measure_store(store_cfg, pool, embed_model, sample, sample_vectors, baseline))
                m = measured[-1]
                print(
                    f"{size:>7,} chunks, {store}: "
                    + (
                        m.get("skipped")
                        or f"insert {m['insert_s']:.1f} s ({m['insert_per_s']:.0f}/s), "
                        f"dense p50 {m['dense']['p50_ms']:.0f} ms "
                        f"({m['dense_p50_vs_in_memory']:.3g}x in-memory), search p50 {m['search']['p50_ms']:.1f} ms, "
                        f"same top-k {m['same_top_k_as_in_memory']:.0%}"
                    ),
                    flush=True,
                )
            del pool
        versions = store_versions(store_cfgs)
    finally:
        if "postgres" in store_cfgs:  # stop pgserver's server before its folder goes
            retrieval.close_postgres(retrieval.store_location(store_cfgs["postgres"]))
        folders.cleanup()
    result = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_start": round(load, 2),
        "cpu_busy_percent_at_start": busy,
        "settings": {
            "preset": cfg.preset,
            "embedding": cfg.embedding.name,
            "chunk_size": cfg.data.chunk_size,
            "chunk_overlap": cfg.data.chunk_overlap,
            "similarity_top_k": cfg.rag.similarity_top_k,
            "hybrid_candidates": 20,
            "dense_weight": cfg.rag.dense_weight,
            "latency_torch_threads": 1,
            "sizes": args.sizes,
            "max_build_s": args.max_build_s,
            "user": psutil.Process().username(),
            "versions": runtime.versions() | versions,
        },
        "embedding": {
            "chunks": len(texts),
            "batch_size": cfg.embedding.batch_size,
            "chunks_per_s": {t: round(v, 1) for t, v in per_s.items()},
            "mean_chunk_tokens": round(sum(len(count(n.get_content())) for n in nodes) / len(nodes), 1),
        },
        "build_1000_with_embedding_s": round(1000 / per_s[1] + stores[0]["build_per_1000_s"], 1),
        "stores": stores,
        "store_open_s": opened,
        "vector_stores": measured,
        "notes": [
            f"Real embeddings for the first {len(nodes)} chunks only; the 10k and 100k stores hold copies with "
            f"Gaussian noise (sigma {NOISE}) on the embedding and a unique token appended to the text.",
            "Latency includes embedding the query (dense, hybrid) and, for hybrid, both candidate lists (top 20) "
            "and their fusion; 1 torch thread; 100k stores are timed on half as many queries. Build times are the "
            "median of 5 builds at 1k and 10k chunks, one build at 100k.",
            "SimpleVectorStore scores every stored vector in Python on each query (brute force), so dense latency "
            "grows linearly with the store; BM25 (bm25s) grows far more slowly. Build time excludes embedding.",
        ]
        + (
            [
                "Vector databases: one insert each (retrieval.build_index into a fresh collection or table, "
                'embeddings ready), then the same queries as the in-memory store. "search only" is the store\'s '
                'VectorStoreQuery with a ready query vector; "dense" adds the query embedding and LlamaIndex\'s '
                'retriever. Both stores search exactly (no approximate index); "same top-k" compares each query\'s '
                "top-k ids, in order, with the in-memory store's. BM25 and hybrid read the docstore, which is the "
                "same whatever the vector store, so they are not repeated per store.",
            ]
            if opened
            else []
        )
        + (
            [
                "Embedded Qdrant (qdrant-client's local mode) commits each point in its own SQLite transaction "
                "whatever the batch size, and keeps every vector in memory; qdrant-client warns above 20,000 points "
                "that local mode is meant for small collections. A Qdrant server is not measured: none installs "
                "from a package here.",
            ]
            if "qdrant" in opened
            else []
        )
        + (
            [
                "PostgreSQL ran on pgserver's bundled binaries in a temporary folder, reached over a Unix socket "
                "(no TCP port)"
                + (
                    ": as root here, so pgserver ran it as its own system user 'pgserver' (PostgreSQL refuses root)."
                    if psutil.Process().username() == "root"
                    else "."
                )
            ]
            if "postgres" in opened
            else []
        )
        + (
            ["The machine was shared with another job: treat the numbers as upper bounds, good to a factor of ~2."]
            if busy > SHARED_ABOVE_PERCENT
            else []
        ),
    }
    result["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "retrieval_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.output_dir / "retrieval_speed.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
