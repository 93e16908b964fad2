"""Facts (``knowledge``): label, value, where they came from, and how far to trust them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import numpy as np
import psycopg

from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required
from knowledgebase.util.lexical import search_text


@dataclass(frozen=True)
class KnowledgeRecord:
    id: int
    project_id: int | None
    task_id: str | None
    label: str
    value: str
    extracted_from: str | None
    confidence_score: Decimal
    source_kind: str
    source_command_id: int | None
    source_file_id: int | None
    source_chunk_hash: str | None
    status: str
    superseded_by: int | None
    is_stale: bool
    stale_since: datetime | None
    pinned: bool
    confirmations: int
    embedding_model_id: int | None
    created_at: datetime
    updated_at: datetime
    last_confirmed_at: datetime


@dataclass(frozen=True)
class NewKnowledge:
    """A fact to insert; ``label``, ``value`` and ``extracted_from`` are already redacted."""

    label: str
    value: str
    project_id: int | None = None
    task_id: str | None = None
    extracted_from: str | None = None
    confidence_score: float = 0.5
    source_kind: str = "manual"
    source_command_id: int | None = None
    source_file_id: int | None = None
    source_chunk_hash: str | None = None
    pinned: bool = False
    embedding: np.ndarray | None = None
    embedding_model_id: int | None = None


_COLS = columns(KnowledgeRecord)
INSERT_KNOWLEDGE = f"""
INSERT INTO knowledge (project_id, task_id, label, value, extracted_from, confidence_score, source_kind,
                       source_command_id, source_file_id, source_chunk_hash, pinned, embedding,
                       embedding_model_id, tsv)
VALUES (%(project_id)s, %(task_id)s, %(label)s, %(value)s, %(extracted_from)s, %(confidence_score)s,
        %(source_kind)s, %(source_command_id)s, %(source_file_id)s, %(source_chunk_hash)s, %(pinned)s,
        %(embedding)s, %(embedding_model_id)s, to_tsvector('simple', %(search_text)s))
RETURNING {_COLS}
"""
GET_KNOWLEDGE = f"SELECT {_COLS} FROM knowledge WHERE id = %s"
LIST_KNOWLEDGE = f"""
SELECT {_COLS} FROM knowledge
 WHERE (%(project_id)s::bigint IS NULL OR project_id = %(project_id)s)
   AND (%(label)s::text IS NULL OR label = %(label)s)
   AND (%(include_inactive)s OR status = 'active')
 ORDER BY id DESC
 LIMIT %(limit)s
"""


def insert_knowledge(conn: psycopg.Connection, new: NewKnowledge) -> KnowledgeRecord:
    params = {**new.__dict__, "search_text": search_text(f"{new.label}\n{new.value}")}
    row = fetch_one(conn, KnowledgeRecord, INSERT_KNOWLEDGE, params)
    assert row is not None
    return row


def get_knowledge(conn: psycopg.Connection, fact_id: int) -> KnowledgeRecord:
    return fetch_required(conn, KnowledgeRecord, GET_KNOWLEDGE, (fact_id,), f"fact #{fact_id}")


def list_knowledge(
    conn: psycopg.Connection,
    *,
    project_id: int | None = None,
    label: str | None = None,
    include_inactive: bool = False,
    limit: int = 100,
) -> list[KnowledgeRecord]:
    """Facts, newest first; superseded and forgotten ones only with ``include_inactive``."""
    return fetch_all(
        conn,
        KnowledgeRecord,
        LIST_KNOWLEDGE,
        {"project_id": project_id, "label": label, "include_inactive": include_inactive, "limit": limit},
    )
