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
(migration 0002), whichever path made it. The statements themselves live in ``store.tasks``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import psycopg

from knowledgebase.config import MAX_DB_INT, MAX_LEASE_SECONDS
from knowledgebase.db import Database, transaction
from knowledgebase.errors import InputError, LeaseError, NotFound
from knowledgebase.store.tasks import (
    Task,
    claim_task,
    find_task,
    insert_open_task_if_missing,
    insert_task_if_missing,
    mark_task_cancelled,
    mark_task_done,
    mark_task_failed,
    merge_task_context,
    renew_lease,
    unclaim_task,
    upsert_open_task,
)
from knowledgebase.util.redact import redact, redact_text, redact_value

# claims after which a task whose lease ran out is failed rather than claimed again (KB_TASK_MAX_ATTEMPTS)
DEFAULT_MAX_ATTEMPTS = 5


def _check_lease_seconds(lease_seconds: float) -> float:
    if not 0 < lease_seconds <= MAX_LEASE_SECONDS:
        raise InputError(
            f"a lease must last more than 0 seconds and at most {MAX_LEASE_SECONDS} (got {lease_seconds}); "
            "renew a long one with `kb tasks heartbeat`"
        )
    return float(lease_seconds)


def _check_priority(priority: int) -> int:
    if not -MAX_DB_INT - 1 <= priority <= MAX_DB_INT:
        raise InputError(f"a priority must lie between {-MAX_DB_INT - 1} and {MAX_DB_INT} (got {priority})")
    return priority


def _patch(context: dict[str, Any] | None) -> dict[str, Any]:
    if context is not None and not isinstance(context, dict):
        raise InputError("a task context update must be a JSON object (its keys replace the task's)")
    patch: dict[str, Any] = redact_value(context or {})
    return patch


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
    title, patch, priority = redact_text(title).text, _patch(context), _check_priority(priority)
    with transaction(conn_or_db) as conn:
        task = insert_task_if_missing(
            conn, task_id, project_id=project_id, title=title, context=patch, priority=priority
        )
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
    lease = _check_lease_seconds(lease_seconds)
    with transaction(conn_or_db) as conn:
        while (
            task := claim_task(conn, owner=owner, lease_seconds=lease, project_id=project_id, max_attempts=max_attempts)
        ) is not None and task.status == "failed":
            pass  # that one was given up (it is failed now, on its history): look at the next
        return task


def _changed(conn: psycopg.Connection, task: Task | None, task_id: str, owner: str | None, action: str) -> Task:
    """The task a guarded update changed; when it matched nothing, say why (missing, finished, held by another)."""
    if task is not None:
        return task
    current = find_task(conn, task_id)
    if current is None:
        raise NotFound(f"task {task_id!r} does not exist (see `kb tasks list`)")
    if current.status in ("done", "failed", "cancelled"):
        raise LeaseError(f"cannot {action} task {current.id!r}: it is {current.status} already")
    if current.status == "pending":
        raise LeaseError(f"cannot {action} task {current.id!r}: it is pending (claim it first)")
    raise LeaseError(
        f"cannot {action} task {current.id!r}: it is held by {current.owner!r} "
        f"(lease until {_when(current.lease_expires_at)}), not by {owner!r}"
    )


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "no lease"


def heartbeat(conn_or_db: psycopg.Connection | Database, task_id: str, *, owner: str, lease_seconds: float) -> Task:
    """Extend ``owner``'s lease on the task to ``lease_seconds`` from now."""
    lease = _check_lease_seconds(lease_seconds)
    with transaction(conn_or_db) as conn:
        task = renew_lease(conn, task_id, owner=owner, lease_seconds=lease)
        return _changed(conn, task, task_id, owner, "extend the lease of")


def complete_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str | None,
    result: str | None = None,
    context: dict[str, Any] | None = None,
) -> Task:
    """Mark the task done with an optional result, merging ``context`` into its context in the same update."""
    result, patch = redact(result), _patch(context)
    with transaction(conn_or_db) as conn:
        task = mark_task_done(conn, task_id, owner=owner, result=result, patch=patch)
        return _changed(conn, task, task_id, owner, "complete")


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
    result, patch = redact(reason), _patch(context)
    with transaction(conn_or_db) as conn:
        task = mark_task_failed(conn, task_id, owner=owner, result=result, requeue=requeue, patch=patch)
        return _changed(conn, task, task_id, owner, "fail")


def cancel_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str | None,
    reason: str | None = None,
    context: dict[str, Any] | None = None,
) -> Task:
    """Cancel a pending or running task for good: nobody claims it again (its history says who and why)."""
    result, patch = redact(reason), _patch(context)
    with transaction(conn_or_db) as conn:
        task = mark_task_cancelled(conn, task_id, owner=owner, result=result, patch=patch)
        return _changed(conn, task, task_id, owner, "cancel")


def release_task(
    conn_or_db: psycopg.Connection | Database,
    task_id: str,
    *,
    owner: str | None,
    context: dict[str, Any] | None = None,
) -> Task:
    """Give the task back (pending, no owner) so another agent can claim it at once."""
    patch = _patch(context)
    with transaction(conn_or_db) as conn:
        task = unclaim_task(conn, task_id, owner=owner, patch=patch)
        return _changed(conn, task, task_id, owner, "release")


def update_context(
    conn_or_db: psycopg.Connection | Database, task_id: str, context: dict[str, Any], *, owner: str | None
) -> Task:
    """Merge ``context`` into the task's context (top-level keys replaced) in one atomic update."""
    patch = _patch(context)
    with transaction(conn_or_db) as conn:
        task = merge_task_context(conn, task_id, patch, owner=owner)
        return _changed(conn, task, task_id, owner, "update the context of")


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
    title = redact_text(title).text
    with transaction(conn_or_db) as conn:
        task = upsert_open_task(conn, task_id, owner=owner, project_id=project_id, title=title)
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
    insert_open_task_if_missing(conn, task_id, project_id=project_id, owner=owner)


def get_task(conn_or_db: psycopg.Connection | Database, task_id: str) -> Task:
    """The task ``task_id``; NotFound says how to list tasks."""
    with transaction(conn_or_db) as conn:
        task = find_task(conn, task_id)
    if task is None:
        raise NotFound(f"task {task_id!r} does not exist (see `kb tasks list`)")
    return task
