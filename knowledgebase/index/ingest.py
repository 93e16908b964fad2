"""Populating a project's memory: scan, read, redact, chunk, embed and store its files, incrementally.

``populate_project(db, embedder, root, settings=...)`` brings ``project_files`` and ``file_chunks``
in line with the directory:

- An unchanged file costs one ``lstat``: its size and mtime (ns) match the stored row, and the row's
  ``chunked_hash`` equals its ``content_hash`` (its chunks are complete). A file whose stat changed is
  read and hashed (SHA-256 of the bytes on disk); if the hash is the stored one, only the stat is
  updated. A file modified less than ``RACY_WINDOW_NS`` before the scan is stored without its mtime,
  so the next run hashes it again: a same-size write within the file system's timestamp granularity
  would otherwise go unnoticed (git's "racily clean" problem).
- A new or changed file is redacted (``knowledgebase.util.redact``; the stored content and everything
  embedded are redacted), chunked, and only chunks whose content hash has no stored vector of the
  active model (in any project) are embedded; the others reuse the stored vector.
- Files that disappeared, or are now skipped (ignored, binary, too large...), leave the index with
  their chunks. The vectors of deleted or replaced chunks are kept for ``RELEASED_VECTOR_DAYS``
  (``chunk_vector_cache``), so indexing the same text again in that time embeds nothing. A file
  that kept changing while being read keeps its previous version until the next run.
- Facts read from a chunk that changed or disappeared are marked stale (``store.mark_changed_file_facts_stale``,
  ``store.mark_deleted_files_facts_stale``), in the same transaction as the chunk change.

A run first reads and chunks every new or changed file (phase ``reading``), so it knows how many chunks
need the model before it loads it: the progress can show an estimate and a rate. The prepared text is
held in memory until written (a few times the size of the changed files; at most ``max_file_bytes`` each).
Then work is committed in batches of about ``settings.ingest_batch_chunks`` chunks: one transaction writes
the batch's file rows, replaces their chunks (batched ``executemany``) and sets ``chunked_hash`` last,
so a run killed half-way keeps every finished batch and the next run redoes only the rest (a row
whose ``chunked_hash`` differs from its ``content_hash`` is always redone). Embedding happens before
the transaction opens, so no transaction is held while the model runs. The HNSW index is never
dropped: it is updated row by row and stays usable while rows stream in.

Concurrency: populating one project is serialised by a session advisory lock on
``(POPULATE_LOCK, project_id)`` held for the whole run on a dedicated connection
(``knowledgebase.db.locks``). A second agent populating the same project waits (progress phase
``waiting``), then finds everything unchanged, so no work is duplicated and no row conflicts;
different projects populate in parallel. Every populate also holds ``(REEMBED_LOCK, 0)`` shared,
which ``kb reembed`` (``reembed_store``, re-exported here) takes exclusively. Locks are always taken
in that order, so they cannot deadlock; a killed process releases them with its connection.

The embedding model is checked cheaply up front (by name, without loading it) and fully with
``bind_model`` before the first write.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from knowledgebase.config import Settings
from knowledgebase.db.locks import POPULATE_LOCK, REEMBED_LOCK, Lock, hold_locks
from knowledgebase.embedding import Embedder, bind_model
from knowledgebase.errors import InputError, ModelMismatch
from knowledgebase.index.chunking import Chunk, TokenCounter, chunk_text, token_counter
from knowledgebase.index.reembed import ReembedProgress, ReembedReport, embed_stored_chunks, reembed_store
from knowledgebase.index.reports import PopulateProgress, PopulateReport, PopulateTimings, ProgressCallback
from knowledgebase.index.scanning import (
    FileText,
    ScannedFile,
    SkippedFile,
    SkipReason,
    read_scanned,
    resolve_root,
    scan_project,
)
from knowledgebase.store import (
    FileState,
    NewChunk,
    NewFile,
    active_model,
    bind_project,
    chunk_vectors_by_hash,
    chunks_to_embed,
    delete_chunks_of_files,
    delete_files_by_id,
    fill_lexical,
    insert_chunks,
    list_file_states,
    mark_changed_file_facts_stale,
    mark_deleted_files_facts_stale,
    mark_files_chunked,
    prune_released_vectors,
    set_file_roles,
    update_file_stats,
    upsert_file,
)
from knowledgebase.util.redact import redact_text

if TYPE_CHECKING:
    import psycopg

    from knowledgebase.db import Database

MAX_FILES_PER_BATCH = 500
RACY_WINDOW_NS = 2_000_000_000  # coarsest common timestamp granularity (FAT: 2 s)
DELETE_BATCH = 1000
# Vectors of deleted chunks are reused by a later populate for this long (a file restored, a branch
# switched back, a project moved back to its root), then forgotten.
RELEASED_VECTOR_DAYS = 30

# Texts go to the model this many batches (KB_EMBED_BATCH_SIZE) per call, and a write batch's
# summaries in one call: the model sorts a call's texts by token count, so one batch per call padded
# more and cost 25% more than one call per write batch (OpenVINO, alembic: 18.0 s vs 14.7 s; four
# batches per call 15.1 s), while a call per write batch would leave progress unreported for seconds.
EMBED_CALL_BATCHES = 4


@dataclass(frozen=True)
class _Prepared:
    """A new or changed file, read, redacted and chunked, waiting for its batch."""

    text: FileText
    content: str
    chunks: list[Chunk]
    previous: FileState | None


def populate_project(
    db: Database,
    embedder: Embedder,
    root: Path | str,
    *,
    project: str | None = None,
    settings: Settings,
    progress: ProgressCallback | None = None,
    move_root: bool = False,
) -> PopulateReport:
    """Index the directory ``root`` as project ``project`` (default: the directory's name).

    A project is bound to the root it was first indexed from: ``move_root`` moves it to ``root``
    (its files are compared by relative path; vectors of unchanged chunks are reused), otherwise
    another root raises ProjectRootConflict before anything changes. Raises ProjectPathError for a
    path that is not a directory, ModelMismatch when ``embedder`` is not the store's model; an error
    half-way keeps every batch committed before it.
    """
    started = time.perf_counter()
    root_path = resolve_root(root)
    name = root_path.name if project is None else project.strip()
    if not name:
        raise InputError("the project name must not be empty")
    with db.connection() as conn:
        record = bind_project(conn, name, str(root_path), move_root=move_root)
        _check_model_name(conn, embedder)
    run = _Run(db, embedder, settings, record.id, progress or (lambda _: None))
    locks = [Lock(REEMBED_LOCK, 0, shared=True), Lock(POPULATE_LOCK, record.id)]
    with hold_locks(db, locks, on_wait=lambda: run.notify(PopulateProgress("waiting"))) as lock_wait:
        run.execute(root_path)
    return run.report(name, root_path, lock_wait, time.perf_counter() - started)


def _check_model_name(conn: psycopg.Connection, embedder: Embedder) -> None:
    """Refuse a model with another name before scanning, without loading it (``bind_model`` checks the rest)."""
    active = active_model(conn)
    if active is not None and active.name != embedder.name:
        raise ModelMismatch(
            f"the store's vectors were made by {active.name} ({active.dimension} dimensions) but the "
            f"configured model is {embedder.name}: run `kb reembed` to move the store to the new model, "
            f"or set KB_EMBED_MODEL={active.name}"
        )


@dataclass
class _Run:
    """The state of one populate run (counters, pending batch, lazily bound model)."""

    db: Database
    embedder: Embedder
    settings: Settings
    project_id: int
    notify: ProgressCallback
    added: int = 0
    changed: int = 0
    unchanged: int = 0
    deleted: int = 0
    files_indexed: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    summaries_embedded: int = 0
    secrets_redacted: int = 0
    files_total: int = 0
    files_done: int = 0
    chunks_to_embed: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    lossy: list[str] = field(default_factory=list)
    seconds: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    model_id: int | None = None
    racy_after: int = 0
    _count_tokens: TokenCounter | None = None

    def execute(self, root: Path) -> None:
        self.notify(PopulateProgress("scanning"))
        self.racy_after = time.time_ns() - RACY_WINDOW_NS
        clock = time.perf_counter()
        entries = list(scan_project(root, self.settings))
        with self.db.connection() as conn:
            stored = {state.path: state for state in list_file_states(conn, self.project_id)}
        self.seconds["scan"] += time.perf_counter() - clock
        files = [entry for entry in entries if isinstance(entry, ScannedFile)]
        self.skipped.extend(entry for entry in entries if isinstance(entry, SkippedFile))
        self.files_total = len(files)
        kept: set[str] = set()
        touched: list[tuple[int, int, int | None]] = []
        # files kept as they are whose role is missing (indexed before roles) or has changed
        roles = [
            (state.id, file.role)
            for file in files
            if (state := stored.get(file.rel_path)) is not None and state.role != file.role
        ]
        prepared: list[_Prepared] = []
        # First read and chunk every new or changed file, so the chunks to embed are known (and the
        # time it will take can be told) before the model runs; then embed and write them in batches.
        for file in files:
            state = stored.get(file.rel_path)
            outcome = self._examine(file, state)
            if outcome is not False:
                kept.add(file.rel_path)
            if isinstance(outcome, _Prepared):
                prepared.append(outcome)
            elif isinstance(outcome, tuple):
                touched.append(outcome)
            self.files_done += 1
            self.notify(self._progress("reading", file.rel_path))
        self.chunks_to_embed = self._count_to_embed(prepared)
        batch: list[_Prepared] = []
        for item in prepared:
            batch.append(item)
            pending = sum(len(p.chunks) for p in batch)
            if pending >= self.settings.ingest_batch_chunks or len(batch) >= MAX_FILES_PER_BATCH:
                self._write_batch(batch)
                batch = []
        self._write_batch(batch)
        clock = time.perf_counter()
        with self.db.connection() as conn:
            update_file_stats(conn, touched)
            set_file_roles(conn, roles)
        self.seconds["write"] += time.perf_counter() - clock
        self._delete([state.id for path, state in stored.items() if path not in kept])
        with self.db.connection() as conn:
            prune_released_vectors(conn, RELEASED_VECTOR_DAYS)
            fill_lexical(conn, self.project_id)  # chunks stored before BM25 (migration 0008)
            active = active_model(conn)
            stale = active is not None and bool(
                chunks_to_embed(conn, active.id, after=0, limit=1, project_id=self.project_id)
            )
        if stale:  # chunks stored before their summaries (migration 0009): the model loads only then
            self.summaries_embedded += embed_stored_chunks(
                self.db, self.embedder, self._bind_model(), project_id=self.project_id
            )
        self.files_indexed = len(kept)
        self.notify(self._progress("done"))

    def _examine(self, file: ScannedFile, state: FileState | None) -> _Prepared | tuple[int, int, int | None] | bool:
        """The work ``file`` needs: a prepared file, a stat update, True (keep as is) or False (drop)."""
        complete = state is not None and state.chunked_hash == state.content_hash
        if state is not None and complete and (state.size_bytes, state.mtime_ns) == (file.size, file.mtime_ns):
            self.unchanged += 1
            return True
        clock = time.perf_counter()
        try:
            result = read_scanned(file, max_bytes=self.settings.max_file_bytes)
            if isinstance(result, SkippedFile):
                self.skipped.append(result)
                return result.reason is SkipReason.CHANGING and state is not None
            if state is not None and complete and result.content_hash == state.content_hash:
                self.unchanged += 1
                return (state.id, result.file.size, self._settled_mtime(result.file))
            if result.lossy_decode:
                self.lossy.append(file.rel_path)
            return self._prepare(result, state)
        finally:
            self.seconds["read"] += time.perf_counter() - clock

    def _settled_mtime(self, file: ScannedFile) -> int | None:
        """The mtime to store: None for a file modified too recently to trust (re-hashed next run)."""
        return file.mtime_ns if file.mtime_ns < self.racy_after else None

    def _prepare(self, text: FileText, state: FileState | None) -> _Prepared:
        redaction = redact_text(text.text)
        self.secrets_redacted += redaction.count
        if self._count_tokens is None:
            self._count_tokens = token_counter(self.embedder)
        chunks = chunk_text(
            redaction.text,
            text.file.rel_path,
            text.file.language,
            count_tokens=self._count_tokens,
            max_tokens=self.settings.chunk_tokens,
        )
        return _Prepared(text=text, content=redaction.text, chunks=chunks, previous=state)

    def _count_to_embed(self, prepared: list[_Prepared]) -> int:
        """How many distinct chunk texts of ``prepared`` have no stored vector of the store's model."""
        hashes = list({chunk.content_hash for item in prepared for chunk in item.chunks})
        if not hashes:
            return 0
        with self.db.connection() as conn:
            active = active_model(conn)
            stored = chunk_vectors_by_hash(conn, hashes, active.id) if active is not None else {}
        return len(hashes) - len(stored)

    def _write_batch(self, batch: list[_Prepared]) -> None:
        """Embed what is new in ``batch`` (no transaction open), then write it in one transaction."""
        if not batch:
            return
        model_id = self._bind_model()
        texts = {chunk.content_hash: chunk.embedding_text for prepared in batch for chunk in prepared.chunks}
        summaries = dict(item for prepared in batch for chunk in prepared.chunks for item in chunk.summaries)
        clock = time.perf_counter()
        with self.db.connection() as conn:
            vectors = chunk_vectors_by_hash(conn, [*texts, *summaries], model_id)
        self.seconds["write"] += time.perf_counter() - clock
        missing = {content_hash: text for content_hash, text in texts.items() if content_hash not in vectors}
        vectors.update(self._embed(missing))
        vectors.update(self._embed({h: text for h, text in summaries.items() if h not in vectors}, counted=False))
        clock = time.perf_counter()
        with self.db.connection() as conn:
            rows: list[NewChunk] = []
            written: list[int] = []
            for prepared in batch:
                file_id = self._write_file(conn, prepared)
                written.append(file_id)
                rows.extend(chunk_rows(prepared.chunks, file_id, self.project_id, vectors, model_id))
            replaced = [file_id for file_id, p in zip(written, batch, strict=True) if p.previous is not None]
            delete_chunks_of_files(conn, replaced)
            insert_chunks(conn, rows)
            mark_files_chunked(conn, written)  # last: the files' chunks are complete
        self.seconds["write"] += time.perf_counter() - clock
        total = sum(len(p.chunks) for p in batch)
        self.chunks_written += total
        self.chunks_reused += total - len(missing)
        self._tick(batch[-1].text.file.rel_path)

    def _write_file(self, conn: psycopg.Connection, prepared: _Prepared) -> int:
        file = prepared.text.file
        row = upsert_file(
            conn,
            NewFile(
                project_id=self.project_id,
                path=file.rel_path,
                content=prepared.content,
                content_hash=prepared.text.content_hash,
                size_bytes=file.size,
                language=file.language,
                mtime_ns=self._settled_mtime(file),
                lossy_decode=prepared.text.lossy_decode,
                role=file.role,
            ),
        )
        if prepared.previous is None:
            self.added += 1
        else:
            self.changed += 1
            mark_changed_file_facts_stale(conn, row.id, [chunk.content_hash for chunk in prepared.chunks])
        return row.id

    def _embed(self, texts: dict[str, str], *, counted: bool = True) -> dict[str, np.ndarray]:
        """Vectors for ``texts`` (hash -> text), in model batches of similar length, reporting progress
        (``counted`` False: summaries, which the chunk counts leave out)."""
        if not texts:
            return {}
        items = sorted(texts.items(), key=lambda item: len(item[1]), reverse=True)
        step = max(1, self.settings.embed_batch_size) * EMBED_CALL_BATCHES if counted else len(items)
        vectors: dict[str, np.ndarray] = {}
        for offset in range(0, len(items), step):
            part = items[offset : offset + step]
            clock = time.perf_counter()
            embedded = self.embedder.embed_documents([text for _, text in part])
            self.seconds["embed"] += time.perf_counter() - clock
            vectors.update(zip((content_hash for content_hash, _ in part), embedded, strict=True))
            if counted:
                self.chunks_embedded += len(part)
                self._tick(None)
            else:
                self.summaries_embedded += len(part)
        return vectors

    def _bind_model(self) -> int:
        if self.model_id is None:
            self.notify(self._progress("loading"))  # binding asks the model its dimension: it loads now
            with self.db.connection() as conn:
                self.model_id = bind_model(conn, self.embedder)
        return self.model_id

    def _delete(self, file_ids: list[int]) -> None:
        """Remove files that left the project, marking the facts read from them stale first."""
        if not file_ids:
            return
        self.notify(self._progress("deleting"))
        clock = time.perf_counter()
        for offset in range(0, len(file_ids), DELETE_BATCH):
            part = file_ids[offset : offset + DELETE_BATCH]
            with self.db.connection() as conn:
                mark_deleted_files_facts_stale(conn, part)
                self.deleted += delete_files_by_id(conn, part)
        self.seconds["write"] += time.perf_counter() - clock

    def _progress(self, phase: str, path: str | None = None) -> PopulateProgress:
        return PopulateProgress(
            phase=phase,
            files_total=self.files_total,
            files_done=self.files_done,
            chunks_embedded=self.chunks_embedded,
            chunks_reused=self.chunks_reused,
            embed_seconds=self.seconds["embed"],
            path=path,
            chunks_to_embed=self.chunks_to_embed,
        )

    def _tick(self, path: str | None) -> None:
        self.notify(self._progress("embedding", path))

    def report(self, name: str, root: Path, lock_wait: float, total: float) -> PopulateReport:
        return PopulateReport(
            project=name,
            project_id=self.project_id,
            root=str(root),
            files_indexed=self.files_indexed,
            added=self.added,
            changed=self.changed,
            unchanged=self.unchanged,
            deleted=self.deleted,
            skipped=tuple(self.skipped),
            skipped_by_reason=dict(Counter(str(s.reason) for s in self.skipped).most_common()),
            lossy_files=tuple(self.lossy),
            chunks_written=self.chunks_written,
            chunks_embedded=self.chunks_embedded,
            chunks_reused=self.chunks_reused,
            summaries_embedded=self.summaries_embedded,
            secrets_redacted=self.secrets_redacted,
            backend=(
                str(getattr(self.embedder, "runs_on", self.embedder.name))
                if self.chunks_embedded or self.summaries_embedded
                else "unused"
            ),
            timings=PopulateTimings(
                lock_wait=lock_wait,
                scan=self.seconds["scan"],
                read=self.seconds["read"],
                embed=self.seconds["embed"],
                write=self.seconds["write"],
                total=total,
            ),
        )


def chunk_rows(
    chunks: list[Chunk], file_id: int, project_id: int, vectors: dict[str, np.ndarray], model_id: int
) -> list[NewChunk]:
    """The rows to store for a file's chunks, each with its vector and its summaries' (``vectors``: by
    content hash and summary hash)."""
    return [
        NewChunk(
            file_id=file_id,
            project_id=project_id,
            chunk_index=chunk.index,
            start_line=chunk.start_line,
            end_line=chunk.end_line,
            kind=chunk.kind,
            symbol=chunk.symbol,
            content=chunk.content,
            content_hash=chunk.content_hash,
            token_count=chunk.token_count,
            embedding=vectors[chunk.content_hash],
            embedding_model_id=model_id,
            summaries=tuple((summary, vectors[summary]) for summary, _ in chunk.summaries),
        )
        for chunk in chunks
    ]


__all__ = [
    "PopulateProgress",
    "PopulateReport",
    "PopulateTimings",
    "ProgressCallback",
    "ReembedProgress",
    "ReembedReport",
    "populate_project",
    "reembed_store",
]
