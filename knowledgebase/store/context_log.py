"""Assembled context blocks (``context_log``): what an agent was shown, and why."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required


@dataclass(frozen=True)
class ContextRecord:
    id: int
    project_id: int | None
    task_id: str | None
    prompt: str
    budget: int
    token_count: int
    items: list[dict[str, Any]]
    text: str
    created_at: datetime


_COLS = columns(ContextRecord)
INSERT_CONTEXT = f"""
INSERT INTO context_log (project_id, task_id, prompt, budget, token_count, items, text)
VALUES (%(project_id)s, %(task_id)s, %(prompt)s, %(budget)s, %(token_count)s, %(items)s, %(text)s)
RETURNING {_COLS}
"""
GET_CONTEXT = f"SELECT {_COLS} FROM context_log WHERE id = %s"
LIST_CONTEXT = f"""
SELECT {_COLS} FROM context_log
 WHERE (%(task_id)s::text IS NULL OR task_id = %(task_id)s)
 ORDER BY id DESC LIMIT %(limit)s
"""


def insert_context_record(
    conn: psycopg.Connection,
    *,
    prompt: str,
    budget: int,
    token_count: int,
    items: list[dict[str, Any]],
    text: str,
    project_id: int | None = None,
    task_id: str | None = None,
) -> ContextRecord:
    params = {
        "project_id": project_id,
        "task_id": task_id,
        "prompt": prompt,
        "budget": budget,
        "token_count": token_count,
        "items": Jsonb(items),
        "text": text,
    }
    row = fetch_one(conn, ContextRecord, INSERT_CONTEXT, params)
    assert row is not None
    return row


def get_context_record(conn: psycopg.Connection, record_id: int) -> ContextRecord:
    return fetch_required(conn, ContextRecord, GET_CONTEXT, (record_id,), f"context record #{record_id}")


def list_context_records(
    conn: psycopg.Connection, *, task_id: str | None = None, limit: int = 50
) -> list[ContextRecord]:
    return fetch_all(conn, ContextRecord, LIST_CONTEXT, {"task_id": task_id, "limit": limit})
