"""Session advisory locks that coordinate writers across processes and machines.

``hold_locks(db, [Lock(...), ...])`` takes the locks in the order given on one dedicated pooled
connection and keeps them until the block ends (across any number of transactions on other
connections). A process that dies releases them with its connection. Keys are two 32-bit integers:
a class (below) and an id.

- ``(POPULATE_LOCK, project_id)``: one populate per project at a time.
- ``(REEMBED_LOCK, 0)``: shared by every populate, exclusive for ``kb reembed``.

Callers always take REEMBED before POPULATE, so these locks cannot deadlock.
(Schema migrations use the bigint key in ``knowledgebase.db.schema``.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import psycopg

    from knowledgebase.db import Database

POPULATE_LOCK = 0x6B70  # "kp"
REEMBED_LOCK = 0x6B72  # "kr"

TRY_LOCK = "SELECT pg_try_advisory_lock(%s, %s)"
TRY_LOCK_SHARED = "SELECT pg_try_advisory_lock_shared(%s, %s)"
LOCK = "SELECT pg_advisory_lock(%s, %s)"
LOCK_SHARED = "SELECT pg_advisory_lock_shared(%s, %s)"
UNLOCK = "SELECT pg_advisory_unlock(%s, %s)"
UNLOCK_SHARED = "SELECT pg_advisory_unlock_shared(%s, %s)"


@dataclass(frozen=True)
class Lock:
    """One advisory lock: ``(kind, ident)``, exclusive unless ``shared``."""

    kind: int
    ident: int
    shared: bool = False

    @property
    def key(self) -> tuple[int, int]:
        return (self.kind, self.ident % 2**31)


@contextmanager
def hold_locks(db: Database, locks: Sequence[Lock], on_wait: Callable[[], None] | None = None) -> Iterator[float]:
    """Hold ``locks`` (taken in order) for the block; yields the seconds spent waiting for them.

    ``on_wait`` is called once if any lock is held by someone else, before blocking on it.
    """
    with db.connection() as conn:
        started = time.perf_counter()
        taken: list[Lock] = []
        try:
            for lock in locks:
                row = conn.execute(TRY_LOCK_SHARED if lock.shared else TRY_LOCK, lock.key).fetchone()
                if not (row and row[0]):
                    if on_wait is not None:
                        on_wait()
                        on_wait = None
                    conn.execute(LOCK_SHARED if lock.shared else LOCK, lock.key)
                taken.append(lock)
            conn.commit()  # session locks outlive the transaction; do not sit idle in one
            yield time.perf_counter() - started
        finally:
            _release(conn, taken)


def _release(conn: psycopg.Connection, locks: list[Lock]) -> None:
    """Release session locks; a connection that cannot is closed (the server then drops its locks)."""
    import psycopg

    try:
        conn.rollback()
        for lock in reversed(locks):
            conn.execute(UNLOCK_SHARED if lock.shared else UNLOCK, lock.key)
        conn.commit()
    except psycopg.Error:
        conn.close()
