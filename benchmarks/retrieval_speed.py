"""Retrieval speed on this CPU (issue 9, item 4): embedding throughput of the local MiniLM model, index build time
with the embedded store (LlamaIndex's SimpleVectorStore + BM25), and query latency at 1k, 10k and 100k chunks.

Only the first 1,000 chunks are real embeddings (real documentation: package READMEs, chunked as the preset
chunks). The 10k and 100k stores are copies of them: each copy's embedding is the original plus Gaussian noise
(sigma 0.01 per dimension, re-normalised) and its text is the original text plus a unique token, so that dense and
BM25 scoring do the work of a store that size without hours of embedding on a CPU. The scale-out store (Qdrant,
``rag.vector_store: qdrant``) needs a server, which this machine does not have: it is reported as not measured.

    python benchmarks/retrieval_speed.py             # cpu-smoke, ~3 min on an idle machine (5-10 shared)

Writes benchmarks/results/retrieval_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import importlib.util
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
NOISE = 0.01
NOT_MEASURED = "scale-out store: not measured (no server here)"
BUSY_PROBE_S = 3  # system-wide CPU use is sampled this long before the run
SHARED_ABOVE_PERCENT = 25  # more than this (of all cores) means another job is running


def real_chunks(cfg: CourseConfig, tmp: Path, n: int, count: Callable[[str], list[int]]) -> tuple[list[Any], list[str]]:
    """``n`` real chunks (package READMEs at the preset's chunking, seeded sample) and identifier queries on them."""
    realdocs.build_real_docs(tmp)
    docs = data.load_documents(tmp)
    chunks = data.chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap, tokenizer=count)
    if len(chunks) < n:  # the READMEs alone are short of n: top up with the sample domain
        chunks += data.chunk_documents(data.load_documents(cfg.data.corpus_dir), cfg.data.chunk_size,
                                       cfg.data.chunk_overlap, tokenizer=count)
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
        out.append(TextNode(text=text, id_=f"{nodes[j].node_id}~{copy}", metadata=dict(nodes[j].metadata),
                            embedding=(vec / np.linalg.norm(vec)).tolist()))
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
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "queries": len(ms)}


def scale_out_store() -> str:
    """The line the results give for the scale-out store (not measured here: it needs a Qdrant server)."""
    if importlib.util.find_spec("qdrant_client") is None:
        return NOT_MEASURED + "; qdrant-client is not installed"
    return NOT_MEASURED


def markdown(result: dict[str, Any]) -> str:
    """The tables of benchmarks/README.md."""
    e = result["embedding"]
    busy = result.get("cpu_busy_percent_at_start")
    state = "n/a" if busy is None else f"CPU {busy:.0f}% busy in the {BUSY_PROBE_S} s before the run: " + (
        "the machine was shared" if busy > SHARED_ABOVE_PERCENT else "the machine was idle")
    lines = [f"Measured on {result['machine']} ({state}), {result['settings']['embedding']}, "
             f"chunks of {result['settings']['chunk_size']} tokens (mean {e['mean_chunk_tokens']} SmolLM2 tokens).", "",
             "| embedding (MiniLM-L6, CPU) | chunks/s |", "|---|---|"]
    lines += [f"| {t} torch thread(s), batch {e['batch_size']}, {e['chunks']} chunks | {v:.1f} |"
              for t, v in e["chunks_per_s"].items()]
    lines += ["", "| chunks in store | build: SimpleVectorStore insert (s) | build: BM25 (s) | build per 1,000 chunks, "
              "excl. embedding (s) | dense p50 / p95 (ms) | bm25 p50 / p95 (ms) | hybrid p50 / p95 (ms) |",
              "|---|---|---|---|---|---|---|"]
    for store in result["stores"]:
        lat = " | ".join(f"{store['latency'][k]['p50_ms']:.1f} / {store['latency'][k]['p95_ms']:.1f}" for k in KINDS)
        lines.append(f"| {store['chunks']:,} | {store['vector_store_build_s']:.2f} | {store['bm25_build_s']:.2f} | "
                     f"{store['build_per_1000_s']:.2f} | {lat} |")
    lines += ["", "End-to-end build of 1,000 chunks including embedding at 1 thread: "
              f"{result['build_1000_with_embedding_s']:.0f} s.",
              f"{result['scale_out_store']}.", "", *(f"- {n}" for n in result["notes"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default=os.environ.get("RAGCOURSE_PRESET", "cpu-smoke"))
    parser.add_argument("--real", type=int, default=1_000, help="chunks embedded for real")
    parser.add_argument("--queries", type=int, default=40, help="timed queries per store and retriever (100k: half)")
    args = parser.parse_args()
    cfg = runtime.start(args.preset, quiet=True)
    from llama_index.core.schema import MetadataMode

    from ragcourse.hardware import set_torch_threads
    from ragcourse.models import load_tokenizer

    import psutil

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
    retrieval.make_retriever(retrieval.build_index(scaled_nodes(nodes, vectors, 100), embed_model), cfg, "hybrid")  # warm-up
    stores = []
    for size in SIZES:
        pool = scaled_nodes(nodes, vectors, size)
        repeats = 5 if size <= 10_000 else 1
        index, build_s = timed(lambda: retrieval.build_index(pool, embed_model), repeats)
        retrievers = {kind: retrieval.make_retriever(index, cfg, kind) for kind in KINDS if kind != "bm25"}
        retrievers["bm25"], bm25_s = timed(lambda: retrieval.make_retriever(index, cfg, "bm25"),
                                           repeats)
        n_queries = args.queries if size < 100_000 else max(args.queries // 2, 5)
        sample = (queries * (n_queries // len(queries) + 1))[:n_queries]
        latency = {kind: latencies(retrievers[kind], sample) for kind in KINDS}
        stores.append({"chunks": size, "vector_store_build_s": round(build_s, 2), "bm25_build_s": round(bm25_s, 2),
                       "build_per_1000_s": round((build_s + bm25_s) / size * 1000, 3), "latency": latency})
        print(f"{size:>7,} chunks: build {build_s:.1f} s + BM25 {bm25_s:.1f} s; "
              + ", ".join(f"{k} p50 {v['p50_ms']:.0f} ms" for k, v in latency.items()), flush=True)
        del index, pool, retrievers
    result = {
        "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_at_start": round(load, 2), "cpu_busy_percent_at_start": busy,
        "settings": {"preset": cfg.preset, "embedding": cfg.embedding.name, "chunk_size": cfg.data.chunk_size,
                     "chunk_overlap": cfg.data.chunk_overlap, "similarity_top_k": cfg.rag.similarity_top_k,
                     "hybrid_candidates": 20, "dense_weight": cfg.rag.dense_weight, "latency_torch_threads": 1,
                     "versions": runtime.versions()},
        "embedding": {"chunks": len(texts), "batch_size": cfg.embedding.batch_size, "chunks_per_s": {
            t: round(v, 1) for t, v in per_s.items()},
            "mean_chunk_tokens": round(sum(len(count(n.get_content())) for n in nodes) / len(nodes), 1)},
        "build_1000_with_embedding_s": round(1000 / per_s[1] + stores[0]["build_per_1000_s"], 1),
        "stores": stores,
        "scale_out_store": scale_out_store(),
        "notes": [
            f"Real embeddings for the first {len(nodes)} chunks only; the 10k and 100k stores hold copies with "
            f"Gaussian noise (sigma {NOISE}) on the embedding and a unique token appended to the text.",
            "Latency includes embedding the query (dense, hybrid) and, for hybrid, both candidate lists (top 20) "
            "and their fusion; 1 torch thread; 100k stores are timed on half as many queries. Build times are the "
            "median of 5 builds at 1k and 10k chunks, one build at 100k.",
            "SimpleVectorStore scores every stored vector in Python on each query (brute force), so dense latency "
            "grows linearly with the store; BM25 (bm25s) grows far more slowly. Build time excludes embedding.",
        ] + (["The machine was shared with another job: treat the numbers as upper bounds, good to a factor of ~2."]
             if busy > SHARED_ABOVE_PERCENT else []),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "retrieval_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "retrieval_speed.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
