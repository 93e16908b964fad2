"""Re-indexing a few named files of an indexed project (after an agent edited them), as populate would.

``refresh_files(db, embedder, project, paths, settings=...)`` brings the named files' rows in line with
the disk and touches nothing else: each path goes through the same rules as ``populate_project``
(``scanning.scan_path``: ignore files, vendored directories, binary and too-large files), the same
read, redaction, chunking, vector reuse and batch writes (``ingest._Run``), so a changed file's
chunks, and the staleness of the facts read from them, end up exactly as a populate leaves them. A
named file that is gone, or is now skipped, leaves the index with its chunks. Paths outside the
project's root are ignored. It holds the same locks as populate (``(REEMBED_LOCK, 0)`` shared, then
``(POPULATE_LOCK, project_id)``), so it never races one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from knowledgebase.config import Settings
from knowledgebase.db.locks import POPULATE_LOCK, REEMBED_LOCK, Lock, hold_locks
from knowledgebase.embedding import Embedder
from knowledgebase.errors import InputError
from knowledgebase.index.ingest import RACY_WINDOW_NS, _check_model_name, _Prepared, _Run
from knowledgebase.index.scanning import ScannedFile, SkippedFile, scan_path
from knowledgebase.store import get_project, list_file_states, update_file_stats

if TYPE_CHECKING:
    from knowledgebase.db import Database


@dataclass(frozen=True)
class RefreshReport:
    """What ``refresh_files`` did: files (relative paths) re-indexed, removed, unchanged, skipped, outside."""

    project: str
    indexed: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]
    skipped: tuple[SkippedFile, ...]
    outside: tuple[str, ...]
    chunks_embedded: int
    seconds: float


def relative_to_root(root: Path, path: str) -> str | None:
    """``path`` (absolute, or relative to ``root``) as a ``/``-separated path under ``root``; None outside."""
    joined = os.path.normpath(os.path.join(root, path))
    try:
        rel = Path(joined).relative_to(root)
    except ValueError:
        return None
    text = rel.as_posix()
    return None if text in ("", ".") or text.startswith("../") else text


def refresh_files(
    db: Database, embedder: Embedder, project: str, paths: Iterable[str], *, settings: Settings
) -> RefreshReport:
    """Re-index ``paths`` (absolute or relative to the root) of the indexed project ``project``.

    Raises NotFound for an unknown project, InputError for one without a root (never populated),
    ModelMismatch when ``embedder`` is not the store's model.
    """
    started = time.perf_counter()
    with db.connection() as conn:
        record = get_project(conn, project)
        _check_model_name(conn, embedder)
    if record.root_path is None:
        raise InputError(f"project {project!r} has no root: index it first with `kb populate DIR --project {project}`")
    root = Path(record.root_path)
    wanted: dict[str, None] = {}
    outside: list[str] = []
    for path in paths:
        rel = relative_to_root(root, path)
        if rel is None:
            outside.append(path)
        else:
            wanted[rel] = None
    run = _Run(db, embedder, settings, record.id, lambda _: None)
    indexed: list[str] = []
    removed: list[str] = []
    unchanged: list[str] = []
    skipped: list[SkippedFile] = []
    if wanted:
        locks = [Lock(REEMBED_LOCK, 0, shared=True), Lock(POPULATE_LOCK, record.id)]
        with hold_locks(db, locks):
            run.racy_after = time.time_ns() - RACY_WINDOW_NS
            with db.connection() as conn:
                stored = {s.path: s for s in list_file_states(conn, record.id) if s.path in wanted}
            prepared: list[_Prepared] = []
            touched: list[tuple[int, int, int | None]] = []
            dropped: list[int] = []
            for rel in wanted:
                state = stored.get(rel)
                entry = scan_path(root, rel, settings)
                outcome: object = False
                if isinstance(entry, ScannedFile):
                    outcome = run._examine(entry, state)
                elif isinstance(entry, SkippedFile):
                    skipped.append(entry)
                if isinstance(entry, ScannedFile) and run.skipped:
                    skipped.extend(run.skipped)
                    run.skipped.clear()
                if isinstance(outcome, _Prepared):
                    prepared.append(outcome)
                    indexed.append(rel)
                elif isinstance(outcome, tuple):
                    touched.append(outcome)
                    unchanged.append(rel)
                elif outcome is True:
                    unchanged.append(rel)
                elif state is not None:
                    dropped.append(state.id)
                    removed.append(rel)
            run._write_batch(prepared)
            with db.connection() as conn:
                update_file_stats(conn, touched)
            run._delete(dropped)
    return RefreshReport(
        project=record.name,
        indexed=tuple(indexed),
        removed=tuple(removed),
        unchanged=tuple(unchanged),
        skipped=tuple(skipped),
        outside=tuple(outside),
        chunks_embedded=run.chunks_embedded,
        seconds=time.perf_counter() - started,
    )


__all__ = ["RefreshReport", "refresh_files", "relative_to_root"]
