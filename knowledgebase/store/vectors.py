"""The vector columns (``file_chunks.embedding``, ``knowledge.embedding``): their type, their HNSW
indexes, and how many rows still lack a vector of the active model."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from knowledgebase.store._rows import fetch_one
from knowledgebase.store.summaries import delete_all_summaries

VECTOR_TABLES = ("file_chunks", "knowledge")
HNSW_INDEXES = {"file_chunks": "file_chunks_embedding_hnsw", "knowledge": "knowledge_embedding_hnsw"}


@dataclass(frozen=True)
class EmbeddingBacklog:
    """How many chunks and facts hold no vector of a model (or none at all)."""

    chunks: int
    facts: int


COUNT_TO_EMBED = """
SELECT (SELECT count(*) FROM file_chunks c
         WHERE c.embedding IS NULL OR c.embedding_model_id IS DISTINCT FROM %(model_id)s
            OR (c.symbol IS NOT NULL AND NOT EXISTS (SELECT FROM chunk_summaries s WHERE s.chunk_id = c.id)))
           AS chunks,
       (SELECT count(*) FROM knowledge WHERE embedding IS NULL OR embedding_model_id IS DISTINCT FROM %(model_id)s)
           AS facts
"""
INDEX_EXISTS = "SELECT to_regclass(%s) IS NOT NULL"
VECTOR_TYPE = sql.SQL("vector({})")
DROP_INDEX = sql.SQL("DROP INDEX IF EXISTS {}")
RETYPE_EMBEDDING = sql.SQL("ALTER TABLE {} ALTER COLUMN embedding TYPE {} USING NULL")
CLEAR_MODEL_IDS = sql.SQL("UPDATE {} SET embedding_model_id = NULL")
CREATE_HNSW_INDEX = sql.SQL("CREATE INDEX {} ON {} USING hnsw (embedding vector_cosine_ops)")


def embedding_backlog(conn: psycopg.Connection, model_id: int) -> EmbeddingBacklog:
    """How many chunks and facts still need a vector of ``model_id``."""
    row = fetch_one(conn, EmbeddingBacklog, COUNT_TO_EMBED, {"model_id": model_id})
    assert row is not None
    return row


def retype_vector_columns(conn: psycopg.Connection, dimension: int) -> None:
    """Give both vector columns the type ``vector(dimension)``, emptying them (old vectors cannot be
    converted) and clearing their model ids; their HNSW indexes are dropped first. The chunks' summaries
    (``chunk_summaries``, of no fixed dimension) go with their vectors."""
    delete_all_summaries(conn)
    vector_type = VECTOR_TYPE.format(sql.Literal(int(dimension)))
    for table in VECTOR_TABLES:
        conn.execute(DROP_INDEX.format(sql.Identifier(HNSW_INDEXES[table])))
        conn.execute(RETYPE_EMBEDDING.format(sql.Identifier(table), vector_type))
        conn.execute(CLEAR_MODEL_IDS.format(sql.Identifier(table)))


def create_missing_hnsw_indexes(conn: psycopg.Connection) -> None:
    """Create the HNSW index of each vector column that has none."""
    for table, index in HNSW_INDEXES.items():
        row = conn.execute(INDEX_EXISTS, (index,)).fetchone()
        if not (row and row[0]):
            conn.execute(CREATE_HNSW_INDEX.format(sql.Identifier(index), sql.Identifier(table)))
