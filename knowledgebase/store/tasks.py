"""Tasks (``tasks``): work with its context, history, status and a lease for claiming.

The lease queries (claim, renew, complete, fail, cancel, unclaim, merge context) are guarded updates
that return the changed task, or None when the guard matched nothing; ``coordination.taskqueue``
turns that None into the error that says why.
"""

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
CREATE_TASK = f"""
INSERT INTO tasks (id, project_id, title, context, priority)
VALUES (%(id)s, %(project_id)s, %(title)s, %(context)s, %(priority)s)
ON CONFLICT (id) DO NOTHING
RETURNING {_COLS}
"""
TASK_EXISTS = "SELECT 1 FROM tasks WHERE id = %s"

_T_COLS = columns(Task, "t")
CLAIM_NEXT_TASK = f"""
WITH next AS (
    SELECT id, (status = 'running' AND attempts >= %(max_attempts)s) AS give_up FROM tasks
     WHERE (status = 'pending' OR (status = 'running' AND lease_expires_at < now()))
       AND (%(project_id)s::bigint IS NULL OR project_id = %(project_id)s)
     ORDER BY priority DESC, created_at, id
     LIMIT 1
     FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
   SET status = CASE WHEN give_up THEN 'failed' ELSE 'running' END,
       owner = CASE WHEN give_up THEN t.owner ELSE %(owner)s END,
       lease_expires_at = CASE WHEN give_up THEN NULL ELSE now() + make_interval(secs => %(lease)s) END,
       attempts = CASE WHEN give_up THEN t.attempts ELSE t.attempts + 1 END,
       result = CASE WHEN give_up
                THEN format('given up: claimed %%s times, and the lease of the last claim (by %%s) ran out',
                            t.attempts, t.owner)
                ELSE t.result END,
       started_at = COALESCE(t.started_at, now()),
       finished_at = CASE WHEN give_up THEN now() END,
       updated_at = now()
  FROM next
 WHERE t.id = next.id
RETURNING {_T_COLS}
"""
# the owner condition shared by every change a claimer makes to its task
_HELD = "(%(owner)s::text IS NULL OR (status = 'running' AND owner = %(owner)s))"
HEARTBEAT = f"""
UPDATE tasks SET lease_expires_at = now() + make_interval(secs => %(lease)s), updated_at = now()
 WHERE id = %(id)s AND status = 'running' AND owner = %(owner)s
RETURNING {_COLS}
"""
COMPLETE_TASK = f"""
UPDATE tasks
   SET status = 'done', result = COALESCE(%(result)s, result), context = context || %(patch)s,
       owner = COALESCE(%(owner)s, owner), lease_expires_at = NULL, finished_at = now(), updated_at = now()
 WHERE id = %(id)s AND status IN ('pending', 'running') AND {_HELD}
RETURNING {_COLS}
"""
FAIL_TASK = f"""
UPDATE tasks
   SET status = CASE WHEN %(requeue)s THEN 'pending' ELSE 'failed' END,
       result = %(result)s, context = context || %(patch)s,
       owner = CASE WHEN %(requeue)s THEN NULL ELSE COALESCE(%(owner)s, owner) END,
       lease_expires_at = NULL, updated_at = now(),
       finished_at = CASE WHEN %(requeue)s THEN NULL ELSE now() END
 WHERE id = %(id)s AND status IN ('pending', 'running') AND {_HELD}
RETURNING {_COLS}
"""
CANCEL_TASK = f"""
UPDATE tasks
   SET status = 'cancelled', result = COALESCE(%(result)s, result), context = context || %(patch)s,
       lease_expires_at = NULL, finished_at = now(), updated_at = now()
 WHERE id = %(id)s AND status IN ('pending', 'running') AND {_HELD}
RETURNING {_COLS}
"""
RELEASE_TASK = f"""
UPDATE tasks SET status = 'pending', owner = NULL, lease_expires_at = NULL, context = context || %(patch)s,
       updated_at = now()
 WHERE id = %(id)s AND status = 'running' AND {_HELD}
RETURNING {_COLS}
"""
UPDATE_CONTEXT = f"""
UPDATE tasks SET context = context || %(patch)s, updated_at = now()
 WHERE id = %(id)s AND {_HELD}
RETURNING {_COLS}
"""
OPEN_TASK = f"""
INSERT INTO tasks (id, project_id, title, status, owner, started_at)
VALUES (%(id)s, %(project_id)s, %(title)s, 'running', %(owner)s, now())
ON CONFLICT (id) DO UPDATE
   SET status = 'running', owner = EXCLUDED.owner, finished_at = NULL, updated_at = now(),
       lease_expires_at = CASE WHEN tasks.owner = EXCLUDED.owner THEN tasks.lease_expires_at END
 WHERE tasks.status <> 'running' OR tasks.owner IS NULL OR tasks.owner = EXCLUDED.owner
    OR tasks.lease_expires_at < now()
RETURNING {_COLS}
"""
OPEN_TASK_IF_MISSING = """
INSERT INTO tasks (id, project_id, status, owner, started_at)
VALUES (%(id)s, %(project_id)s, 'running', %(owner)s, now())
ON CONFLICT (id) DO NOTHING
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


def insert_task_if_missing(
    conn: psycopg.Connection,
    task_id: str,
    *,
    project_id: int | None = None,
    title: str = "",
    context: dict[str, Any] | None = None,
    priority: int = 0,
) -> Task | None:
    """Create a pending task; None (and nothing changed) when the id is taken."""
    return fetch_one(conn, Task, CREATE_TASK, _params(task_id, project_id, title, context, priority))


def task_exists(conn: psycopg.Connection, task_id: str) -> bool:
    """Whether a task ``task_id`` exists."""
    return conn.execute(TASK_EXISTS, (task_id,)).fetchone() is not None


def claim_task(
    conn: psycopg.Connection, *, owner: str, lease_seconds: float, project_id: int | None, max_attempts: int
) -> Task | None:
    """Claim the next ready task (or fail it, given up, after ``max_attempts`` claims); None when none is ready."""
    params = {"owner": owner, "lease": lease_seconds, "project_id": project_id, "max_attempts": max_attempts}
    return fetch_one(conn, Task, CLAIM_NEXT_TASK, params)


def renew_lease(conn: psycopg.Connection, task_id: str, *, owner: str, lease_seconds: float) -> Task | None:
    """Extend ``owner``'s lease to ``lease_seconds`` from now; None unless ``owner`` holds the running task."""
    return fetch_one(conn, Task, HEARTBEAT, {"id": task_id, "owner": owner, "lease": lease_seconds})


def mark_task_done(
    conn: psycopg.Connection, task_id: str, *, owner: str | None, result: str | None, patch: dict[str, Any]
) -> Task | None:
    """Set a pending or running task held by ``owner`` (any, if None) done; None when the guard fails."""
    params = {"id": task_id, "owner": owner, "result": result, "patch": Jsonb(patch)}
    return fetch_one(conn, Task, COMPLETE_TASK, params)


def mark_task_failed(
    conn: psycopg.Connection,
    task_id: str,
    *,
    owner: str | None,
    result: str | None,
    requeue: bool,
    patch: dict[str, Any],
) -> Task | None:
    """Set a task held by ``owner`` failed (pending again with ``requeue``); None when the guard fails."""
    params = {"id": task_id, "owner": owner, "result": result, "requeue": requeue, "patch": Jsonb(patch)}
    return fetch_one(conn, Task, FAIL_TASK, params)


def mark_task_cancelled(
    conn: psycopg.Connection, task_id: str, *, owner: str | None, result: str | None, patch: dict[str, Any]
) -> Task | None:
    """Set a pending or running task held by ``owner`` cancelled; None when the guard fails."""
    params = {"id": task_id, "owner": owner, "result": result, "patch": Jsonb(patch)}
    return fetch_one(conn, Task, CANCEL_TASK, params)


def unclaim_task(conn: psycopg.Connection, task_id: str, *, owner: str | None, patch: dict[str, Any]) -> Task | None:
    """Put a running task held by ``owner`` back to pending with no owner; None when the guard fails."""
    return fetch_one(conn, Task, RELEASE_TASK, {"id": task_id, "owner": owner, "patch": Jsonb(patch)})


def merge_task_context(
    conn: psycopg.Connection, task_id: str, patch: dict[str, Any], *, owner: str | None
) -> Task | None:
    """Merge ``patch`` into the context of a task held by ``owner``; None when the guard fails."""
    return fetch_one(conn, Task, UPDATE_CONTEXT, {"id": task_id, "owner": owner, "patch": Jsonb(patch)})


def upsert_open_task(
    conn: psycopg.Connection, task_id: str, *, owner: str, project_id: int | None, title: str
) -> Task | None:
    """Create or take over a running, lease-free task for ``owner``; None when another holds a live lease."""
    params = {"id": task_id, "project_id": project_id, "title": title, "owner": owner}
    return fetch_one(conn, Task, OPEN_TASK, params)


def insert_open_task_if_missing(
    conn: psycopg.Connection, task_id: str, *, project_id: int | None, owner: str | None
) -> None:
    """Create ``task_id`` running and lease-free for ``owner`` unless it exists."""
    conn.execute(OPEN_TASK_IF_MISSING, {"id": task_id, "project_id": project_id, "owner": owner})
