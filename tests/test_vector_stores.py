"""A real vector database behind the same index (notebook 05, ``rag.vector_store``), against the default in-memory
store, on real corpus chunks: Qdrant in its embedded on-disk mode (``QdrantClient(path=...)``, the same client API
as a server, no server needed), and a real PostgreSQL + pgvector server that pgserver starts from its wheel in a
temporary folder (Unix socket only, no TCP port). No Qdrant server can be installed here from a package, so
Qdrant's server URL path is covered by its error message (tests/test_rag.py) only.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import uuid

import pytest

from ragcourse import retrieval
from ragcourse.config import load_config

CHUNKS = 240  # real chunks of the corpus: enough for rankings to differ, few enough to embed in seconds
needs_qdrant = pytest.mark.skipif(
    importlib.util.find_spec("qdrant_client") is None, reason="pip install 'ragcourse[qdrant]'"
)
needs_postgres = pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("pgserver", "psycopg2", "pgvector", "llama_index.vector_stores"))
    or importlib.util.find_spec("llama_index.vector_stores.postgres") is None,
    reason="pip install 'ragcourse[postgres]'",
)


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


def store_cfg(root, store, location):
    return load_config(
        "cpu-smoke", paths={"output_root": str(root)}, rag={"vector_store": store, "vector_store_url": str(location)}
    )


def builds_and_ranks_like_the_default_store(corpus, cfg, store_class, between=lambda: None):
    """Build the index in the store, persist it, run ``between`` (e.g. stop the server), reload it: the same top-k
    as the default store at each step, for dense search (the store's part) and hybrid (BM25 reads the docstore).
    A rebuild from the default index's own vectors replaces the stored ones. Returns the reloaded index and its path."""
    nodes, questions, embed_model, simple = corpus
    assert len(questions) >= 5
    expected = _top_ids(simple, cfg, questions)

    built = retrieval.build_index(nodes, embed_model, cfg)
    assert type(built.vector_store).__name__ == store_class
    assert _top_ids(built, cfg, questions) == expected
    target = retrieval.save_index(built, cfg)
    between()

    reloaded = retrieval.load_index(cfg, embed_model=embed_model, path=target)
    assert _top_ids(reloaded, cfg, questions) == expected
    assert _top_ids(reloaded, cfg, questions, k=3) == [ids[:3] for ids in expected]
    hybrid = retrieval.make_retriever(reloaded, cfg, "hybrid", top_k=4)
    default_hybrid = retrieval.make_retriever(simple, cfg, "hybrid", top_k=4)
    assert [h.node.node_id for h in hybrid.retrieve(questions[0])] == [
        h.node.node_id for h in default_hybrid.retrieve(questions[0])
    ]

    # A rebuild replaces the stored vectors instead of adding a second copy of each; the default index's own
    # vectors (stored_nodes) fill it without embedding again, and rank the same.
    rebuilt = retrieval.build_index(retrieval.stored_nodes(simple), embed_model, cfg)
    assert retrieval.stored_vectors(cfg, rebuilt.vector_store) == len(nodes)
    assert _top_ids(rebuilt, cfg, questions) == expected
    return reloaded, target


@needs_qdrant
def test_embedded_qdrant_builds_persists_reloads_and_ranks_like_the_default_store(corpus, tmp_path):
    nodes, _, embed_model, _ = corpus
    cfg = store_cfg(tmp_path / "outputs", "qdrant", tmp_path / "qdrant")
    reloaded, target = builds_and_ranks_like_the_default_store(corpus, cfg, "CourseQdrantStore")
    assert (tmp_path / "qdrant" / "collection" / "ragcourse-cpu-smoke").is_dir()  # the vectors are on disk
    # Chunk ids stay the course's ids; Qdrant holds them under UUID point ids.
    client = reloaded.vector_store.client
    point = client.retrieve("ragcourse-cpu-smoke", [retrieval.qdrant_point_id(nodes[0].node_id)], with_payload=True)[0]
    assert uuid.UUID(str(point.id)) and '"id_": "' + nodes[0].node_id + '"' in point.payload["_node_content"]

    # Vectors gone (collection dropped) while the docstore stays: reloading says how to rebuild.
    client.delete_collection("ragcourse-cpu-smoke")
    with pytest.raises(retrieval.VectorStoreUnavailable, match="ragcourse index --rebuild"):
        retrieval.load_index(cfg, embed_model=embed_model, path=target)


@needs_qdrant
def test_embedded_qdrant_folder_in_use_by_another_process_names_the_fix(tmp_path):
    folder = tmp_path / "qdrant"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import qdrant_client, sys; c = qdrant_client.QdrantClient("
            f"path={str(folder)!r}); print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(retrieval.VectorStoreUnavailable, match="open in another process"):
            retrieval.vector_store(store_cfg(tmp_path / "outputs", "qdrant", folder))
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)


def test_vector_store_url_is_a_server_or_a_folder(tmp_path):
    for url in (
        "http://localhost:6333",
        "https://q.example:6333",
        "postgresql://postgres@localhost:5432/postgres",
        "postgres://u@db/rag",
    ):
        assert retrieval.is_server_url(url), url
    assert not retrieval.is_server_url("outputs/qdrant") and not retrieval.is_server_url("outputs/pgvector")
    from ragcourse.config import project_root

    assert retrieval.store_location(store_cfg(tmp_path, "qdrant", "outputs/qdrant")) == str(
        project_root() / "outputs" / "qdrant"
    )
    assert retrieval.store_location(load_config("cpu-smoke", rag={"vector_store": "qdrant"})) == "http://localhost:6333"
    assert (
        retrieval.store_location(load_config("cpu-smoke", rag={"vector_store": "postgres"}))
        == "postgresql://postgres@localhost:5432/postgres"
    )
    assert retrieval.shown_location("postgresql://rag:s3cret@db:5432/rag") == "postgresql://rag:***@db:5432/rag"


# -- PostgreSQL + pgvector, on a server pgserver starts from its wheel ------------------------------------------


def postmaster_pid(folder):
    pid_file = folder / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


@pytest.fixture
def pg_folder(tmp_path):
    """A folder for pgserver's data; the server started there is stopped whatever the test did."""
    import psutil

    folder = tmp_path / "pgvector"
    try:
        yield folder
    finally:
        pid = postmaster_pid(folder)
        try:
            retrieval.close_postgres(str(folder))
        finally:  # the postmaster this test started, if pg_ctl could not stop it
            try:
                server = psutil.Process(pid) if pid else None
                running = (
                    server is not None
                    and server.status() != psutil.STATUS_ZOMBIE
                    and str(folder) in " ".join(server.cmdline())
                )  # still that server, not a reused pid
            except psutil.Error:  # gone (a zombie waits for its parent to reap it: it has exited too)
                running = False
            if running:
                server.kill()
                pytest.fail(f"the PostgreSQL server on {folder} was still running after the test; killed it")


@needs_postgres
def test_postgres_pgvector_builds_persists_reloads_and_ranks_like_the_default_store(
    corpus, pg_folder, tmp_path, record_property
):
    import sqlalchemy

    nodes, _, embed_model, _ = corpus
    cfg = store_cfg(tmp_path / "outputs", "postgres", pg_folder)
    start = time.perf_counter()
    engine, _ = retrieval.open_postgres(retrieval.store_location(cfg))  # initdb + start + CREATE EXTENSION vector
    started_s = time.perf_counter() - start
    record_property("pgserver_first_start_s", round(started_s, 2))
    print(f"pgserver: initdb + start + pgvector in {started_s:.2f} s")
    with engine.connect() as conn:  # reachable over its Unix socket only: the server listens on no TCP address
        assert conn.execute(sqlalchemy.text("SHOW listen_addresses")).scalar() == ""
        assert conn.execute(sqlalchemy.text("SELECT inet_server_addr()")).scalar() is None
        assert conn.execute(sqlalchemy.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")).scalar()
    assert str(engine.url.query["host"]).startswith("/")

    restart = {}

    def stop_the_server():  # persist for real: the reload below starts the server again on the same folder
        retrieval.close_postgres(str(pg_folder))
        assert postmaster_pid(pg_folder) is None
        restart["t"] = time.perf_counter()

    reloaded, target = builds_and_ranks_like_the_default_store(corpus, cfg, "PGVectorStore", between=stop_the_server)
    print(f"pgserver: restart on the persisted folder + reload in {time.perf_counter() - restart['t']:.2f} s")
    assert retrieval.postgres_vectors(retrieval.open_postgres(str(pg_folder))[0], "ragcourse_cpu_smoke") == (
        len(nodes),
        384,
    )

    # A second process uses the same server at the same time (unlike embedded Qdrant), and its exit does not stop it.
    pid = postmaster_pid(pg_folder)
    child = subprocess.run(
        [
            sys.executable,
            "-W",
            "ignore",
            "-c",
            "import pgserver, sys; print(pgserver.get_server("
            "sys.argv[1]).psql('SELECT count(*) FROM data_ragcourse_cpu_smoke'))",
            str(pg_folder),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0 and f" {len(nodes)}\n" in child.stdout, child.stdout + child.stderr
    assert postmaster_pid(pg_folder) == pid
    assert _top_ids(reloaded, cfg, corpus[1][:2]) == _top_ids(corpus[3], cfg, corpus[1][:2])

    # Vectors gone (table dropped) while the docstore stays: reloading says how to rebuild.
    with retrieval.open_postgres(str(pg_folder))[0].begin() as conn:
        conn.execute(sqlalchemy.text("DROP TABLE data_ragcourse_cpu_smoke"))
    with pytest.raises(retrieval.VectorStoreUnavailable, match="ragcourse index --rebuild"):
        retrieval.load_index(cfg, embed_model=embed_model, path=target)


def test_postgres_switch_explains_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_index.vector_stores.postgres", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pgserver", None)
    for location in ("postgresql://postgres@localhost:5432/postgres", tmp_path / "pgvector"):
        with pytest.raises(
            retrieval.VectorStoreUnavailable, match="pip install llama-index-vector-stores-postgres"
        ) as err:
            retrieval.vector_store(store_cfg(tmp_path, "postgres", location))
        assert "ragcourse[postgres]" in str(err.value) and "pgvector/pgvector" in str(err.value)
    assert not (tmp_path / "pgvector").exists()


@needs_postgres
def test_postgres_url_without_a_server_names_the_fix_and_hides_the_password(tmp_path):
    url = "postgresql://rag:s3cret@127.0.0.1:9/rag"  # loopback, a port where nothing listens
    with pytest.raises(retrieval.VectorStoreUnavailable, match="No PostgreSQL with pgvector answers at") as err:
        retrieval.vector_store(store_cfg(tmp_path, "postgres", url))
    assert "s3cret" not in str(err.value) and "rag:***@127.0.0.1:9" in str(err.value)
