"""The audit trail: what agents were asked, answered, proposed and ran, what came out, and what it cost.

Writers (every value is redacted with ``knowledgebase.util.redact`` and NUL-free before it is stored):

- ``log_exchange``        a prompt/response exchange, a proposed command or a tool call (``command_log``)
- ``log_command_output``  the outcome of a logged command (``command_output``): stdout and stderr clipped
                          to a size cap (head and tail kept, truncation recorded), return code, files written
- ``log_command``         both at once, in one transaction (what ``kb exec`` and the shell hooks record)
- ``log_usage``           token usage of a model request (``usage_log``)

Readers: ``task_history(db, task_id)`` returns the task's log in order as plain JSON-able dicts, the
shape of an agent's ``context['history']`` (see ``HistoryItem``), so a new agent can resume a task;
``recent_log(db, ...)`` the latest entries of the whole store, filtered (``kb log``).

Append-only: there is no update or delete API, and a trigger on ``command_log``, ``command_output``
and ``usage_log`` refuses UPDATE and DELETE for everyone (only clearing a reference to a deleted task,
project, key or entry is let through). The tables' owner may prune after
``SET kb.audit_maintenance = 'on'``. Logging under a task id that does not exist yet opens that task
as running outside the queue (no lease, so no worker claims it): a log row is never refused for it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypedDict

import psycopg

from knowledgebase.coordination.taskqueue import open_task_if_missing
from knowledgebase.db import Database, transaction
from knowledgebase.errors import InputError, NotFound
from knowledgebase.store.audit import (
    CommandLogEntry,
    CommandOutput,
    LogRow,
    NewCommandLog,
    NewCommandOutput,
    NewUsage,
    TaskHistoryRow,
    UsageEntry,
    insert_command_log,
    insert_command_output,
    insert_usage,
    list_log_history,
    list_task_history,
)
from knowledgebase.store.projects import get_project
from knowledgebase.store.tasks import task_exists
from knowledgebase.util.redact import redact, redact_value
from knowledgebase.util.text import storable_text

ConnOrDb = psycopg.Connection | Database

LOG_KINDS = ("prompt", "shell", "tool", "note")
# Caps on what one row stores. Outputs keep their head and tail; prompts and responses are rarely
# this long, but a hook must not be able to push megabytes into every row.
MAX_OUTPUT_CHARS = 65_536
MAX_TEXT_CHARS = 262_144


# --------------------------------------------------------------------------------------------------
# Cleaning: redaction, NUL bytes, size caps
# --------------------------------------------------------------------------------------------------


def omission_marker(count: int, unit: str) -> str:
    """The line put between the kept head and tail of clipped text."""
    return f"\n[... {count} {unit} omitted ...]\n"


def clip_text(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to about ``limit`` characters keeping its head and tail, and whether it was cut.

    The cuts move back (head) and forward (tail) to a line break or space within a short distance, so
    a token or a redaction marker is kept whole or not at all.
    """
    if len(text) <= limit:
        return text, False
    head_end = _snap_back(text, limit // 2)
    tail_start = _snap_forward(text, len(text) - (limit - limit // 2))
    omitted = tail_start - head_end
    return text[:head_end] + omission_marker(omitted, "characters") + text[tail_start:], True


_SNAP = 256  # how far a cut may move to reach a space or line break


def _snap_back(text: str, end: int) -> int:
    cut = max(text.rfind("\n", max(0, end - _SNAP), end), text.rfind(" ", max(0, end - _SNAP), end))
    return cut + 1 if cut >= 0 else end


def _snap_forward(text: str, start: int) -> int:
    found = [i for i in (text.find("\n", start, start + _SNAP), text.find(" ", start, start + _SNAP)) if i >= 0]
    return min(found) if found else start


_OMISSION = re.compile(r"\n\[\.\.\. \d+ (?:characters|bytes) omitted \.\.\.\]\n")


def redact_clipped(text: str) -> str:
    """Redact ``text`` piece by piece between omission markers (a private key's BEGIN kept in the head
    is redacted to the cut, and the END kept in the tail back from it, never joined across)."""
    pieces = _OMISSION.split(text)
    if len(pieces) == 1:
        return redact(text) or ""
    markers = _OMISSION.findall(text)
    out = [redact(pieces[0]) or ""]
    for marker, piece in zip(markers, pieces[1:], strict=True):
        out += [marker, redact(piece) or ""]
    return "".join(out)


def _storable(text: str | None, limit: int = MAX_TEXT_CHARS) -> str | None:
    """Redacted, then clipped, and without NUL characters or lone surrogates (PostgreSQL text cannot hold them).

    Redaction comes first, so no secret is cut in half; text far over the limit is first cut to
    four times it (those cuts fall in the part the final clip drops), to bound the work.
    """
    if text is None:
        return None
    return redact_and_clip(storable_text(text), limit)[0]


def redact_and_clip(text: str, limit: int) -> tuple[str, bool]:
    """``text`` redacted, then clipped to about ``limit`` characters (``clip_text``), and whether it was cut."""
    cut = False
    if len(text) > 4 * limit:
        text, cut = clip_text(text, 4 * limit)
    clipped, cut_again = clip_text(redact_clipped(text), limit)
    return clipped, cut or cut_again


def _storable_json(value: Any, limit: int = MAX_TEXT_CHARS) -> Any:
    """A JSON-like value redacted as a whole (secret-named keys, argv flags: ``redact_value``), then clipped."""
    return _clean_json(redact_value(value), limit)


def _clean_json(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return storable_text(clip_text(value, limit)[0])
    if isinstance(value, dict):
        return {storable_text(str(k)): _clean_json(v, limit) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean_json(v, limit) for v in value]
    return value


# --------------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------------


def prepare_exchange(
    *,
    task_id: str | None,
    prompt: str | None,
    response: str | None = None,
    command: str | None = None,
    permissions: str | None = None,
    user_confirmation: bool | None = None,
    agent_mode: str | None = None,
    session_id: str | None = None,
    project_id: int | None = None,
    kind: str = "prompt",
    tool_name: str | None = None,
    tool_input: Any = None,
    agent_id: str | None = None,
) -> NewCommandLog:
    """A ``command_log`` row ready to insert: checked, redacted, clipped."""
    if kind not in LOG_KINDS:
        raise InputError(f"unknown log kind {kind!r}; use one of {', '.join(LOG_KINDS)}")
    if task_id is not None and not task_id.strip():
        raise InputError("a task id must not be empty (leave it out to log without a task)")
    return NewCommandLog(
        kind=kind,
        task_id=task_id,
        project_id=project_id,
        session_id=session_id,
        agent_id=agent_id,
        prompt=_storable(prompt),
        response=_storable(response),
        command=_storable(command),
        tool_name=_storable(tool_name),
        tool_input=_storable_json(tool_input),
        permissions=_storable(permissions),
        user_confirmation=user_confirmation,
        agent_mode=agent_mode,
    )


def _insert_exchange(conn: psycopg.Connection, new: NewCommandLog) -> CommandLogEntry:
    if new.task_id is not None:
        open_task_if_missing(conn, new.task_id, project_id=new.project_id, owner=new.agent_id)
    return insert_command_log(conn, new)


def log_exchange(
    conn_or_db: ConnOrDb,
    *,
    task_id: str | None,
    prompt: str | None,
    response: str | None = None,
    command: str | None = None,
    permissions: str | None = None,
    user_confirmation: bool | None = None,
    agent_mode: str | None = None,
    session_id: str | None = None,
    project_id: int | None = None,
    kind: str = "prompt",
    tool_name: str | None = None,
    tool_input: Any = None,
    agent_id: str | None = None,
) -> CommandLogEntry:
    """Record one exchange (prompt and response, a proposed command, a tool call) in ``command_log``.

    ``kind`` is ``prompt``, ``shell``, ``tool`` or ``note``. Every text and every string inside
    ``tool_input`` is redacted before it is stored.
    """
    new = prepare_exchange(
        task_id=task_id,
        prompt=prompt,
        response=response,
        command=command,
        permissions=permissions,
        user_confirmation=user_confirmation,
        agent_mode=agent_mode,
        session_id=session_id,
        project_id=project_id,
        kind=kind,
        tool_name=tool_name,
        tool_input=tool_input,
        agent_id=agent_id,
    )
    with transaction(conn_or_db) as conn:
        return _insert_exchange(conn, new)


def prepare_output(
    *,
    stdout: str | None = None,
    stderr: str | None = None,
    return_code: int | None = None,
    files_written: Sequence[str] = (),
    success: bool | None = None,
    duration_ms: int | None = None,
    stdout_bytes: int | None = None,
    stderr_bytes: int | None = None,
    truncated: bool = False,
    error: str | None = None,
    max_chars: int = MAX_OUTPUT_CHARS,
) -> NewCommandOutput:
    """A ``command_output`` row ready to insert (``command_log_id`` is filled in when it is stored).

    ``success`` defaults to ``return_code == 0`` with no ``error``. Byte counts default to the
    length of the text as given, before clipping.
    """
    clipped: list[str | None] = []
    for text in (stdout, stderr):
        if text is None:
            clipped.append(None)
            continue
        short, cut = redact_and_clip(text, max_chars)
        truncated = truncated or cut
        clipped.append(storable_text(short))
    return NewCommandOutput(
        command_log_id=0,
        success=success if success is not None else (return_code == 0 and error is None),
        stdout=clipped[0],
        stderr=clipped[1],
        return_code=return_code,
        files_written=[_storable(p) or "" for p in files_written],
        duration_ms=duration_ms,
        stdout_bytes=stdout_bytes if stdout_bytes is not None else _byte_length(stdout),
        stderr_bytes=stderr_bytes if stderr_bytes is not None else _byte_length(stderr),
        truncated=truncated,
        error=_storable(error),
    )


def _byte_length(text: str | None) -> int | None:
    return None if text is None else len(text.encode("utf-8", "surrogatepass"))


def log_command_output(conn_or_db: ConnOrDb, command_log_id: int, **outcome: Any) -> CommandOutput:
    """Record the outcome of the logged command ``command_log_id``; keyword arguments as ``prepare_output``."""
    new = replace(prepare_output(**outcome), command_log_id=command_log_id)
    with transaction(conn_or_db) as conn:
        return insert_command_output(conn, new)


@dataclass(frozen=True)
class CommandRecord:
    """A command and its outcome, redacted and clipped: stored by ``store_command``, or spooled."""

    exchange: NewCommandLog
    outcome: NewCommandOutput


def store_command(conn_or_db: ConnOrDb, record: CommandRecord) -> tuple[CommandLogEntry, CommandOutput]:
    """Insert a prepared command and its outcome in one transaction."""
    with transaction(conn_or_db) as conn:
        entry = _insert_exchange(conn, record.exchange)
        output = insert_command_output(conn, replace(record.outcome, command_log_id=entry.id))
    return entry, output


def log_command(
    conn_or_db: ConnOrDb,
    *,
    command: str,
    task_id: str | None = None,
    kind: str = "shell",
    session_id: str | None = None,
    project_id: int | None = None,
    agent_id: str | None = None,
    agent_mode: str | None = None,
    permissions: str | None = None,
    user_confirmation: bool | None = None,
    tool_name: str | None = None,
    tool_input: Any = None,
    **outcome: Any,
) -> tuple[CommandLogEntry, CommandOutput]:
    """Record a command that ran and its outcome (keyword arguments of ``prepare_output``) at once."""
    exchange = prepare_exchange(
        task_id=task_id,
        prompt=None,
        command=command,
        kind=kind,
        session_id=session_id,
        project_id=project_id,
        agent_id=agent_id,
        agent_mode=agent_mode,
        permissions=permissions,
        user_confirmation=user_confirmation,
        tool_name=tool_name,
        tool_input=tool_input,
    )
    return store_command(conn_or_db, CommandRecord(exchange, prepare_output(**outcome)))


def prepare_usage(
    *,
    request_type: str,
    model: str | None = None,
    prompt_tokens: int = 0,
    response_tokens: int = 0,
    total_tokens: int | None = None,
    api_key_id: int | None = None,
    task_id: str | None = None,
    command_log_id: int | None = None,
    latency_ms: int | None = None,
    success: bool = True,
    error: str | None = None,
) -> NewUsage:
    """A ``usage_log`` row ready to insert (``total_tokens`` defaults to prompt + response)."""
    if prompt_tokens < 0 or response_tokens < 0 or (total_tokens is not None and total_tokens < 0):
        raise InputError("token counts cannot be negative")
    return NewUsage(
        request_type=request_type,
        model=model,
        prompt_tokens=prompt_tokens,
        response_tokens=response_tokens,
        total_tokens=prompt_tokens + response_tokens if total_tokens is None else total_tokens,
        api_key_id=api_key_id,
        task_id=task_id,
        command_log_id=command_log_id,
        latency_ms=latency_ms,
        success=success,
        error=_storable(error),
    )


def log_usage(conn_or_db: ConnOrDb, **usage: Any) -> UsageEntry:
    """Record the token usage of one model request; keyword arguments as ``prepare_usage``."""
    new = prepare_usage(**usage)
    with transaction(conn_or_db) as conn:
        if new.task_id is not None:
            open_task_if_missing(conn, new.task_id)
        return insert_usage(conn, new)


@dataclass(frozen=True)
class ExchangeRecord:
    """A prompt or response exchange and the token usage of its model calls, redacted: stored by
    ``store_exchange``, or spooled. The usage rows get the exchange's id when stored."""

    exchange: NewCommandLog
    usage: tuple[NewUsage, ...] = ()


def store_exchange(conn_or_db: ConnOrDb, record: ExchangeRecord) -> CommandLogEntry:
    """Insert a prepared exchange and its usage rows in one transaction."""
    with transaction(conn_or_db) as conn:
        entry = _insert_exchange(conn, record.exchange)
        for usage in record.usage:
            insert_usage(conn, replace(usage, command_log_id=entry.id, task_id=usage.task_id or entry.task_id))
    return entry


# --------------------------------------------------------------------------------------------------
# Reader: a task's history
# --------------------------------------------------------------------------------------------------


class OutputItem(TypedDict):
    stdout: str | None
    stderr: str | None
    return_code: int | None
    success: bool
    files_written: list[str]
    duration_ms: int | None
    truncated: bool
    error: str | None


class UsageItem(TypedDict):
    prompt_tokens: int
    response_tokens: int
    total_tokens: int
    models: list[str]


class HistoryItem(TypedDict):
    """One entry of ``context['history']``: JSON-able, oldest first.

    ``kind`` is prompt | shell | tool | note. A prompt has ``prompt`` and ``response``; a shell
    command has ``command`` and, once it ran, ``output``; a tool call has ``tool_name`` and
    ``tool_input``. ``output`` and ``usage`` are None when nothing was recorded for the entry.
    """

    id: int
    executed_at: str  # ISO 8601 with time zone
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
    output: OutputItem | None
    usage: UsageItem | None


def task_history(conn_or_db: ConnOrDb, task_id: str, *, limit: int | None = None) -> list[HistoryItem]:
    """The task's log, oldest first (the last ``limit`` entries if given), for ``context['history']``.

    Raises NotFound when the task neither exists nor has log entries.
    """
    if limit is not None and limit < 1:
        raise InputError(f"limit {limit} must be at least 1")
    with transaction(conn_or_db) as conn:
        rows = list_task_history(conn, task_id, limit=limit)
        if not rows and not task_exists(conn, task_id):
            raise NotFound(f"task {task_id!r} does not exist (see `kb tasks list`)")
    return [_history_item(row) for row in reversed(rows)]


class LogItem(HistoryItem):
    """A ``HistoryItem`` of any task, with its task and project (None: logged without one)."""

    task_id: str | None
    project: str | None


def recent_log(
    conn_or_db: ConnOrDb,
    *,
    task_id: str | None = None,
    session_id: str | None = None,
    project: str | None = None,
    failed_only: bool = False,
    limit: int = 20,
) -> list[LogItem]:
    """The last ``limit`` log entries (prompts, responses, commands with their outcome, tool calls)
    matching every filter given, oldest first; ``failed_only`` keeps commands whose outcome failed."""
    if limit < 1:
        raise InputError(f"limit {limit} must be at least 1")
    with transaction(conn_or_db) as conn:
        project_id = get_project(conn, project).id if project is not None else None
        rows = list_log_history(
            conn, task_id=task_id, session_id=session_id, project_id=project_id, failed_only=failed_only, limit=limit
        )
    return [_log_item(row) for row in reversed(rows)]


def _log_item(row: LogRow) -> LogItem:
    return LogItem(**_history_item(row), task_id=row.task_id, project=row.project)


def _history_item(row: TaskHistoryRow) -> HistoryItem:
    # the outer joins make the output and usage columns nullable; they are NOT NULL in their tables,
    # so they are set whenever there is an output (output_id) or a request
    output: OutputItem | None = None
    if row.output_id is not None:
        output = OutputItem(
            stdout=row.stdout,
            stderr=row.stderr,
            return_code=row.return_code,
            success=bool(row.success),
            files_written=row.files_written,
            duration_ms=row.duration_ms,
            truncated=bool(row.truncated),
            error=row.error,
        )
    usage: UsageItem | None = None
    if row.requests:
        usage = UsageItem(
            prompt_tokens=int(row.prompt_tokens or 0),
            response_tokens=int(row.response_tokens or 0),
            total_tokens=int(row.total_tokens or 0),
            models=list(row.models or []),
        )
    return HistoryItem(
        id=row.id,
        executed_at=row.executed_at.isoformat(),
        kind=row.kind,
        session_id=row.session_id,
        agent_id=row.agent_id,
        agent_mode=row.agent_mode,
        prompt=row.prompt,
        response=row.response,
        command=row.command,
        permissions=row.permissions,
        user_confirmation=row.user_confirmation,
        tool_name=row.tool_name,
        tool_input=row.tool_input,
        output=output,
        usage=usage,
    )
