"""Keeping the index fresh from the warm process: re-index files the agents write, populate on session start.

``Freshener(store)`` runs one background thread (``kb-fresh``) per warm process. The hooks only queue
work and return: ``queue_files(project, paths)`` after ``write_file``/``replace`` (or a command whose
written files are known), ``queue_populate(project)`` at SessionStart. Queued files are re-indexed
``debounce_s`` seconds (default 0.4) after the last request for their project, so a burst of
edits to one file costs one refresh (``index.refresh.refresh_files``); a queued populate is an incremental
``populate_project`` of the project's recorded root (projects never populated are left alone). Both hold
the project's populate lock, so they never race a ``kb populate``. Failures are logged, never raised:
the next edit or populate tries again.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from knowledgebase.errors import KnowledgebaseError

if TYPE_CHECKING:
    from knowledgebase.config import Settings
    from knowledgebase.db import Database
    from knowledgebase.embedding import Embedder

log = logging.getLogger("knowledgebase.gemini.freshness")

DEFAULT_DEBOUNCE_S = 0.4


class _Services(Protocol):
    settings: Settings

    def database(self) -> Database: ...

    def embedder(self) -> Embedder: ...


@dataclass(frozen=True)
class FreshStats:
    """What the freshener did so far (for tests and the benchmark)."""

    refreshes: int
    files_refreshed: int
    populates: int
    failures: int
    pending: int


@dataclass
class _Pending:
    paths: set[str] = field(default_factory=set)
    due: float = 0.0
    populate: bool = False


class Freshener:
    """The queue of re-index work and the thread that does it, debounced per project."""

    def __init__(self, services: _Services, debounce_s: float = DEFAULT_DEBOUNCE_S) -> None:
        self._services = services
        self.debounce_s = debounce_s
        self._pending: dict[str, _Pending] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._busy = 0
        self._refreshes = 0
        self._files = 0
        self._populates = 0
        self._failures = 0
        self._closed = False

    def queue_files(self, project: str, paths: list[str]) -> None:
        """Re-index ``paths`` of ``project`` once edits to it pause for ``debounce_s``; returns at once."""
        with self._cond:
            if self._closed or not paths:
                return
            pending = self._pending.setdefault(project, _Pending())
            pending.paths.update(paths)
            pending.due = time.monotonic() + self.debounce_s
            self._wake()

    def queue_populate(self, project: str) -> None:
        """Populate ``project`` incrementally in the background (if it was ever populated); returns at once."""
        with self._cond:
            if self._closed:
                return
            pending = self._pending.setdefault(project, _Pending())
            pending.populate = True
            pending.due = min(pending.due or time.monotonic(), time.monotonic())
            self._wake()

    def stats(self) -> FreshStats:
        with self._cond:
            return FreshStats(
                refreshes=self._refreshes,
                files_refreshed=self._files,
                populates=self._populates,
                failures=self._failures,
                pending=len(self._pending) + self._busy,
            )

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until nothing is queued or running; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._pending or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self, wait_s: float = 10.0) -> None:
        """Drop queued work and wait up to ``wait_s`` for a running job to finish (it keeps its locks)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()
            while self._busy and (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="kb-fresh", daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def _loop(self) -> None:
        while True:
            with self._cond:
                job = self._next_due()
                if job is None:
                    return
                project, pending = job
                self._busy += 1
            try:
                self._run(project, pending)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _next_due(self) -> tuple[str, _Pending] | None:
        """The next project whose work is due (waits for it, holding the condition); None when closed."""
        while not self._closed:
            if not self._pending:
                self._cond.wait(30.0)
                if not self._pending:
                    return None  # idle: the thread ends; the next request starts another
                continue
            project, pending = min(self._pending.items(), key=lambda item: item[1].due)
            left = pending.due - time.monotonic()
            if left <= 0:
                del self._pending[project]
                return project, pending
            self._cond.wait(left)
        return None

    def _run(self, project: str, pending: _Pending) -> None:
        try:
            db = self._services.database()
            embedder = self._services.embedder()
            if pending.populate:
                self._populate(db, embedder, project)
            elif pending.paths:
                self._refresh(db, embedder, project, sorted(pending.paths))
        except KnowledgebaseError as exc:
            with self._cond:
                self._failures += 1
            log.warning("could not refresh project %s: %s", project, exc)
        except Exception:  # a bug must not kill the warm process's thread silently
            with self._cond:
                self._failures += 1
            log.exception("refreshing project %s failed", project)

    def _refresh(self, db: Database, embedder: Embedder, project: str, paths: list[str]) -> None:
        from knowledgebase.index.refresh import refresh_files

        report = refresh_files(db, embedder, project, paths, settings=self._services.settings)
        with self._cond:
            self._refreshes += 1
            self._files += len(report.indexed) + len(report.removed)
        log.info(
            "refreshed %s: %d indexed, %d removed, %d unchanged, %d skipped, %d outside in %.2fs",
            project,
            len(report.indexed),
            len(report.removed),
            len(report.unchanged),
            len(report.skipped),
            len(report.outside),
            report.seconds,
        )

    def _populate(self, db: Database, embedder: Embedder, project: str) -> None:
        from knowledgebase import store
        from knowledgebase.index.ingest import populate_project

        with db.connection() as conn:
            record = store.find_project(conn, project)
        if record is None or record.root_path is None:
            return  # never populated: a session start does not index a folder on its own
        report = populate_project(db, embedder, record.root_path, project=project, settings=self._services.settings)
        with self._cond:
            self._populates += 1
        log.info(
            "populated %s: %d added, %d changed, %d deleted in %.1fs",
            project,
            report.added,
            report.changed,
            report.deleted,
            report.timings.total,
        )


__all__ = ["DEFAULT_DEBOUNCE_S", "FreshStats", "Freshener"]
