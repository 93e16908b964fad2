"""Tasks shared by many agents: create, claim with a lease, heartbeat, complete, fail, release.

A task is ``pending`` until an agent claims it; ``claim_next_task`` takes the highest-priority, oldest
task that is pending or whose lease has expired (its claimer died or stopped sending heartbeats),
with ``FOR UPDATE SKIP LOCKED`` so concurrent claimers never wait on each other nor take the same
task. Every change is one UPDATE statement, so a status change and its context change land together.
Leases are judged by the database clock, so agents on machines with skewed clocks agree. Titles,
contexts, results and reasons are redacted (``redact``) before they are stored.

Ownership: ``heartbeat``, ``complete_task``, ``fail_task``, ``release_task`` and ``update_context``
called with an ``owner`` succeed only while that owner holds the task (status running, owner equal;
a lease that ran out is still held until someone else claims the task); otherwise LeaseError says
who holds it. Called with ``owner=None`` they skip the check: an operator's override.

    pending --claim--> running --complete--> done
       ^                  |  \\--fail------> failed   (fail with requeue=True: back to pending)
       +----release-------+   lease expires: claimable again, attempts counts the claims;
                              after max_attempts claims, an expired lease fails it ("given up")
    pending or running --cancel--> cancelled

Every change of status, owner or attempt is appended to ``Task.history`` by a database trigger
(migration 0002), whichever path made it.
"""

from __future__ import annotations

import uuid
from dataclasses import fields
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from knowledgebase.db import Database, transaction
from knowledgebase.errors import InputError, LeaseError, NotFound
from knowledgebase.store._rows import columns, fetch_one
from knowledgebase.store.tasks import Task, find_task
from knowledgebase.util.redact import redact, redact_value

# claims after which a task whose lease ran out is failed rather than claimed again (KB_TASK_MAX_ATTEMPTS)
DEFAULT_MAX_ATTEMPTS = 5

_COLS = columns(Task)
_T_COLS = ", ".join(f"t.{f.name}" for f in fields(Task))

CREATE_TASK = f"""
INSERT INTO tasks (id, project_id, title, context, priority)
VALUES (%(id)s, %(project_id)s, %(title)s, %(context)s, %(priority)s)
ON CONFLICT (id) DO NOTHING
RETURNING {_COLS}
"""
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


def _check_lease_seconds(lease_seconds: float) -> float:
    if not lease_seconds > 0:
        raise InputError(f"a lease must last more than 0 seconds (got {lease_seconds})")
    return float(lease_seconds)


def _patch(context: dict[str, Any] | None) -> Jsonb:
    if context is not None and not isinstance(context, dict):
        raise InputError("a task context update must be a JSON object (its keys replace the task's)")
    return Jsonb(redact_value(context or {}))


def new_task_id() -> str:
    """A fresh, unique task id."""
    return "task-" + uuid.uuid4().hex[:12]


def create_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str | None = None,
    *,
    title: str = "",
    context: dict[str, Any] | None = None,
    project_id: int | None = None,
    priority: int = 0,
) -> Task:
    """A new pending task (id generated when not given); InputError if the id is taken."""
    task_id = new_task_id() if task_id is None else task_id
    if not task_id.strip():
        raise InputError("a task id must not be empty (leave it out to get a generated one)")
    params = {
        "id": task_id,
        "project_id": project_id,
        "title": redact(title),
        "context": _patch(context),
        "priority": priority,
    }
    with transaction(conn_or_db) as conn:
        task = fetch_one(conn, Task, CREATE_TASK, params)
    if task is None:
        raise InputError(f"task {task_id!r} exists already (see `kb tasks show {task_id}`)")
    return task


def claim_next_task(
    conn_or_db: psycopg.Connection | Database,
    *,
    owner: str,
    lease_seconds: float,
    project_id: int | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> Task | None:
    """Claim the next ready task for ``owner`` for ``lease_seconds``, or None when nothing is ready.

    A task claimed ``max_attempts`` times whose last lease ran out (its claimers keep dying on it) is
    not handed out again: it is failed, with a result and a history entry that say so.
    """
    if not owner or not owner.strip():
        raise InputError("a claimer needs a non-empty owner name (KB_AGENT_ID)")
    if max_attempts < 1:
        raise InputError(f"max_attempts must be at least 1 (got {max_attempts})")
    params = {
        "owner": owner,
        "lease": _check_lease_seconds(lease_seconds),
        "project_id": project_id,
        "max_attempts": max_attempts,
    }
    with transaction(conn_or_db) as conn:
        while (task := fetch_one(conn, Task, CLAIM_NEXT_TASK, params)) is not None and task.status == "failed":
            pass  # that one was given up (it is failed now, on its history): look at the next
        return task


def _changed(conn: psycopg.Connection, query: str, params: dict[str, Any], action: str) -> Task:
    """Run a guarded UPDATE; when it matched nothing, say why (missing, finished, held by another)."""
    task = fetch_one(conn, Task, query, params)
    if task is not None:
        return task
    current = find_task(conn, params["id"])
    if current is None:
        raise NotFound(f"task {params['id']!r} does not exist (see `kb tasks list`)")
    if current.status in ("done", "failed", "cancelled"):
        raise LeaseError(f"cannot {action} task {current.id!r}: it is {current.status} already")
    if current.status == "pending":
        raise LeaseError(f"cannot {action} task {current.id!r}: it is pending (claim it first)")
    raise LeaseError(
        f"cannot {action} task {current.id!r}: it is held by {current.owner!r} "
        f"(lease until {_when(current.lease_expires_at)}), not by {params.get('owner')!r}"
    )


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "no lease"


def heartbeat(conn_or_db: psycopg.Connection | Database, task_id: str, *, owner: str, lease_seconds: float) -> Task:
    """Extend ``owner``'s lease on the task to ``lease_seconds`` from now."""
    params = {"id": task_id, "owner": owner, "lease": _check_lease_seconds(lease_seconds)}
    with transaction(conn_or_db) as conn:
        return _changed(conn, HEARTBEAT, params, "extend the lease of")


def complete_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str | None,
    result: str | None = None,
    context: dict[str, Any] | None = None,
) -> Task:
    """Mark the task done with an optional result, merging ``context`` into its context in the same update."""
    params = {"id": task_id, "owner": owner, "result": redact(result), "patch": _patch(context)}
    with transaction(conn_or_db) as conn:
        return _changed(conn, COMPLETE_TASK, params, "complete")


def fail_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str | None,
    reason: str,
    requeue: bool = False,
    context: dict[str, Any] | None = None,
) -> Task:
    """Mark the task failed with ``reason`` (or put it back to pending with ``requeue``)."""
    params = {"id": task_id, "owner": owner, "result": redact(reason), "requeue": requeue, "patch": _patch(context)}
    with transaction(conn_or_db) as conn:
        return _changed(conn, FAIL_TASK, params, "fail")


def cancel_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str | None,
    reason: str | None = None,
    context: dict[str, Any] | None = None,
) -> Task:
    """Cancel a pending or running task for good: nobody claims it again (its history says who and why)."""
    params = {"id": task_id, "owner": owner, "result": redact(reason), "patch": _patch(context)}
    with transaction(conn_or_db) as conn:
        return _changed(conn, CANCEL_TASK, params, "cancel")


def release_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str | None,
    context: dict[str, Any] | None = None,
) -> Task:
    """Give the task back (pending, no owner) so another agent can claim it at once."""
    params = {"id": task_id, "owner": owner, "patch": _patch(context)}
    with transaction(conn_or_db) as conn:
        return _changed(conn, RELEASE_TASK, params, "release")


def update_context(
    conn_or_db: psycopg.Connection | Database, task_id: str, context: dict[str, Any], *, owner: str | None
) -> Task:
    """Merge ``context`` into the task's context (top-level keys replaced) in one atomic update."""
    params = {"id": task_id, "owner": owner, "patch": _patch(context)}
    with transaction(conn_or_db) as conn:
        return _changed(conn, UPDATE_CONTEXT, params, "update the context of")


def open_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str,
    project_id: int | None = None,
    title: str = "",
) -> Task:
    """Open (create or resume) a task that ``owner`` works on outside the queue, e.g. a CLI session.

    The task is running, owned by ``owner`` and has no lease, so no claimer takes it. A task held by
    another owner under a live lease is not taken over (LeaseError).
    """
    if not task_id or not task_id.strip():
        raise InputError("a task id must not be empty")
    params = {"id": task_id, "project_id": project_id, "title": redact(title), "owner": owner}
    with transaction(conn_or_db) as conn:
        task = fetch_one(conn, Task, OPEN_TASK, params)
        if task is None:
            current = find_task(conn, task_id)
            holder = current.owner if current else None
            until = _when(current.lease_expires_at) if current else "no lease"
            raise LeaseError(f"task {task_id!r} is held by {holder!r} (lease until {until})")
        return task


def open_task_if_missing(
    conn: psycopg.Connection, task_id: str, *, project_id: int | None = None, owner: str | None = None
) -> None:
    """Create ``task_id`` as an open task (running, no lease) unless it exists; used by the audit log."""
    conn.execute(OPEN_TASK_IF_MISSING, {"id": task_id, "project_id": project_id, "owner": owner})


def get_task(conn_or_db: psycopg.Connection | Database, task_id: str) -> Task:
    """The task ``task_id``; NotFound says how to list tasks."""
    with transaction(conn_or_db) as conn:
        task = find_task(conn, task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} does not exist (see `kb tasks list`)")
    return task
