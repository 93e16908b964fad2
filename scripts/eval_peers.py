"""Peers of ``scripts/eval_retrieval.py``: what a user would pick instead, over the same corpora with the
same embedding model.

- ``bm25_windows``: Okapi BM25 (rank-bm25) over non-overlapping 40-line windows of every text file.
- ``embedding_windows``: brute-force cosine over the same windows (their vectors cached as
  ``windows-<key>.npy`` in the eval home's cache dir).
- ``chroma_windows``: the same window vectors in Chroma (``chromadb.PersistentClient``, its HNSW index,
  cosine space), queried with the same query vectors: the typical Chroma setup.
- ``chroma_chunks``: our own chunks in Chroma: the path, lines and stored vector of every ``file_chunks``
  row of the set's project, read from the eval database (nothing is re-embedded).

Chroma is optional (``pip install -e '.[eval]'``): without it its rows are skipped after one message.
Its store lives under the eval home (``home/chroma``), one collection per content (a hash of the window
texts, or of the chunks' ids, spans and vectors): reused while the content is unchanged, replaced when it
changes. Each Chroma query is timed (one query vector per call, as a user's search would run).
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from knowledgebase.db import Database
from knowledgebase.embedding import Embedder
from knowledgebase.util.lexical import identifier_parts

WINDOW_LINES = 40
TOP_K = 10
WINDOW_SUFFIXES = (".py", ".md", ".rst", ".txt", ".toml", ".cfg", ".ini", ".yml", ".yaml", ".json", ".html")
INSTALL_HINT = "pip install -e '.[eval]' for the Chroma rows"

Span = tuple[str, int, int]


@dataclass(frozen=True)
class Window:
    path: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Chunks:
    """The chunks of one project as stored: ids, spans (path, start line, end line) and vectors."""

    ids: list[int]
    spans: list[Span]
    vectors: np.ndarray


@dataclass(frozen=True)
class Peers:
    """Each peer's top 10 spans per query, by mode, and the Chroma query latency per Chroma mode."""

    rankings: dict[str, list[list[Span]]]
    latency: dict[str, dict[str, Any]] = field(default_factory=dict)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def windows(root: Path) -> list[Window]:
    """Non-overlapping 40-line windows of every text file under ``root`` a user would index."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WINDOW_SUFFIXES):
        try:
            lines = path.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError:
            continue
        relative = path.relative_to(root).as_posix()
        for start in range(0, len(lines), WINDOW_LINES):
            text = "\n".join(lines[start : start + WINDOW_LINES])
            if text.strip():
                out.append(Window(relative, start + 1, min(start + WINDOW_LINES, len(lines)), text))
    return out


def tokenize(text: str) -> list[str]:
    """Lower-cased words and identifier parts, for BM25."""
    tokens = []
    for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+", text):
        tokens.append(ident.lower())
        parts = identifier_parts(ident)
        if len(parts) > 1:
            tokens += parts
    return tokens


def baselines(
    embedder: Embedder,
    root: Path,
    queries: Sequence[str],
    cache: Path,
    chroma: Any | None = None,
    chunks: Chunks | None = None,
    corpus: str = "",
) -> Peers:
    """BM25 and brute-force embedding rankings of 40-line windows, top 10 per query; with a Chroma
    client (``chroma_client``), also Chroma over the windows and, given ``chunks``, over our chunks
    (``corpus`` names the content in the Chroma store, so a changed corpus replaces its collections)."""
    from rank_bm25 import BM25Okapi

    wins = windows(root)
    texts = [w.text for w in wins]
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    cached = cache / f"windows-{key}.npy"
    if cached.exists():
        vectors = np.load(cached)
    else:
        started = time.perf_counter()
        vectors = embedder.embed_documents(texts)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors)
        log(f"  embedded {len(texts)} windows in {time.perf_counter() - started:.0f} s")
    bm25 = BM25Okapi([tokenize(t) for t in texts])
    query_vectors = embedder.embed_documents(queries)
    out: dict[str, list[list[Span]]] = {"bm25_windows": [], "embedding_windows": []}
    for text, qvec in zip(queries, query_vectors, strict=True):
        scores = bm25.get_scores(tokenize(text))
        out["bm25_windows"].append([(wins[j].path, wins[j].start, wins[j].end) for j in np.argsort(-scores)[:TOP_K]])
        cosine = vectors @ qvec
        out["embedding_windows"].append(
            [(wins[j].path, wins[j].start, wins[j].end) for j in np.argsort(-cosine)[:TOP_K]]
        )
    peers = Peers(out)
    if chroma is None:
        return peers
    spans = [(w.path, w.start, w.end) for w in wins]
    by_mode = {"chroma_windows": (f"windows-{key}", [str(i) for i in range(len(wins))], spans, vectors)}
    if chunks is not None:
        chunk_key = chunks_key(chunks)
        by_mode["chroma_chunks"] = (f"chunks-{chunk_key}", [str(i) for i in chunks.ids], chunks.spans, chunks.vectors)
    for mode, (name, ids, mode_spans, mode_vectors) in by_mode.items():
        started = time.perf_counter()
        collection, built = chroma_collection(chroma, name, corpus, ids, mode_spans, mode_vectors)
        seconds = time.perf_counter() - started
        if built:
            log(f"  chroma: {name} built ({len(ids)} items) in {seconds:.1f} s")
        ranked, timings = chroma_rankings(collection, query_vectors)
        out[mode] = ranked
        peers.latency[mode] = {
            "items": len(ids),
            "built": built,
            "build_seconds": round(seconds, 1) if built else None,
            "query_p50_ms": round(float(np.percentile(timings, 50)) * 1000, 2) if timings else None,
            "query_p95_ms": round(float(np.percentile(timings, 95)) * 1000, 2) if timings else None,
        }
    return peers


# --------------------------------------------------------------------------- Chroma

CHUNKS_SQL = """
SELECT c.id, f.path, c.start_line, c.end_line, c.embedding FROM file_chunks c
  JOIN project_files f ON f.id = c.file_id JOIN projects p ON p.id = c.project_id
 WHERE p.name = %s AND c.embedding IS NOT NULL ORDER BY c.id
"""


def project_chunks(db: Database, project: str) -> Chunks:
    """Every embedded chunk of ``project`` as stored (a read: nothing is written or re-embedded)."""
    with db.connection() as conn:
        rows = conn.execute(CHUNKS_SQL, (project,)).fetchall()
    vectors = (
        np.stack([np.asarray(r[4].to_numpy(), dtype=np.float32) for r in rows])
        if rows
        else np.zeros((0, 0), dtype=np.float32)
    )
    return Chunks([int(r[0]) for r in rows], [(r[1], int(r[2]), int(r[3])) for r in rows], vectors)


def chunks_key(chunks: Chunks) -> str:
    """A hash of the chunks' ids, spans and vectors: it changes whenever what Chroma would hold does."""
    digest = hashlib.sha256()
    for chunk_id, (path, start, end) in zip(chunks.ids, chunks.spans, strict=True):
        digest.update(f"{chunk_id}\0{path}\0{start}\0{end}\n".encode())
    digest.update(np.ascontiguousarray(chunks.vectors, dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


def chroma_client(path: Path) -> Any | None:
    """A persistent Chroma client storing under ``path``, or None (after one message) without chromadb."""
    try:
        import chromadb
        from chromadb.config import Settings as ChromaSettings
    except ImportError:
        log(f"chromadb is not installed: no Chroma rows ({INSTALL_HINT})")
        return None
    path.mkdir(parents=True, exist_ok=True)
    return chromadb.PersistentClient(path=str(path), settings=ChromaSettings(anonymized_telemetry=False))


def chroma_collection(
    client: Any, name: str, corpus: str, ids: Sequence[str], spans: Sequence[Span], vectors: np.ndarray
) -> tuple[Any, bool]:
    """The collection ``name`` holding ``vectors`` (cosine space) with their spans as metadata, and
    whether it was built now: an existing one with every item is reused; one of the same corpus and
    kind under another name (an older content key) is deleted."""
    kind = name.split("-", 1)[0]
    existing = None
    for collection in client.list_collections():
        meta = collection.metadata or {}
        if collection.name == name:
            existing = collection
        elif corpus and meta.get("corpus") == corpus and meta.get("kind") == kind:
            client.delete_collection(collection.name)
    if existing is not None:
        if existing.count() == len(ids):
            return existing, False
        client.delete_collection(name)  # an interrupted build
    collection = client.create_collection(
        name,
        configuration={"hnsw": {"space": "cosine"}},
        metadata={"corpus": corpus, "kind": kind},
        embedding_function=None,
    )
    batch = max(1, min(5000, client.get_max_batch_size()))
    for start in range(0, len(ids), batch):
        stop = start + batch
        collection.add(
            ids=list(ids[start:stop]),
            embeddings=np.asarray(vectors[start:stop], dtype=np.float32),
            metadatas=[{"path": p, "start": s, "end": e} for p, s, e in spans[start:stop]],
        )
    return collection, True


def chroma_rankings(collection: Any, query_vectors: np.ndarray) -> tuple[list[list[Span]], list[float]]:
    """The top 10 spans of each query vector, one query per call, and each call's seconds."""
    ranked, timings = [], []
    for qvec in query_vectors:
        started = time.perf_counter()
        result = collection.query(query_embeddings=[qvec], n_results=TOP_K, include=["metadatas"])
        timings.append(time.perf_counter() - started)
        metadatas = (result.get("metadatas") or [[]])[0] or []
        ranked.append([(str(m["path"]), int(m["start"]), int(m["end"])) for m in metadatas])
    return ranked, timings
