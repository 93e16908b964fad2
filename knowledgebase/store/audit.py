"""The audit trail: exchanges and commands (``command_log``), their outcomes (``command_output``),
and token usage (``usage_log``). Values are redacted by the caller before they get here."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required


@dataclass(frozen=True)
class CommandLogEntry:
    id: int
    task_id: str | None
    project_id: int | None
    session_id: str | None
    agent_id: str | None
    kind: str
    prompt: str | None
    response: str | None
    command: str | None
    tool_name: str | None
    tool_input: Any
    permissions: str | None
    user_confirmation: bool | None
    agent_mode: str | None
    executed_at: datetime


@dataclass(frozen=True)
class NewCommandLog:
    kind: str = "prompt"
    task_id: str | None = None
    project_id: int | None = None
    session_id: str | None = None
    agent_id: str | None = None
    prompt: str | None = None
    response: str | None = None
    command: str | None = None
    tool_name: str | None = None
    tool_input: Any = None
    permissions: str | None = None
    user_confirmation: bool | None = None
    agent_mode: str | None = None
    executed_at: datetime | None = None  # None: now (set when replaying an entry spooled during an outage)


@dataclass(frozen=True)
class CommandOutput:
    id: int
    command_log_id: int
    stdout: str | None
    stderr: str | None
    return_code: int | None
    file_written: str | None
    success: bool | None
    duration_ms: int | None
    stdout_bytes: int | None
    stderr_bytes: int | None
    truncated: bool
    error: str | None
    created_at: datetime

    @property
    def files_written(self) -> list[str]:
        return split_paths(self.file_written)


@dataclass(frozen=True)
class NewCommandOutput:
    command_log_id: int
    success: bool
    stdout: str | None = None
    stderr: str | None = None
    return_code: int | None = None
    files_written: list[str] = field(default_factory=list)
    duration_ms: int | None = None
    stdout_bytes: int | None = None
    stderr_bytes: int | None = None
    truncated: bool = False
    error: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class UsageEntry:
    id: int
    request_type: str
    model: str | None
    prompt_tokens: int
    response_tokens: int
    total_tokens: int
    api_key_id: int | None
    task_id: str | None
    command_log_id: int | None
    latency_ms: int | None
    success: bool
    error: str | None
    created_at: datetime


@dataclass(frozen=True)
class NewUsage:
    request_type: str
    model: str | None = None
    prompt_tokens: int = 0
    response_tokens: int = 0
    total_tokens: int = 0
    api_key_id: int | None = None
    task_id: str | None = None
    command_log_id: int | None = None
    latency_ms: int | None = None
    success: bool = True
    error: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class TaskHistoryRow:
    """A log entry of a task with its latest output (``output_id`` None: none) and its usage totals."""

    id: int
    executed_at: datetime
    kind: str
    session_id: str | None
    agent_id: str | None
    agent_mode: str | None
    prompt: str | None
    response: str | None
    command: str | None
    permissions: str | None
    user_confirmation: bool | None
    tool_name: str | None
    tool_input: Any
    output_id: int | None
    stdout: str | None
    stderr: str | None
    return_code: int | None
    success: bool | None
    file_written: str | None
    duration_ms: int | None
    truncated: bool | None
    error: str | None
    requests: int
    prompt_tokens: int | None
    response_tokens: int | None
    total_tokens: int | None
    models: list[str] | None

    @property
    def files_written(self) -> list[str]:
        return split_paths(self.file_written)


@dataclass(frozen=True)
class LogRow(TaskHistoryRow):
    """A log entry of any task (or none) with its project, latest output and usage (``kb log``)."""

    task_id: str | None
    project: str | None


def join_paths(paths: list[str]) -> str | None:
    """``command_output.file_written`` for a list of paths: one per line (a newline inside a path is
    written as ``\\n``), None for none; the design's column holds one path as plain text."""
    return "\n".join(path.replace("\n", "\\n") for path in paths) or None


def split_paths(text: str | None) -> list[str]:
    """The paths in a ``file_written`` value (``join_paths`` reversed)."""
    return [line.replace("\\n", "\n") for line in text.split("\n") if line] if text else []


_LOG_COLS = columns(CommandLogEntry)
_OUT_COLS = columns(CommandOutput)
_USAGE_COLS = columns(UsageEntry)

INSERT_COMMAND_LOG = f"""
INSERT INTO command_log (kind, task_id, project_id, session_id, agent_id, prompt, response, command,
                         tool_name, tool_input, permissions, user_confirmation, agent_mode, executed_at)
VALUES (%(kind)s, %(task_id)s, %(project_id)s, %(session_id)s, %(agent_id)s, %(prompt)s, %(response)s,
        %(command)s, %(tool_name)s, %(tool_input)s, %(permissions)s, %(user_confirmation)s,
        %(agent_mode)s, COALESCE(%(executed_at)s, now()))
RETURNING {_LOG_COLS}
"""
GET_COMMAND_LOG = f"SELECT {_LOG_COLS} FROM command_log WHERE id = %s"
LIST_COMMAND_LOG = f"""
SELECT {_LOG_COLS} FROM command_log
 WHERE (%(task_id)s::text IS NULL OR task_id = %(task_id)s)
   AND (%(session_id)s::text IS NULL OR session_id = %(session_id)s)
 ORDER BY id
 LIMIT %(limit)s
"""
INSERT_COMMAND_OUTPUT = f"""
INSERT INTO command_output (command_log_id, stdout, stderr, return_code, file_written, success, duration_ms,
                            stdout_bytes, stderr_bytes, truncated, error, created_at)
VALUES (%(command_log_id)s, %(stdout)s, %(stderr)s, %(return_code)s, %(file_written)s, %(success)s,
        %(duration_ms)s, %(stdout_bytes)s, %(stderr_bytes)s, %(truncated)s, %(error)s,
        COALESCE(%(created_at)s, now()))
RETURNING {_OUT_COLS}
"""
LIST_COMMAND_OUTPUT = f"SELECT {_OUT_COLS} FROM command_output WHERE command_log_id = %s ORDER BY id"
INSERT_USAGE = f"""
INSERT INTO usage_log (request_type, model, prompt_tokens, response_tokens, total_tokens, api_key_id, task_id,
                       command_log_id, latency_ms, success, error, created_at)
VALUES (%(request_type)s, %(model)s, %(prompt_tokens)s, %(response_tokens)s, %(total_tokens)s, %(api_key_id)s,
        %(task_id)s, %(command_log_id)s, %(latency_ms)s, %(success)s, %(error)s, COALESCE(%(created_at)s, now()))
RETURNING {_USAGE_COLS}
"""
LIST_USAGE = f"""
SELECT {_USAGE_COLS} FROM usage_log
 WHERE (%(task_id)s::text IS NULL OR task_id = %(task_id)s)
 ORDER BY id
 LIMIT %(limit)s
"""
# a log entry with its latest output and its usage totals (the task history's and `kb log`'s rows)
_HISTORY_SELECT = """
SELECT l.id, l.executed_at, l.kind, l.session_id, l.agent_id, l.agent_mode, l.prompt, l.response,
       l.command, l.permissions, l.user_confirmation, l.tool_name, l.tool_input,
       o.id AS output_id, o.stdout, o.stderr, o.return_code, o.success, o.file_written, o.duration_ms,
       o.truncated, o.error,
       u.requests, u.prompt_tokens, u.response_tokens, u.total_tokens, u.models
"""
_HISTORY_JOINS = """
  FROM command_log l
  LEFT JOIN LATERAL (
        SELECT * FROM command_output WHERE command_log_id = l.id ORDER BY id DESC LIMIT 1
  ) o ON true
  LEFT JOIN LATERAL (
        SELECT count(*) AS requests, sum(prompt_tokens)::bigint AS prompt_tokens,
               sum(response_tokens)::bigint AS response_tokens, sum(total_tokens)::bigint AS total_tokens,
               array_remove(array_agg(DISTINCT model), NULL) AS models
          FROM usage_log WHERE command_log_id = l.id
  ) u ON true
"""
TASK_HISTORY = (
    _HISTORY_SELECT
    + _HISTORY_JOINS
    + """
 WHERE l.task_id = %(task_id)s
 ORDER BY l.executed_at DESC, l.id DESC
 LIMIT %(limit)s
"""
)
LOG_HISTORY = (
    _HISTORY_SELECT
    + ", l.task_id, p.name AS project"
    + _HISTORY_JOINS
    + """
  LEFT JOIN projects p ON p.id = l.project_id
 WHERE (%(task_id)s::text IS NULL OR l.task_id = %(task_id)s)
   AND (%(session_id)s::text IS NULL OR l.session_id = %(session_id)s)
   AND (%(project_id)s::bigint IS NULL OR l.project_id = %(project_id)s)
   AND (NOT %(failed)s OR o.success IS FALSE)
 ORDER BY l.executed_at DESC, l.id DESC
 LIMIT %(limit)s
"""
)


def insert_command_log(conn: psycopg.Connection, new: NewCommandLog) -> CommandLogEntry:
    params = {**new.__dict__, "tool_input": None if new.tool_input is None else Jsonb(new.tool_input)}
    row = fetch_one(conn, CommandLogEntry, INSERT_COMMAND_LOG, params)
    assert row is not None
    return row


def get_command_log(conn: psycopg.Connection, entry_id: int) -> CommandLogEntry:
    return fetch_required(conn, CommandLogEntry, GET_COMMAND_LOG, (entry_id,), f"command_log #{entry_id}")


def list_command_log(
    conn: psycopg.Connection, *, task_id: str | None = None, session_id: str | None = None, limit: int = 1000
) -> list[CommandLogEntry]:
    """Log entries in the order they were written."""
    return fetch_all(
        conn, CommandLogEntry, LIST_COMMAND_LOG, {"task_id": task_id, "session_id": session_id, "limit": limit}
    )


def insert_command_output(conn: psycopg.Connection, new: NewCommandOutput) -> CommandOutput:
    params = {**new.__dict__, "file_written": join_paths(new.files_written)}
    row = fetch_one(conn, CommandOutput, INSERT_COMMAND_OUTPUT, params)
    assert row is not None
    return row


def list_command_output(conn: psycopg.Connection, command_log_id: int) -> list[CommandOutput]:
    return fetch_all(conn, CommandOutput, LIST_COMMAND_OUTPUT, (command_log_id,))


def insert_usage(conn: psycopg.Connection, new: NewUsage) -> UsageEntry:
    row = fetch_one(conn, UsageEntry, INSERT_USAGE, new.__dict__)
    assert row is not None
    return row


def list_usage(conn: psycopg.Connection, *, task_id: str | None = None, limit: int = 1000) -> list[UsageEntry]:
    return fetch_all(conn, UsageEntry, LIST_USAGE, {"task_id": task_id, "limit": limit})


def list_task_history(conn: psycopg.Connection, task_id: str, *, limit: int | None = None) -> list[TaskHistoryRow]:
    """The task's log entries with their latest output and usage totals, newest first (``limit``: at most)."""
    return fetch_all(conn, TaskHistoryRow, TASK_HISTORY, {"task_id": task_id, "limit": limit})


def list_log_history(
    conn: psycopg.Connection,
    *,
    task_id: str | None = None,
    session_id: str | None = None,
    project_id: int | None = None,
    failed_only: bool = False,
    limit: int = 20,
) -> list[LogRow]:
    """The most recent log entries matching every filter given, newest first (``failed_only``: commands
    whose latest outcome failed)."""
    params = {
        "task_id": task_id,
        "session_id": session_id,
        "project_id": project_id,
        "failed": failed_only,
        "limit": limit,
    }
    return fetch_all(conn, LogRow, LOG_HISTORY, params)
