"""A real vector database behind the same index (notebook 05, ``rag.vector_store``): Qdrant in its embedded on-disk
mode (``QdrantClient(path=...)``, the same client API as a server, no server needed) against the default in-memory
store, on real corpus chunks. No Qdrant server can be installed here from a package, so the server URL path is
covered by its error message (tests/test_rag.py) only.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from ragcourse import retrieval
from ragcourse.config import load_config

pytest.importorskip("qdrant_client", reason="pip install 'ragcourse[qdrant]'")

CHUNKS = 240  # real chunks of the corpus: enough for rankings to differ, few enough to embed in seconds


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The first chunks of the sample corpus, their questions, and the default index built on them (persisted)."""
    from ragcourse.data import corpus_chunks, load_qa

    cfg = load_config("cpu-smoke", paths={"output_root": str(tmp_path_factory.mktemp("simple"))})
    nodes = corpus_chunks(cfg)[:CHUNKS]
    docs = {n.metadata.get("doc_id") for n in nodes}
    questions = [r["question"] for r in load_qa(cfg.data.qa_dir) if set(r.get("doc_ids") or ()) & docs][:8]
    embed_model = retrieval.embedding_model(cfg)
    simple = retrieval.build_index(nodes, embed_model, cfg)
    return nodes, questions, embed_model, simple


def _top_ids(index, cfg, questions, k=5):
    retriever = retrieval.make_retriever(index, cfg, "dense", top_k=k)
    return [[hit.node.node_id for hit in retriever.retrieve(q)] for q in questions]


def qdrant_cfg(root, folder):
    return load_config("cpu-smoke", paths={"output_root": str(root)},
                       rag={"vector_store": "qdrant", "vector_store_url": str(folder)})


def test_embedded_qdrant_builds_persists_reloads_and_ranks_like_the_default_store(corpus, tmp_path):
    nodes, questions, embed_model, simple = corpus
    assert len(questions) >= 5
    cfg = qdrant_cfg(tmp_path / "outputs", tmp_path / "qdrant")
    expected = _top_ids(simple, cfg, questions)

    built = retrieval.build_index(nodes, embed_model, cfg)
    assert type(built.vector_store).__name__ == "CourseQdrantStore"
    assert _top_ids(built, cfg, questions) == expected
    target = retrieval.save_index(built, cfg)
    assert (tmp_path / "qdrant" / "collection" / "ragcourse-cpu-smoke").is_dir()  # the vectors are on disk

    reloaded = retrieval.load_index(cfg, embed_model=embed_model, path=target)
    assert _top_ids(reloaded, cfg, questions) == expected
    assert _top_ids(reloaded, cfg, questions, k=3) == [ids[:3] for ids in expected]
    # Chunk ids stay the course's ids; Qdrant holds them under UUID point ids.
    client = reloaded.vector_store.client
    point = client.retrieve("ragcourse-cpu-smoke", [retrieval.qdrant_point_id(nodes[0].node_id)], with_payload=True)[0]
    assert uuid.UUID(str(point.id)) and '"id_": "' + nodes[0].node_id + '"' in point.payload["_node_content"]
    # Hybrid retrieval (BM25 reads the docstore) works on the Qdrant-backed index as on the default one.
    hybrid = retrieval.make_retriever(reloaded, cfg, "hybrid", top_k=4)
    default_hybrid = retrieval.make_retriever(simple, cfg, "hybrid", top_k=4)
    assert [h.node.node_id for h in hybrid.retrieve(questions[0])] == \
           [h.node.node_id for h in default_hybrid.retrieve(questions[0])]

    # A rebuild replaces the collection instead of adding a second copy of every vector; the default index's own
    # vectors (stored_nodes) fill it without embedding again, and rank the same.
    rebuilt = retrieval.build_index(retrieval.stored_nodes(simple), embed_model, cfg)
    assert client.count("ragcourse-cpu-smoke").count == len(nodes)
    assert _top_ids(rebuilt, cfg, questions) == expected

    # Vectors gone (collection dropped) while the docstore stays: reloading says how to rebuild.
    client.delete_collection("ragcourse-cpu-smoke")
    with pytest.raises(retrieval.VectorStoreUnavailable, match="ragcourse index --rebuild"):
        retrieval.load_index(cfg, embed_model=embed_model, path=target)


def test_embedded_qdrant_folder_in_use_by_another_process_names_the_fix(tmp_path):
    folder = tmp_path / "qdrant"
    holder = subprocess.Popen([sys.executable, "-c", f"import qdrant_client, sys; c = qdrant_client.QdrantClient("
                               f"path={str(folder)!r}); print('open', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(retrieval.VectorStoreUnavailable, match="open in another process"):
            retrieval.vector_store(qdrant_cfg(tmp_path / "outputs", folder))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_vector_store_url_is_a_server_or_a_folder(tmp_path):
    assert retrieval.is_server_url("http://localhost:6333") and retrieval.is_server_url("https://q.example:6333")
    assert not retrieval.is_server_url("outputs/qdrant")
    relative = qdrant_cfg(tmp_path, "outputs/qdrant")
    from ragcourse.config import project_root

    assert retrieval.qdrant_location(relative) == str(project_root() / "outputs" / "qdrant")
    assert retrieval.qdrant_location(load_config("cpu-smoke", rag={"vector_store": "qdrant"})) == "http://localhost:6333"
