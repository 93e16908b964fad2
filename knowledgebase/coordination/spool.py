"""Audit entries kept on local disk while the database is unreachable, and written to it later.

``kb exec`` runs the command and exits with its code even when the database is down, and does not
drop the log entry; the Gemini CLI hooks do the same for every event they log. The entry (already
redacted, with the time it happened) is written as one JSON file under ``KB_HOME/spool/`` and a
warning says so. ``kb audit flush``, every later ``kb exec`` that reaches the database and the hooks'
warm process when it reconnects write the spooled entries in the order they happened, with their
original times, and remove the files. Delivery is at least once: a crash between the commit and the
removal of a file replays that entry. Concurrent flushers do not double-write: each claims a file by
renaming it.

An entry is one of (``SpoolEntry``):

- ``CommandRecord``: a command or tool call with its outcome (``kb exec``, AfterTool);
- ``ExchangeRecord``: a prompt or a response with the token usage of its model calls (BeforeAgent, AfterAgent);
- ``SessionOpening``: a session's task opened with its context (SessionStart);
- ``SessionClosing``: a session's task closed (SessionEnd). ``FlushReport.closed`` names the tasks closed
  by a flush, so the warm process can propose the facts of their trail as SessionEnd would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from knowledgebase.coordination import taskqueue
from knowledgebase.coordination.audit import CommandRecord, ExchangeRecord, store_command, store_exchange
from knowledgebase.db import Database, transaction
from knowledgebase.errors import DatabaseError, LeaseError, NotFound, first_line
from knowledgebase.store.audit import NewCommandLog, NewCommandOutput, NewUsage
from knowledgebase.util.processes import pid_alive

SPOOL_VERSION = 2
# version 1 (before schema revision 0003) used 0001's column names; they are renamed when read
_V1_NAMES = {
    "exchange": {"created_at": "executed_at", "proposed_command": "command"},
    "outcome": {"file_written": "files_written"},
}
_CLAIMED = ".flushing."


@dataclass(frozen=True)
class FlushReport:
    """What ``flush_spool`` did: entries written, files set aside (``*.bad``), entries still waiting."""

    flushed: int
    rejected: int
    remaining: int
    error: str | None = None  # why flushing stopped early (the database went away again)
    closed: tuple[str, ...] = ()  # the tasks of the SessionClosing entries written


@dataclass(frozen=True)
class SessionOpening:
    """A session's task opened (or resumed) by ``owner`` outside the queue, and context merged into it."""

    task_id: str
    owner: str
    title: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    created_at: datetime | None = None  # when it happened (the task's context records it as ``opened_at``)


@dataclass(frozen=True)
class SessionClosing:
    """A session's task closed by ``owner`` with ``result`` (nothing to do if it is closed already)."""

    task_id: str
    owner: str
    result: str = ""
    created_at: datetime | None = None


SpoolEntry = CommandRecord | ExchangeRecord | SessionOpening | SessionClosing


_TIMES = ("created_at", "executed_at")


def _jsonable(entry: Any) -> dict[str, Any]:
    data = asdict(entry)
    for key in _TIMES:
        if isinstance(data.get(key), datetime):
            data[key] = data[key].isoformat()
    return data


def _timestamped(data: dict[str, Any]) -> dict[str, Any]:
    for key in _TIMES:
        if data.get(key):
            data[key] = datetime.fromisoformat(data[key])
    return data


def _renamed(payload: dict[str, Any], part: str) -> dict[str, Any]:
    data = dict(payload[part])
    if payload.get("version") == 1:
        data = {_V1_NAMES[part].get(key, key): value for key, value in data.items()}
    return data


def _payload(entry: SpoolEntry, now: datetime) -> dict[str, Any]:
    """The JSON of ``entry``, every time left open set to ``now`` (the entry is written later)."""
    if isinstance(entry, CommandRecord):
        exchange = replace(entry.exchange, executed_at=entry.exchange.executed_at or now)
        outcome = replace(entry.outcome, created_at=entry.outcome.created_at or now)
        return {"type": "command", "exchange": _jsonable(exchange), "outcome": _jsonable(outcome)}
    if isinstance(entry, ExchangeRecord):
        exchange = replace(entry.exchange, executed_at=entry.exchange.executed_at or now)
        usage = [_jsonable(replace(u, created_at=u.created_at or now)) for u in entry.usage]
        return {"type": "exchange", "exchange": _jsonable(exchange), "usage": usage}
    kind = "closing" if isinstance(entry, SessionClosing) else "session"
    return {"type": kind, kind: _jsonable(replace(entry, created_at=entry.created_at or now))}


def spool_entry(spool_dir: Path, record: SpoolEntry) -> Path:
    """Write ``record`` (a command, an exchange or a session opening) to the spool, atomically and
    private to the user; returns the file."""
    now = datetime.now(UTC)
    payload = {"version": SPOOL_VERSION, **_payload(record, now)}
    spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = f"{now.strftime('%Y%m%dT%H%M%S%fZ')}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    tmp = spool_dir / f".{name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, ensure_ascii=False)
        handle.flush()
        os.fsync(handle.fileno())
    final = spool_dir / name
    os.replace(tmp, final)
    return final


def load_spooled(path: Path) -> SpoolEntry:
    """The entry in a spool file (ValueError if the file is not one)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    kind = payload.get("type") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or payload.get("version") not in (1, SPOOL_VERSION) or kind not in _LOADERS:
        raise ValueError(f"{path.name} is not a spooled entry (version {SPOOL_VERSION})")
    try:
        return _LOADERS[kind](payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name} is incomplete: {exc}") from None


_LOADERS: dict[str, Callable[[dict[str, Any]], SpoolEntry]] = {
    "command": lambda p: CommandRecord(
        NewCommandLog(**_timestamped(_renamed(p, "exchange"))), NewCommandOutput(**_timestamped(_renamed(p, "outcome")))
    ),
    "exchange": lambda p: ExchangeRecord(
        NewCommandLog(**_timestamped(p["exchange"])), tuple(NewUsage(**_timestamped(u)) for u in p["usage"])
    ),
    "session": lambda p: SessionOpening(**_timestamped(p["session"])),
    "closing": lambda p: SessionClosing(**_timestamped(p["closing"])),
}


def store_entry(conn_or_db: psycopg.Connection | Database, entry: SpoolEntry) -> int | None:
    """Write ``entry`` to the database (in one transaction); the id of its ``command_log`` row, if it has one.

    A session whose task another owner holds is left to that owner: its log rows are written all the same.
    """
    if isinstance(entry, CommandRecord):
        return store_command(conn_or_db, entry)[0].id
    if isinstance(entry, ExchangeRecord):
        return store_exchange(conn_or_db, entry).id
    if isinstance(entry, SessionClosing):
        with contextlib.suppress(NotFound, LeaseError):  # never opened, or closed already
            taskqueue.complete_task(conn_or_db, entry.task_id, owner=entry.owner, result=entry.result or None)
        return None
    context = dict(entry.context)
    if entry.created_at is not None:
        context["opened_at"] = entry.created_at.isoformat()
    with contextlib.suppress(LeaseError), transaction(conn_or_db) as conn:
        taskqueue.open_task(conn, entry.task_id, owner=entry.owner, title=entry.title)
        taskqueue.update_context(conn, entry.task_id, context, owner=entry.owner)
    return None


def pending_files(spool_dir: Path) -> list[Path]:
    """Spooled entries waiting to be written, oldest first."""
    if not spool_dir.is_dir():
        return []
    return sorted(p for p in spool_dir.glob("*.json") if p.is_file())


def _reclaim_abandoned(spool_dir: Path) -> None:
    """Put back files claimed by a flusher that died before it finished."""
    for path in spool_dir.glob(f"*.json{_CLAIMED}*"):
        original, _, pid = path.name.rpartition(_CLAIMED)
        if pid.isdigit() and not pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, spool_dir / original)


def flush_spool(conn_or_db: psycopg.Connection | Database, spool_dir: Path, *, closings: bool = True) -> FlushReport:
    """Write every spooled entry to the database, oldest first, and remove its file.

    Stops when the database cannot be reached (the entries stay spooled). A file that cannot be read,
    or that the database refuses, is renamed to ``*.bad`` and counted, never deleted. ``closings`` False
    leaves the ``SessionClosing`` entries spooled, for a flusher that cannot propose the facts of their
    sessions (``kb exec``): the hooks' warm process or ``kb audit flush`` writes them later.
    """
    if not spool_dir.is_dir():
        return FlushReport(0, 0, 0)
    _reclaim_abandoned(spool_dir)
    flushed = rejected = 0
    error: str | None = None
    closed: list[str] = []
    for path in pending_files(spool_dir):
        claimed = path.with_name(f"{path.name}{_CLAIMED}{os.getpid()}")
        try:
            os.replace(path, claimed)
        except FileNotFoundError:
            continue  # another flusher took it
        try:
            entry = load_spooled(claimed)
        except (OSError, ValueError) as exc:
            os.replace(claimed, path.with_name(path.name + ".bad"))
            rejected += 1
            error = f"{path.name}: {exc}"
            continue
        if isinstance(entry, SessionClosing) and not closings:
            os.replace(claimed, path)
            continue
        try:
            store_entry(conn_or_db, entry)
        except DatabaseError as exc:
            os.replace(claimed, path)
            error = first_line(exc)
            break
        except psycopg.Error as exc:  # refused for good (e.g. a project deleted since): keep it aside
            os.replace(claimed, path.with_name(path.name + ".bad"))
            rejected += 1
            error = f"{path.name}: {first_line(exc)}"
            continue
        claimed.unlink()
        flushed += 1
        if isinstance(entry, SessionClosing):
            closed.append(entry.task_id)
    return FlushReport(flushed, rejected, len(pending_files(spool_dir)), error, tuple(closed))
