"""What agents did and are doing, read from the audit trail: past shell commands with the head and tail
of their output, the successes that followed a failure in the same task, running tasks, and files
changed recently (``command_output.file_written``).

"Another agent" is anything logged under a different task than ``exclude_task_id`` (a Gemini CLI
session is one task): None excludes nothing. ``project_id`` None means every project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from knowledgebase.store._rows import fetch_all
from knowledgebase.store.audit import split_paths


@dataclass(frozen=True)
class PastCommand:
    """A shell command and its last outcome (``success`` None: none recorded), with at most
    ``head``/``tail`` characters of each end of its output, and its full-text rank for the query."""

    id: int
    project_id: int | None
    task_id: str | None
    agent_id: str | None
    command: str
    executed_at: datetime
    success: bool | None
    return_code: int | None
    error: str | None
    stderr_head: str | None
    stderr_tail: str | None
    stdout_head: str | None
    stdout_tail: str | None
    text_rank: float


@dataclass(frozen=True)
class LaterSuccess:
    """A shell command that succeeded after the failed command ``failed_id``, in the same task."""

    failed_id: int
    id: int
    agent_id: str | None
    command: str
    executed_at: datetime
    return_code: int | None


@dataclass(frozen=True)
class RunningTask:
    """A running task whose lease (if any) is live and that did something since the cutoff."""

    id: str
    project_id: int | None
    title: str
    owner: str | None
    started_at: datetime | None
    last_activity: datetime


@dataclass(frozen=True)
class FileChange:
    """Files one logged command wrote (``file_written``), by whom and when."""

    command_log_id: int
    task_id: str | None
    agent_id: str | None
    file_written: str | None
    changed_at: datetime

    @property
    def paths(self) -> list[str]:
        return split_paths(self.file_written)


_OUTCOME = """
  LEFT JOIN LATERAL (
      SELECT success, return_code, error, stdout, stderr FROM command_output
       WHERE command_log_id = l.id ORDER BY id DESC LIMIT 1
  ) o ON true
"""
# The newest ``scan`` shell commands of the scope; of those, the best ``k`` by full text over the
# command, and the ``recent`` newest; then their outcome (with the ends of its output) for those only.
PAST_COMMANDS = f"""
WITH scanned AS MATERIALIZED (
    SELECT l.id, l.command AS doc
      FROM command_log l
     WHERE l.kind = 'shell' AND COALESCE(l.command, '') <> ''
       AND (%(project_id)s::bigint IS NULL OR l.project_id = %(project_id)s)
     ORDER BY l.executed_at DESC, l.id DESC
     LIMIT %(scan)s
), lex AS (
    SELECT id FROM scanned
     WHERE %(tsq)s::text IS NOT NULL AND to_tsvector('simple', doc) @@ to_tsquery('simple', %(tsq)s)
     ORDER BY ts_rank_cd(to_tsvector('simple', doc), to_tsquery('simple', %(tsq)s)) DESC
     LIMIT %(k)s
), recent AS (
    SELECT id FROM scanned LIMIT %(recent)s
)
SELECT l.id, l.project_id, l.task_id, l.agent_id, l.command, l.executed_at, o.success, o.return_code, o.error,
       left(o.stderr, %(head)s) AS stderr_head, right(o.stderr, %(tail)s) AS stderr_tail,
       left(o.stdout, %(head)s) AS stdout_head, right(o.stdout, %(tail)s) AS stdout_tail,
       COALESCE(ts_rank_cd(to_tsvector('simple', s.doc), to_tsquery('simple', %(tsq)s)), 0) AS text_rank
  FROM (SELECT id FROM lex UNION SELECT id FROM recent) ids
  JOIN scanned s ON s.id = ids.id
  JOIN command_log l ON l.id = ids.id {_OUTCOME}
 ORDER BY l.executed_at DESC, l.id DESC
"""
# the shell commands of one task in the order they ran, with their outcome (as PAST_COMMANDS gives it)
TASK_COMMANDS = f"""
SELECT l.id, l.project_id, l.task_id, l.agent_id, l.command, l.executed_at, o.success, o.return_code, o.error,
       left(o.stderr, %(head)s) AS stderr_head, right(o.stderr, %(tail)s) AS stderr_tail,
       left(o.stdout, %(head)s) AS stdout_head, right(o.stdout, %(tail)s) AS stdout_tail,
       0.0::float8 AS text_rank
  FROM command_log l {_OUTCOME}
 WHERE l.task_id = %(task_id)s AND l.kind = 'shell' AND COALESCE(l.command, '') <> ''
 ORDER BY l.executed_at, l.id
 LIMIT %(limit)s
"""
LATER_SUCCESSES = """
SELECT f.id AS failed_id, s.id, s.agent_id, s.command, s.executed_at, s.return_code
  FROM command_log f
  JOIN LATERAL (
      SELECT l.id, l.agent_id, l.command, l.executed_at, o.return_code
        FROM command_log l
        JOIN LATERAL (
            SELECT success, return_code FROM command_output WHERE command_log_id = l.id ORDER BY id DESC LIMIT 1
        ) o ON true
       WHERE l.task_id = f.task_id AND l.kind = 'shell' AND COALESCE(l.command, '') <> '' AND o.success
         AND (l.executed_at, l.id) > (f.executed_at, f.id)
       ORDER BY l.executed_at, l.id
       LIMIT %(per_failure)s
  ) s ON true
 WHERE f.id = ANY(%(ids)s) AND f.task_id IS NOT NULL
 ORDER BY f.id, s.executed_at, s.id
"""
RUNNING_TASKS = """
SELECT t.id, t.project_id, t.title, t.owner, t.started_at,
       GREATEST(t.updated_at, COALESCE(a.last_logged, t.updated_at)) AS last_activity
  FROM tasks t
  LEFT JOIN LATERAL (  -- the task's newest entry, by the (task_id, id) index
      SELECT executed_at AS last_logged FROM command_log WHERE task_id = t.id ORDER BY id DESC LIMIT 1
  ) a ON true
 WHERE t.status = 'running'
   AND (t.lease_expires_at IS NULL OR t.lease_expires_at > now())
   AND (%(project_id)s::bigint IS NULL OR t.project_id = %(project_id)s)
   AND (%(exclude_task_id)s::text IS NULL OR t.id <> %(exclude_task_id)s)
   AND GREATEST(t.updated_at, COALESCE(a.last_logged, t.updated_at)) >= now() - make_interval(mins => %(minutes)s)
 ORDER BY last_activity DESC, t.id
 LIMIT %(limit)s
"""
# by command_log.executed_at (indexed) first: the outputs of the last minutes' commands only
FILE_CHANGES = """
SELECT l.id AS command_log_id, l.task_id, l.agent_id, o.file_written, o.created_at AS changed_at
  FROM command_log l
  JOIN command_output o ON o.command_log_id = l.id
 WHERE l.executed_at >= now() - make_interval(mins => %(minutes)s)
   AND o.file_written IS NOT NULL AND o.file_written <> ''
   AND o.created_at >= now() - make_interval(mins => %(minutes)s)
   AND (%(project_id)s::bigint IS NULL OR l.project_id = %(project_id)s)
   AND (%(exclude_task_id)s::text IS NULL OR l.task_id IS DISTINCT FROM %(exclude_task_id)s)
 ORDER BY o.created_at DESC, o.id DESC
 LIMIT %(limit)s
"""


def list_past_commands(
    conn: psycopg.Connection,
    *,
    project_id: int | None,
    tsquery: str | None,
    scan: int,
    limit: int,
    recent: int,
    head_chars: int,
    tail_chars: int,
) -> list[PastCommand]:
    """Of the newest ``scan`` shell commands, the best ``limit`` by full text and the ``recent`` newest,
    newest first."""
    params = {
        "project_id": project_id,
        "tsq": tsquery,
        "scan": scan,
        "k": limit,
        "recent": recent,
        "head": head_chars,
        "tail": tail_chars,
    }
    return fetch_all(conn, PastCommand, PAST_COMMANDS, params)


def list_task_commands(
    conn: psycopg.Connection, task_id: str, *, limit: int, head_chars: int, tail_chars: int
) -> list[PastCommand]:
    """The first ``limit`` shell commands of task ``task_id``, oldest first, with their last outcome."""
    params = {"task_id": task_id, "limit": limit, "head": head_chars, "tail": tail_chars}
    return fetch_all(conn, PastCommand, TASK_COMMANDS, params)


def list_later_successes(
    conn: psycopg.Connection, failed_ids: Sequence[int], *, per_failure: int
) -> list[LaterSuccess]:
    """For each command of ``failed_ids``, the first ``per_failure`` shell commands of its task that
    succeeded after it, oldest first."""
    if not failed_ids:
        return []
    return fetch_all(conn, LaterSuccess, LATER_SUCCESSES, {"ids": list(failed_ids), "per_failure": per_failure})


def list_running_tasks(
    conn: psycopg.Connection, *, project_id: int | None, exclude_task_id: str | None, minutes: int, limit: int
) -> list[RunningTask]:
    """Running tasks (lease live or none) active in the last ``minutes``, most recently active first."""
    params = {"project_id": project_id, "exclude_task_id": exclude_task_id, "minutes": minutes, "limit": limit}
    return fetch_all(conn, RunningTask, RUNNING_TASKS, params)


def list_file_changes(
    conn: psycopg.Connection, *, project_id: int | None, exclude_task_id: str | None, minutes: int, limit: int
) -> list[FileChange]:
    """Commands of other tasks that wrote files in the last ``minutes``, newest first."""
    params = {"project_id": project_id, "exclude_task_id": exclude_task_id, "minutes": minutes, "limit": limit}
    return fetch_all(conn, FileChange, FILE_CHANGES, params)
