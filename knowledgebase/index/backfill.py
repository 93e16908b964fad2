"""Making rows written without ``kb`` searchable (``kb reembed --missing``).

Plain SQL written against the seed design (its ``populate_context.py`` or ``db_utils.py``, a
notebook, psql) can insert ``project_files`` rows and ``knowledge`` facts directly; the schema's
triggers fill in their hashes, sizes and full-text vectors, but nothing chunks or embeds them.
``index_missing(db, embedder, settings=...)`` does:

- **files** whose ``chunked_hash`` differs from their ``content_hash`` (no chunks yet, or content
  changed by SQL): the stored text is redacted (and stored back redacted when a secret was found),
  chunked as populate chunks it (language from the path when unknown), embedded (reusing any stored
  vector of the same chunk text), and written with ``chunked_hash`` set, one transaction per batch.
  A file over ``max_file_bytes`` or whose text is mostly control characters is skipped with its
  reason, as populate skips it, and keeps waiting;
- **facts** with no vector of the store's model: label and value are redacted (stored back when a
  secret was found), embedded as ``knowledgebase.facts`` embeds them, and get the full-text vector
  ``insert_knowledge`` would give them (with identifier parts);
- **chunks** stored before BM25 (migration 0008) get their BM25 vector from their text (no model).

The store's model is checked first (``bind_model``: ModelMismatch for another model). Files of one
project are done under that project's populate lock (and the shared re-embed lock), so this never
interleaves with a ``kb populate`` of the same project. Interrupting it loses at most the batch in
flight; running it again goes on where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from knowledgebase.config import Settings
from knowledgebase.db.locks import POPULATE_LOCK, REEMBED_LOCK, Lock, hold_locks
from knowledgebase.embedding import Embedder, bind_model
from knowledgebase.facts import fact_embedding_text
from knowledgebase.index.chunking import chunk_text, token_counter
from knowledgebase.index.ingest import chunk_rows
from knowledgebase.index.reembed import embed_missing, embed_stored_chunks
from knowledgebase.index.scanning import SkipReason, language_for, mostly_control
from knowledgebase.store import (
    chunk_vectors_by_hash,
    chunks_to_embed,
    delete_chunks_of_files,
    fill_lexical,
    insert_chunks,
    knowledge_to_embed,
    list_projects,
    mark_files_chunked,
    projects_with_waiting_files,
    set_fact_text_and_vector,
    set_file_content,
    waiting_files,
)
from knowledgebase.util.redact import redact_text

if TYPE_CHECKING:
    from knowledgebase.db import Database
    from knowledgebase.store import WaitingFile

BATCH_FILES = 50
BATCH_FACTS = 256


@dataclass(frozen=True)
class BackfillSkip:
    """A waiting file left as it is, and why."""

    file_id: int
    path: str
    reason: str


@dataclass(frozen=True)
class BackfillProgress:
    """``phase`` is files or facts; ``done`` counts rows handled so far in that phase."""

    phase: str
    done: int


@dataclass(frozen=True)
class BackfillReport:
    files_chunked: int
    chunks_written: int
    chunks_embedded: int
    facts_embedded: int
    secrets_redacted: int
    skipped: tuple[BackfillSkip, ...]
    lexical_filled: int = 0  # chunks stored before BM25 (migration 0008) given their BM25 vector
    summaries_embedded: int = 0  # texts embedded for chunks stored before their summaries (migration 0009)


@dataclass
class _Counts:
    notify: Callable[[BackfillProgress], None]
    files_chunked: int = 0
    chunks_written: int = 0
    chunks_embedded: int = 0
    facts_embedded: int = 0
    secrets_redacted: int = 0
    skipped: list[BackfillSkip] = field(default_factory=list)
    lexical_filled: int = 0
    summaries_embedded: int = 0


def index_missing(
    db: Database,
    embedder: Embedder,
    *,
    settings: Settings,
    progress: Callable[[BackfillProgress], None] | None = None,
) -> BackfillReport:
    """Chunk and embed the files that have no chunks, give stored chunks without summaries theirs,
    and embed the facts that have no vector."""
    counts = _Counts(notify=progress or (lambda _: None))
    with db.connection() as conn:
        model_id = bind_model(conn, embedder)
        waiting = projects_with_waiting_files(conn)
        unsummarised = [
            p.id
            for p in list_projects(conn)
            if p.id not in waiting and chunks_to_embed(conn, model_id, after=0, limit=1, project_id=p.id)
        ]
    for project_id in [*waiting, *unsummarised]:
        with hold_locks(db, [Lock(REEMBED_LOCK, 0, shared=True), Lock(POPULATE_LOCK, project_id)]):
            if project_id in waiting:
                _files(db, embedder, settings, project_id, model_id, counts)
            counts.summaries_embedded += embed_stored_chunks(db, embedder, model_id, project_id=project_id)
    with db.connection() as conn:
        counts.lexical_filled = fill_lexical(conn)  # chunks stored before BM25 (migration 0008): no model
    _facts(db, embedder, model_id, counts)
    return BackfillReport(
        files_chunked=counts.files_chunked,
        chunks_written=counts.chunks_written,
        chunks_embedded=counts.chunks_embedded,
        facts_embedded=counts.facts_embedded,
        secrets_redacted=counts.secrets_redacted,
        skipped=tuple(counts.skipped),
        lexical_filled=counts.lexical_filled,
        summaries_embedded=counts.summaries_embedded,
    )


def _skip_reason(file: WaitingFile, settings: Settings) -> str | None:
    if file.size_bytes > settings.max_file_bytes:
        return f"{SkipReason.TOO_LARGE} ({file.size_bytes} bytes, KB_MAX_FILE_BYTES is {settings.max_file_bytes})"
    if "\ufffd" * 8 in file.content or mostly_control(file.content[:8192]):
        return f"{SkipReason.BINARY} (undecodable or control characters)"
    return None


def _files(
    db: Database, embedder: Embedder, settings: Settings, project_id: int, model_id: int, counts: _Counts
) -> None:
    count_tokens = token_counter(embedder)
    after = 0
    while True:
        with db.connection() as conn:
            batch = waiting_files(conn, project_id, after=after, limit=BATCH_FILES)
        if not batch:
            return
        after = batch[-1].id
        prepared = []
        for file in batch:
            reason = _skip_reason(file, settings)
            if reason is not None:
                counts.skipped.append(BackfillSkip(file.id, file.path, reason))
                continue
            redaction = redact_text(file.content)
            counts.secrets_redacted += redaction.count
            language = file.language or language_for(file.path)
            chunks = chunk_text(
                redaction.text, file.path, language, count_tokens=count_tokens, max_tokens=settings.chunk_tokens
            )
            prepared.append((file, redaction, language, chunks))
        texts = {chunk.content_hash: chunk.embedding_text for *_, chunks in prepared for chunk in chunks}
        summaries = dict(item for *_, chunks in prepared for chunk in chunks for item in chunk.summaries)
        with db.connection() as conn:
            vectors = chunk_vectors_by_hash(conn, [*texts, *summaries], model_id)
        missing = [content_hash for content_hash in texts if content_hash not in vectors]
        vectors.update(embed_missing(embedder, texts | summaries, vectors))
        with db.connection() as conn:
            for file, redaction, language, _chunks in prepared:
                if redaction.count or language != file.language:
                    set_file_content(conn, file.id, redaction.text, language)
            file_ids = [file.id for file, *_ in prepared]
            delete_chunks_of_files(conn, file_ids)
            for file, *_, chunks in prepared:
                insert_chunks(conn, chunk_rows(chunks, file.id, project_id, vectors, model_id))
            mark_files_chunked(conn, file_ids)
        counts.files_chunked += len(prepared)
        counts.chunks_written += sum(len(chunks) for *_, chunks in prepared)
        counts.chunks_embedded += len(missing)
        counts.notify(BackfillProgress("files", counts.files_chunked + len(counts.skipped)))


def _facts(db: Database, embedder: Embedder, model_id: int, counts: _Counts) -> None:
    after = 0
    while True:
        with db.connection() as conn:
            rows = knowledge_to_embed(conn, model_id, after=after, limit=BATCH_FACTS)
        if not rows:
            return
        after = rows[-1].id
        cleaned = []
        for row in rows:
            label_redaction, value_redaction = redact_text(row.fact_label), redact_text(row.fact_value)
            counts.secrets_redacted += label_redaction.count + value_redaction.count
            cleaned.append((row.id, label_redaction.text, value_redaction.text))
        vectors = embedder.embed_documents([fact_embedding_text(label, value) for _, label, value in cleaned])
        with db.connection() as conn:
            for (fact_id, label, value), vector in zip(cleaned, vectors, strict=True):
                set_fact_text_and_vector(conn, fact_id, label, value, vector, model_id)
        counts.facts_embedded += len(rows)
        counts.notify(BackfillProgress("facts", counts.facts_embedded))
