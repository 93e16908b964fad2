"""Audit entries kept on local disk while the database is unreachable, and written to it later.

``kb exec`` runs the command and exits with its code even when the database is down, and does not
drop the log entry: the entry (already redacted, with the time it happened) is written as one JSON
file under ``KB_HOME/spool/`` and a warning on stderr says so. ``kb audit flush``, and every later
``kb exec`` that reaches the database, writes the spooled entries in the order they happened and
removes the files. Delivery is at least once: a crash between the commit and the removal of a file
replays that entry. Concurrent flushers do not double-write: each claims a file by renaming it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from knowledgebase.coordination.audit import CommandRecord, store_command
from knowledgebase.db import Database
from knowledgebase.errors import DatabaseError, first_line
from knowledgebase.store.audit import NewCommandLog, NewCommandOutput
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


def spool_command(spool_dir: Path, record: CommandRecord) -> Path:
    """Write ``record`` to the spool (atomically, private to the user); returns the file."""
    now = datetime.now(UTC)
    exchange = replace(record.exchange, executed_at=record.exchange.executed_at or now)
    outcome = replace(record.outcome, created_at=record.outcome.created_at or now)
    payload = {
        "version": SPOOL_VERSION,
        "type": "command",
        "exchange": _jsonable(exchange),
        "outcome": _jsonable(outcome),
    }
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


def load_spooled(path: Path) -> CommandRecord:
    """The record in a spool file (ValueError if the file is not one)."""
    payload = json.loads(path.read_text(encoding="utf-8"))
    if (
        not isinstance(payload, dict)
        or payload.get("version") not in (1, SPOOL_VERSION)
        or payload.get("type") != "command"
    ):
        raise ValueError(f"{path.name} is not a spooled command (version {SPOOL_VERSION})")
    try:
        exchange = NewCommandLog(**_timestamped(_renamed(payload, "exchange")))
        outcome = NewCommandOutput(**_timestamped(_renamed(payload, "outcome")))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path.name} is incomplete: {exc}") from None
    return CommandRecord(exchange, outcome)


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


def flush_spool(conn_or_db: psycopg.Connection | Database, spool_dir: Path) -> FlushReport:
    """Write every spooled entry to the database, oldest first, and remove its file.

    Stops when the database cannot be reached (the entries stay spooled). A file that cannot be read,
    or that the database refuses, is renamed to ``*.bad`` and counted, never deleted.
    """
    if not spool_dir.is_dir():
        return FlushReport(0, 0, 0)
    _reclaim_abandoned(spool_dir)
    flushed = rejected = 0
    error: str | None = None
    for path in pending_files(spool_dir):
        claimed = path.with_name(f"{path.name}{_CLAIMED}{os.getpid()}")
        try:
            os.replace(path, claimed)
        except FileNotFoundError:
            continue  # another flusher took it
        try:
            record = load_spooled(claimed)
        except (OSError, ValueError) as exc:
            os.replace(claimed, path.with_name(path.name + ".bad"))
            rejected += 1
            error = f"{path.name}: {exc}"
            continue
        try:
            store_command(conn_or_db, record)
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
    return FlushReport(flushed, rejected, len(pending_files(spool_dir)), error)
