"""Embedding models: which model (name, dimension) produced the stored vectors."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from knowledgebase.store._rows import columns, fetch_all, fetch_one


@dataclass(frozen=True)
class EmbeddingModelRecord:
    id: int
    name: str
    dimension: int
    is_active: bool
    created_at: datetime


_COLS = columns(EmbeddingModelRecord)
ACTIVE_MODEL = f"SELECT {_COLS} FROM embedding_models WHERE is_active"
LIST_MODELS = f"SELECT {_COLS} FROM embedding_models ORDER BY id"
UPSERT_MODEL = f"""
INSERT INTO embedding_models (name, dimension) VALUES (%s, %s)
ON CONFLICT (name, dimension) DO UPDATE SET name = EXCLUDED.name
RETURNING {_COLS}
"""
DEACTIVATE_ALL = "UPDATE embedding_models SET is_active = false WHERE is_active"
ACTIVATE = f"UPDATE embedding_models SET is_active = true WHERE id = %s RETURNING {_COLS}"
VECTOR_COLUMN_DIMENSION = """
SELECT atttypmod FROM pg_attribute
 WHERE attrelid = 'file_chunks'::regclass AND attname = 'embedding'
"""


def active_model(conn: psycopg.Connection) -> EmbeddingModelRecord | None:
    """The model whose vectors the store holds, or None before anything was embedded."""
    return fetch_one(conn, EmbeddingModelRecord, ACTIVE_MODEL)


def list_models(conn: psycopg.Connection) -> list[EmbeddingModelRecord]:
    return fetch_all(conn, EmbeddingModelRecord, LIST_MODELS)


def upsert_model(conn: psycopg.Connection, name: str, dimension: int) -> EmbeddingModelRecord:
    """The record for (name, dimension), created if new; does not change which model is active."""
    row = fetch_one(conn, EmbeddingModelRecord, UPSERT_MODEL, (name, dimension))
    assert row is not None
    return row


def activate_model(conn: psycopg.Connection, model_id: int) -> EmbeddingModelRecord:
    """Make ``model_id`` the store's one active model."""
    conn.execute(DEACTIVATE_ALL)
    row = fetch_one(conn, EmbeddingModelRecord, ACTIVATE, (model_id,))
    assert row is not None
    return row


def vector_column_dimension(conn: psycopg.Connection) -> int:
    """The dimension the vector columns are typed with (the same on chunks and knowledge)."""
    row = conn.execute(VECTOR_COLUMN_DIMENSION).fetchone()
    assert row is not None
    return int(row[0])
