"""Moving a store to another embedding model (``kb reembed``).

``reembed_store(db, embedder)`` makes ``embedder`` the store's model and re-embeds every chunk and
fact that holds another model's vector (or none):

1. Under an exclusive ``(REEMBED_LOCK, 0)`` advisory lock (``knowledgebase.db.locks``; every populate
   holds it shared, so the two never interleave), in one transaction: when the dimension changes,
   drop the two HNSW indexes, retype ``file_chunks.embedding`` and ``knowledge.embedding`` to
   ``vector(new dimension)`` (old vectors become NULL: they cannot be converted) and clear their
   model ids; then record and activate the new model. From here on, agents configured with the old
   model get ModelMismatch.
2. Re-embed chunks (the text is rebuilt exactly with ``chunking.embedding_text``; a content hash
   already embedded by the new model is reused) and facts (``"label: value"``, as
   ``knowledgebase.facts`` embeds them), in batches committed one by one, walking ids in order.
3. Recreate the HNSW indexes if they were dropped (building once after the bulk load is much faster
   than maintaining them row by row).

An interrupted run leaves a consistent store on the new model with some rows not yet embedded;
running ``kb reembed`` again finishes the job (and recreates any missing index).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from knowledgebase.db.locks import REEMBED_LOCK, Lock, hold_locks
from knowledgebase.embedding import Embedder
from knowledgebase.facts import fact_embedding_text
from knowledgebase.index.chunking import embedding_text
from knowledgebase.store import (
    activate_model,
    active_model,
    chunk_vectors_by_hash,
    upsert_model,
    vector_column_dimension,
)

if TYPE_CHECKING:
    import psycopg

    from knowledgebase.db import Database

BATCH = 256
VECTOR_TABLES = ("file_chunks", "knowledge")
HNSW_INDEXES = {"file_chunks": "file_chunks_embedding_hnsw", "knowledge": "knowledge_embedding_hnsw"}
CHUNKS_TO_EMBED = """
SELECT c.id, f.file_path, c.symbol, c.content, c.content_hash
  FROM file_chunks c JOIN project_files f ON f.id = c.file_id
 WHERE c.id > %(after)s AND (c.embedding IS NULL OR c.embedding_model_id IS DISTINCT FROM %(model_id)s)
 ORDER BY c.id
 LIMIT %(limit)s
"""
FACTS_TO_EMBED = """
SELECT id, label, value FROM knowledge
 WHERE id > %(after)s AND (embedding IS NULL OR embedding_model_id IS DISTINCT FROM %(model_id)s)
 ORDER BY id
 LIMIT %(limit)s
"""
COUNT_TO_EMBED = """
SELECT (SELECT count(*) FROM file_chunks WHERE embedding IS NULL OR embedding_model_id IS DISTINCT FROM %(model_id)s),
       (SELECT count(*) FROM knowledge WHERE embedding IS NULL OR embedding_model_id IS DISTINCT FROM %(model_id)s)
"""
UPDATE_CHUNK = "UPDATE file_chunks SET embedding = %s, embedding_model_id = %s WHERE id = %s"
UPDATE_FACT = "UPDATE knowledge SET embedding = %s, embedding_model_id = %s WHERE id = %s"
INDEX_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"


@dataclass(frozen=True)
class ReembedProgress:
    """How far a re-embedding is (``phase``: chunks, facts, indexing, done)."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ReembedReport:
    """What ``reembed_store`` did."""

    model: str
    dimension: int
    previous_model: str | None
    previous_dimension: int | None
    retyped: bool
    chunks_embedded: int
    chunks_reused: int
    facts_embedded: int
    seconds: float


def reembed_store(
    db: Database, embedder: Embedder, progress: Callable[[ReembedProgress], None] | None = None
) -> ReembedReport:
    """Make ``embedder`` the store's model and re-embed every chunk and fact that needs it."""
    notify = progress or (lambda _: None)
    started = time.perf_counter()
    with hold_locks(db, [Lock(REEMBED_LOCK, 0)], on_wait=lambda: notify(ReembedProgress("waiting", 0, 0))):
        with db.connection() as conn:
            previous = active_model(conn)
            retyped = vector_column_dimension(conn) != embedder.dimension
            if retyped:
                _retype(conn, embedder.dimension)
            model_id = activate_model(conn, upsert_model(conn, embedder.name, embedder.dimension).id).id
            row = conn.execute(COUNT_TO_EMBED, {"model_id": model_id}).fetchone()
            total = int(row[0]) + int(row[1]) if row else 0
        counts = _Counts(total=total, notify=notify)
        _reembed_chunks(db, embedder, model_id, counts)
        _reembed_facts(db, embedder, model_id, counts)
        notify(ReembedProgress("indexing", counts.done, total))
        _ensure_indexes(db)
    notify(ReembedProgress("done", counts.done, total))
    return ReembedReport(
        model=embedder.name,
        dimension=embedder.dimension,
        previous_model=previous.name if previous else None,
        previous_dimension=previous.dimension if previous else None,
        retyped=retyped,
        chunks_embedded=counts.chunks_embedded,
        chunks_reused=counts.chunks_reused,
        facts_embedded=counts.facts_embedded,
        seconds=time.perf_counter() - started,
    )


@dataclass
class _Counts:
    total: int
    notify: Callable[[ReembedProgress], None]
    done: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    facts_embedded: int = 0

    def add(self, phase: str, rows: int) -> None:
        self.done += rows
        self.notify(ReembedProgress(phase, self.done, self.total))


def _retype(conn: psycopg.Connection, dimension: int) -> None:
    """Give both vector columns the new dimension (emptying them) and drop their HNSW indexes."""
    from psycopg import sql

    vector_type = sql.SQL("vector({})").format(sql.Literal(int(dimension)))
    for table in VECTOR_TABLES:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(HNSW_INDEXES[table])))
        conn.execute(
            sql.SQL("ALTER TABLE {} ALTER COLUMN embedding TYPE {} USING NULL").format(
                sql.Identifier(table), vector_type
            )
        )
        conn.execute(sql.SQL("UPDATE {} SET embedding_model_id = NULL").format(sql.Identifier(table)))


def _reembed_chunks(db: Database, embedder: Embedder, model_id: int, counts: _Counts) -> None:
    after = 0
    while True:
        with db.connection() as conn:
            rows = conn.execute(CHUNKS_TO_EMBED, {"after": after, "model_id": model_id, "limit": BATCH}).fetchall()
            if not rows:
                return
            texts = {
                content_hash: embedding_text(path, symbol, content) for _, path, symbol, content, content_hash in rows
            }
            vectors = chunk_vectors_by_hash(conn, list(texts), model_id)
        missing = [content_hash for content_hash in texts if content_hash not in vectors]
        if missing:
            vectors.update(zip(missing, embedder.embed_documents([texts[h] for h in missing]), strict=True))
        with db.connection() as conn, conn.cursor() as cur:
            cur.executemany(UPDATE_CHUNK, [(vectors[row[4]], model_id, row[0]) for row in rows])
        counts.chunks_embedded += len(missing)
        counts.chunks_reused += len(rows) - len(missing)
        counts.add("chunks", len(rows))
        after = rows[-1][0]


def _reembed_facts(db: Database, embedder: Embedder, model_id: int, counts: _Counts) -> None:
    after = 0
    while True:
        with db.connection() as conn:
            rows = conn.execute(FACTS_TO_EMBED, {"after": after, "model_id": model_id, "limit": BATCH}).fetchall()
        if not rows:
            return
        vectors: np.ndarray = embedder.embed_documents([fact_embedding_text(label, value) for _, label, value in rows])
        with db.connection() as conn, conn.cursor() as cur:
            cur.executemany(
                UPDATE_FACT, [(vector, model_id, row[0]) for row, vector in zip(rows, vectors, strict=True)]
            )
        counts.facts_embedded += len(rows)
        counts.add("facts", len(rows))
        after = rows[-1][0]


def _ensure_indexes(db: Database) -> None:
    """Create any missing HNSW index (after a retype, or a run interrupted before this step)."""
    from psycopg import sql

    with db.connection() as conn:
        for table, index in HNSW_INDEXES.items():
            row = conn.execute(INDEX_EXISTS, (index,)).fetchone()
            if not (row and row[0]):
                conn.execute(
                    sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops)").format(
                        sql.Identifier(index), sql.Identifier(table)
                    )
                )
