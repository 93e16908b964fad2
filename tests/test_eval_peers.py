"""scripts/eval_peers.py: the peer rows of scripts/eval_retrieval.py (BM25 and cosine over 40-line windows,
Chroma over those windows and over our stored chunks), and the eval script without chromadb installed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import psycopg
import pytest

from knowledgebase.db import Database
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
QUERIES = ["email the invoice pdf to the customer", "count the words in a text", "open a pool of connections"]


@pytest.fixture
def peers() -> Iterator[ModuleType]:
    """scripts/eval_peers.py as a module (the eval scripts import their siblings)."""
    yield script("eval_peers")


def script(name: str) -> ModuleType:
    """A module of scripts/ (they import each other by their bare names)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(SCRIPTS))


def corpus(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    return root


def brute_force(vectors: np.ndarray, spans: list, query_vectors: np.ndarray) -> list[list]:
    return [[spans[j] for j in np.argsort(-(vectors @ q))[:10]] for q in query_vectors]


def test_without_chromadb_the_chroma_rows_are_skipped_after_one_message(
    peers: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "chromadb", None)  # what `import chromadb` meets when it is not installed
    client = peers.chroma_client(tmp_path / "chroma")
    assert client is None
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "chromadb is not installed" in message
    assert "pip install -e '.[eval]' for the Chroma rows" in message
    assert not (tmp_path / "chroma").exists()
    root = corpus(tmp_path / "corpus", SOURCES)
    found = peers.baselines(HashingEmbedder(), root, QUERIES, tmp_path / "cache", client)
    assert list(found.rankings) == ["bm25_windows", "embedding_windows"] and found.latency == {}
    assert [len(r) for r in found.rankings["embedding_windows"]] == [len(SOURCES)] * len(QUERIES)


def test_the_eval_script_starts_without_chromadb(tmp_path: Path) -> None:
    """eval_retrieval imports its sibling modules and parses its options when chromadb cannot be imported."""
    code = (
        "import sys; sys.modules['chromadb'] = None; sys.path.insert(0, sys.argv[1]); import eval_retrieval;"
        " sys.exit(eval_retrieval.main(['--help']))"
    )
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS.parent)}
    proc = subprocess.run([sys.executable, "-c", code, str(SCRIPTS)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "--no-baselines" in proc.stdout and "Chroma" in proc.stdout


def test_print_report_puts_the_chroma_rows_and_latency_beside_ours(capsys: pytest.CaptureFixture[str]) -> None:
    eval_retrieval = script("eval_retrieval")
    m = {"recall@1": 0.5, "recall@3": 0.6, "recall@10": 0.75, "mrr@10": 0.55}
    modes = {name: m for name in ("new", "embedding_windows", "chroma_windows", "chroma_chunks")}
    latency = {"chroma_windows": {"query_p50_ms": 0.81}, "chroma_chunks": {"query_p50_ms": 1.2}}
    result = {"queries": 4, "modes": modes, "search_p50_ms": 21.5, "embed_query_p50_ms": 6.0, "chroma_latency": latency}
    defaults = dict.fromkeys(("text", "chunk_text", "identifier", "text_saturation", "bm25", "bm25_saturation"), 0)
    eval_retrieval.print_report({"machine": "m", "sets": {"jinja": result}, "defaults": defaults})
    out = capsys.readouterr().out
    assert "  chroma_chunks            0.500     0.600      0.750    0.550" in out
    assert (
        "per query p50, the query vector given: new 21.5 ms (search + rerank), chroma_windows 0.81 ms,"
        " chroma_chunks 1.2 ms; embedding the query 6.0 ms" in out
    )


def test_chroma_ranks_the_windows_and_chunks_as_exact_cosine_does(peers: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("chromadb")
    embedder = HashingEmbedder()
    root = corpus(tmp_path / "corpus", SOURCES)
    wins = peers.windows(root)
    chunk_spans = [(w.path, w.start, w.start + 2) for w in wins]
    chunk_vectors = embedder.embed_documents([w.text.split("\n\n")[0] for w in wins])
    chunks = peers.Chunks(list(range(100, 100 + len(wins))), chunk_spans, chunk_vectors)
    client = peers.chroma_client(tmp_path / "chroma")
    found = peers.baselines(embedder, root, QUERIES, tmp_path / "cache", client, chunks, "proj")
    assert list(found.rankings) == ["bm25_windows", "embedding_windows", "chroma_windows", "chroma_chunks"]
    query_vectors = embedder.embed_documents(QUERIES)
    assert found.rankings["chroma_windows"] == found.rankings["embedding_windows"]
    assert found.rankings["chroma_chunks"] == brute_force(chunk_vectors, chunk_spans, query_vectors)
    assert found.rankings["chroma_chunks"][0][0] == ("src/mail.py", 1, 3)
    for mode in ("chroma_windows", "chroma_chunks"):
        assert found.latency[mode]["built"] is True and found.latency[mode]["items"] == len(wins)
        assert found.latency[mode]["query_p50_ms"] > 0


def test_the_chroma_store_is_reused_until_the_content_changes(peers: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("chromadb")
    embedder = HashingEmbedder()
    root = corpus(tmp_path / "corpus", SOURCES)
    client = peers.chroma_client(tmp_path / "chroma")
    first = peers.baselines(embedder, root, QUERIES, tmp_path / "cache", client, None, "proj")
    again = peers.baselines(embedder, root, QUERIES, tmp_path / "cache", client, None, "proj")
    assert first.latency["chroma_windows"]["built"] is True and again.latency["chroma_windows"]["built"] is False
    assert again.rankings == first.rankings
    (root / "src" / "text.py").write_text("def shout(text):\n    return text.upper()\n")
    changed = peers.baselines(embedder, root, QUERIES, tmp_path / "cache", client, None, "proj")
    assert changed.latency["chroma_windows"]["built"] is True
    names = [c.name for c in client.list_collections()]
    assert len(names) == 1 and names[0].startswith("windows-")  # the old content's collection is gone
    assert ("src/text.py", 1, 3) in changed.rankings["chroma_windows"][1]


def test_an_interrupted_chroma_build_is_rebuilt(peers: ModuleType, tmp_path: Path) -> None:
    pytest.importorskip("chromadb")
    client = peers.chroma_client(tmp_path / "chroma")
    vectors = np.eye(4, dtype=np.float32)
    spans = [(f"f{i}.py", 1, 40) for i in range(4)]
    ids = [str(i) for i in range(4)]
    peers.chroma_collection(client, "windows-k", "proj", ids[:2], spans[:2], vectors[:2])  # stopped halfway
    collection, built = peers.chroma_collection(client, "windows-k", "proj", ids, spans, vectors)
    assert built is True and collection.count() == 4
    ranked, timings = peers.chroma_rankings(collection, vectors[3:])
    assert ranked[0][0] == ("f3.py", 1, 40) and len(ranked[0]) == 4 and len(timings) == 1


def test_project_chunks_reads_the_stored_spans_and_vectors(
    peers: ModuleType, db: Database, conn: psycopg.Connection
) -> None:
    embedder = HashingEmbedder()
    index_files(conn, embedder, "peers", SOURCES)
    index_files(conn, embedder, "other", {"x.py": "def other():\n    return 1\n"})
    conn.commit()
    chunks = peers.project_chunks(db, "peers")
    assert ("src/mail.py", 1, 6) in chunks.spans and ("src/text.py", 6, 8) in chunks.spans
    assert not any(path == "x.py" for path, _, _ in chunks.spans)
    assert chunks.vectors.shape == (len(chunks.ids), embedder.dimension) == (len(chunks.spans), 384)
    with db.connection() as other:
        stored = other.execute("SELECT embedding FROM file_chunks WHERE id = %s", (chunks.ids[0],)).fetchone()
    assert stored is not None
    assert np.allclose(chunks.vectors[0], stored[0].to_numpy())
    assert peers.chunks_key(chunks) == peers.chunks_key(peers.project_chunks(db, "peers"))
    assert peers.project_chunks(db, "missing").ids == []


def test_the_benchmark_report_names_the_chroma_rows_and_their_latency() -> None:
    bench_report = script("bench_report")
    m = {"recall@1": 0.25, "recall@3": 0.5, "recall@10": 0.75, "mrr@10": 0.4}
    result = {
        "queries": 4,
        "modes": {"full": m, "chroma_windows": m, "chroma_chunks": m},
        "search_p50_ms": 21.46,
        "embed_query_p50_ms": 6.0,
        "chroma_latency": {"chroma_windows": {"query_p50_ms": 0.81}, "chroma_chunks": {"query_p50_ms": 1.26}},
    }
    defaults = {"text": 0.1, "identifier": 0.1, "text_saturation": 0.1}
    text = "\n".join(bench_report.render_retrieval({"sets": {"jinja": result}, "defaults": defaults, "grid": []}))
    assert "| peer: Chroma (HNSW, cosine) over our chunks and vectors | 0.25 | 0.75 | 0.4 |" in text
    assert (
        "Per query p50, the query vector given: ours 21.5 ms (search and rerank), Chroma chroma_windows 0.8 ms,"
        " chroma_chunks 1.3 ms; embedding the query 6.0 ms." in text
    )
