"""Tasks (``tasks``): work with its context, history, status and a lease for claiming."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from knowledgebase.errors import InputError
from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required

TASK_STATUSES = ("pending", "running", "done", "failed", "cancelled")


@dataclass(frozen=True)
class Task:
    id: str
    project_id: int | None
    title: str
    context: dict[str, Any]
    status: str
    priority: int
    owner: str | None
    lease_expires_at: datetime | None
    attempts: int
    result: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    # status changes, oldest first: {"at", "status", "owner", "attempt", "note"}, kept by a trigger
    history: list[dict[str, Any]]


_COLS = columns(Task)
INSERT_TASK = f"""
INSERT INTO tasks (id, project_id, title, context, priority)
VALUES (%(id)s, %(project_id)s, %(title)s, %(context)s, %(priority)s)
RETURNING {_COLS}
"""
ENSURE_TASK = f"""
INSERT INTO tasks (id, project_id, title, context, priority)
VALUES (%(id)s, %(project_id)s, %(title)s, %(context)s, %(priority)s)
ON CONFLICT (id) DO UPDATE SET updated_at = tasks.updated_at
RETURNING {_COLS}
"""
GET_TASK = f"SELECT {_COLS} FROM tasks WHERE id = %s"
LIST_TASKS = f"""
SELECT {_COLS} FROM tasks
 WHERE (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(project_id)s::bigint IS NULL OR project_id = %(project_id)s)
 ORDER BY created_at DESC, id
 LIMIT %(limit)s
"""


def _params(task_id: str, project_id: int | None, title: str, context: dict[str, Any] | None, priority: int) -> dict:
    if not task_id or not task_id.strip():
        raise InputError("a task id must not be empty")
    return {
        "id": task_id,
        "project_id": project_id,
        "title": title,
        "context": Jsonb(context or {}),
        "priority": priority,
    }


def insert_task(
    conn: psycopg.Connection,
    task_id: str,
    *,
    project_id: int | None = None,
    title: str = "",
    context: dict[str, Any] | None = None,
    priority: int = 0,
) -> Task:
    """Create a pending task; a duplicate id raises psycopg's UniqueViolation."""
    row = fetch_one(conn, Task, INSERT_TASK, _params(task_id, project_id, title, context, priority))
    assert row is not None
    return row


def ensure_task(
    conn: psycopg.Connection,
    task_id: str,
    *,
    project_id: int | None = None,
    title: str = "",
    context: dict[str, Any] | None = None,
    priority: int = 0,
) -> Task:
    """The task ``task_id``, created as pending if it does not exist yet."""
    row = fetch_one(conn, Task, ENSURE_TASK, _params(task_id, project_id, title, context, priority))
    assert row is not None
    return row


def get_task(conn: psycopg.Connection, task_id: str) -> Task:
    return fetch_required(conn, Task, GET_TASK, (task_id,), f"task {task_id!r}")


def find_task(conn: psycopg.Connection, task_id: str) -> Task | None:
    return fetch_one(conn, Task, GET_TASK, (task_id,))


def list_tasks(
    conn: psycopg.Connection, *, status: str | None = None, project_id: int | None = None, limit: int = 100
) -> list[Task]:
    if status is not None and status not in TASK_STATUSES:
        raise InputError(f"unknown task status {status!r}; use one of {', '.join(TASK_STATUSES)}")
    return fetch_all(conn, Task, LIST_TASKS, {"status": status, "project_id": project_id, "limit": limit})
