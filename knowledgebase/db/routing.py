"""Reads on read replicas, writes on the primary, and a process that always reads its own writes.

``Database.read(fn)`` (``knowledgebase.db.pool``) runs a read-only ``fn(conn)`` here: on a replica
that is up, streaming and has replayed everything this process (or an earlier process of the same
KB_HOME) wrote, else on the primary. A replica that cannot be reached, dies in the middle of ``fn``
or cancels it (a conflict with recovery) is skipped for ``DOWN_SECONDS`` and ``fn`` runs again on
the next one or on the primary: a read is never lost, at worst it is slower.

Read-your-writes without a query per write: every primary checkout may have written, so it marks
the process "dirty"; the next read asks the primary once for its WAL position (``pg_current_wal_lsn``,
at or past our last commit) and then reads from a replica only once ``pg_last_wal_replay_lsn`` has
reached it. A process that only reads never asks the primary anything. ``Database.close`` leaves
that position in ``KB_HOME/read-after.lsn`` for the next process of the same home (``kb fact add``
then ``kb search``).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from knowledgebase.db.connect import configure_connection, database_errors
from knowledgebase.errors import DatabaseUnavailable
from knowledgebase.util.private_files import make_private_dir

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

T = TypeVar("T")
Primary = Callable[[], contextlib.AbstractContextManager["psycopg.Connection"]]  # a primary connection, unmarked
DOWN_SECONDS = 30.0  # a replica that failed is not tried again for this long
CHECK_SECONDS = 5.0  # how stale a replica's known state (streaming, replay position) may be
REPLICA_CONNECT_TIMEOUT_S = 2
REPLICA_POOL_TIMEOUT_S = 3.0


def lsn_value(lsn: str) -> int:
    """``"16/B374D848"`` as a number."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def with_primary_password(read_url: str, primary_url: str) -> str:
    """A read URL without a password of its own takes the primary's password or password file (a
    replica has the primary's roles and passwords)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    read = conninfo_to_dict(read_url)
    if read.get("password") or read.get("passfile"):
        return read_url
    primary = conninfo_to_dict(primary_url)
    extra = {k: primary[k] for k in ("password", "passfile") if primary.get(k)}
    return make_conninfo(read_url, **extra) if extra else read_url


@dataclass
class Replica:
    url: str
    pool: ConnectionPool
    down_until: float = 0.0
    checked_at: float = 0.0
    replay_lsn: int = 0
    streaming: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ReadRouter:
    """The replicas of one ``Database`` and what this process knows of them."""

    def __init__(self, urls: Sequence[str], primary_url: str, *, max_size: int, lsn_file: Path | None) -> None:
        from psycopg_pool import ConnectionPool

        self.replicas = [
            Replica(
                url=url,
                pool=ConnectionPool(
                    with_primary_password(url, primary_url),
                    min_size=0,
                    max_size=max_size,
                    configure=configure_connection,
                    kwargs={"connect_timeout": REPLICA_CONNECT_TIMEOUT_S},
                    timeout=REPLICA_POOL_TIMEOUT_S,
                    check=ConnectionPool.check_connection,
                    open=True,
                ),
            )
            for url in urls
        ]
        self.lsn_file = lsn_file
        self.dirty = False  # a primary connection was handed out since the last read
        self.target = _read_lsn(lsn_file)  # replay position a replica must reach before we read there
        self._next = 0
        self._lock = threading.Lock()
        self.last_source = "primary"  # where the latest read ran: "primary" or a replica's URL

    def close(self, primary: Primary) -> None:
        """Close the replicas' pools; leave this process's last write position for the next one."""
        if self.dirty and self.lsn_file is not None:
            with contextlib.suppress(DatabaseUnavailable):
                lsn = _primary_lsn(primary)
                if lsn is not None:
                    _write_lsn(self.lsn_file, lsn)
        for replica in self.replicas:
            replica.pool.close()

    def read(self, fn: Callable[[psycopg.Connection], T], primary: Primary) -> T:
        """``fn(conn)`` on a fresh replica, or on the primary when none is."""
        target = self._target(primary)
        with self._lock:
            start = self._next
            self._next = (self._next + 1) % len(self.replicas)
        now = time.monotonic()
        for replica in self.replicas[start:] + self.replicas[:start]:
            if replica.down_until > now:
                continue
            result = self._try(replica, fn, target)
            if result is not _SKIP:
                self.last_source = replica.url
                return result  # type: ignore[return-value]
        self.last_source = "primary"
        with primary() as conn:
            return fn(conn)

    def _target(self, primary: Primary) -> int | None:
        """The replay position reads must see, asking the primary only after it was used."""
        if self.dirty:
            self.dirty = False
            try:
                lsn = _primary_lsn(primary)
            except DatabaseUnavailable:
                return None  # the primary is down: any replica will do (writes spool meanwhile)
            if lsn is not None:
                self.target = max(self.target or 0, lsn)
        return self.target

    def _try(self, replica: Replica, fn: Callable[[psycopg.Connection], T], target: int | None) -> object:
        import psycopg

        try:
            with database_errors(replica.url), replica.pool.connection() as conn:
                if not self._fresh(replica, conn, target):
                    return _SKIP
                return fn(conn)
        except DatabaseUnavailable:
            replica.down_until = time.monotonic() + DOWN_SECONDS
            return _SKIP
        except (psycopg.errors.SerializationFailure, psycopg.errors.ReadOnlySqlTransaction):
            # cancelled by a conflict with recovery, or a caller that wrote in a read: the primary answers
            return _SKIP

    def _fresh(self, replica: Replica, conn: psycopg.Connection, target: int | None) -> bool:
        now = time.monotonic()
        caught_up = target is None or replica.replay_lsn >= target
        if now - replica.checked_at > CHECK_SECONDS or not caught_up:
            # the walreceiver's status is shown only to roles with pg_read_all_stats (not kb_agent): NULL
            # then, and read as "streaming"; the replay position is what read-your-writes relies on
            row = conn.execute(
                "SELECT pg_last_wal_replay_lsn()::text, (SELECT status FROM pg_stat_wal_receiver LIMIT 1),"
                " EXISTS (SELECT 1 FROM pg_stat_wal_receiver)"
            ).fetchone()
            assert row is not None
            with replica.lock:
                replica.replay_lsn = lsn_value(row[0]) if row[0] else 0
                replica.streaming = row[1] == "streaming" or (row[1] is None and bool(row[2]))
                replica.checked_at = now
            caught_up = target is None or replica.replay_lsn >= target
        # a replica cut off from its primary falls behind without knowing it: read elsewhere
        return caught_up and replica.streaming


_SKIP = object()


def _primary_lsn(primary: Primary) -> int | None:
    with primary() as conn:
        row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    return lsn_value(row[0]) if row else None


def _read_lsn(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return lsn_value(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_lsn(path: Path, lsn: int) -> None:
    """Keep the larger of ``lsn`` and what the file holds (several processes of one home write it)."""
    current = _read_lsn(path)
    if current is not None and current >= lsn:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        make_private_dir(path.parent)
        tmp.write_text(f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}\n")
        os.replace(tmp, path)
