"""Moving a store to another embedding model (``kb reembed``).

``reembed_store(db, embedder)`` makes ``embedder`` the store's model and re-embeds every chunk and
fact that holds another model's vector (or none):

1. Under an exclusive ``(REEMBED_LOCK, 0)`` advisory lock (``knowledgebase.db.locks``; every populate
   holds it shared, so the two never interleave), in one transaction: when the dimension changes,
   drop the two HNSW indexes, retype ``file_chunks.embedding`` and ``knowledge.embedding`` to
   ``vector(new dimension)`` (old vectors become NULL: they cannot be converted) and clear their
   model ids; then record and activate the new model. From here on, agents configured with the old
   model get ModelMismatch.
2. Re-embed chunks (the text is rebuilt exactly with ``chunking.embedding_text``; a content hash
   already embedded by the new model is reused) and facts (``"label: value"``, as
   ``knowledgebase.facts`` embeds them), in batches committed one by one, walking ids in order.
3. Recreate the HNSW indexes if they were dropped (building once after the bulk load is much faster
   than maintaining them row by row).

An interrupted run leaves a consistent store on the new model with some rows not yet embedded;
running ``kb reembed`` again finishes the job (and recreates any missing index).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from knowledgebase.db.locks import REEMBED_LOCK, Lock, hold_locks
from knowledgebase.embedding import Embedder
from knowledgebase.facts import fact_embedding_text
from knowledgebase.index.chunking import embedding_text
from knowledgebase.index.summaries import summary_items
from knowledgebase.store import (
    activate_model,
    active_model,
    chunk_vectors_by_hash,
    chunks_to_embed,
    create_missing_hnsw_indexes,
    embedding_backlog,
    knowledge_to_embed,
    retype_vector_columns,
    set_chunk_embeddings,
    set_knowledge_embeddings,
    upsert_model,
    vector_column_dimension,
)

if TYPE_CHECKING:
    from knowledgebase.db import Database

BATCH = 256


@dataclass(frozen=True)
class ReembedProgress:
    """How far a re-embedding is (``phase``: chunks, facts, indexing, done)."""

    phase: str
    done: int
    total: int


@dataclass(frozen=True)
class ReembedReport:
    """What ``reembed_store`` did."""

    model: str
    dimension: int
    previous_model: str | None
    previous_dimension: int | None
    retyped: bool
    chunks_embedded: int
    chunks_reused: int
    facts_embedded: int
    seconds: float
    summaries_embedded: int = 0  # short texts of definitions (knowledgebase.index.summaries)


def reembed_store(
    db: Database, embedder: Embedder, progress: Callable[[ReembedProgress], None] | None = None
) -> ReembedReport:
    """Make ``embedder`` the store's model and re-embed every chunk and fact that needs it."""
    notify = progress or (lambda _: None)
    started = time.perf_counter()
    with hold_locks(db, [Lock(REEMBED_LOCK, 0)], on_wait=lambda: notify(ReembedProgress("waiting", 0, 0))):
        with db.connection() as conn:
            previous = active_model(conn)
            retyped = vector_column_dimension(conn) != embedder.dimension
            if retyped:
                retype_vector_columns(conn, embedder.dimension)
            model_id = activate_model(conn, upsert_model(conn, embedder.name, embedder.dimension).id).id
            backlog = embedding_backlog(conn, model_id)
            total = backlog.chunks + backlog.facts
        counts = _Counts(total=total, notify=notify)
        _reembed_chunks(db, embedder, model_id, counts)
        _reembed_facts(db, embedder, model_id, counts)
        notify(ReembedProgress("indexing", counts.done, total))
        _ensure_indexes(db)
    notify(ReembedProgress("done", counts.done, total))
    return ReembedReport(
        model=embedder.name,
        dimension=embedder.dimension,
        previous_model=previous.name if previous else None,
        previous_dimension=previous.dimension if previous else None,
        retyped=retyped,
        chunks_embedded=counts.chunks_embedded,
        chunks_reused=counts.chunks_reused,
        facts_embedded=counts.facts_embedded,
        summaries_embedded=counts.summaries_embedded,
        seconds=time.perf_counter() - started,
    )


@dataclass
class _Counts:
    total: int
    notify: Callable[[ReembedProgress], None]
    done: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    summaries_embedded: int = 0
    facts_embedded: int = 0

    def add(self, phase: str, rows: int) -> None:
        self.done += rows
        self.notify(ReembedProgress(phase, self.done, self.total))


def _reembed_chunks(db: Database, embedder: Embedder, model_id: int, counts: _Counts) -> None:
    embed_stored_chunks(db, embedder, model_id, counts)


def embed_stored_chunks(
    db: Database, embedder: Embedder, model_id: int, counts: _Counts | None = None, *, project_id: int | None = None
) -> int:
    """Give every stored chunk (of ``project_id``, or all) that lacks a vector of ``model_id``, or its
    summaries, both (a vector stored under the same hash is reused); how many texts the model embedded."""
    after, embedded = 0, 0
    while True:
        with db.connection() as conn:
            rows = chunks_to_embed(conn, model_id, after=after, limit=BATCH, project_id=project_id)
            if not rows:
                return embedded
            texts = {row.content_hash: embedding_text(row.path, row.symbol, row.content) for row in rows}
            summaries = {row.id: summary_items(row.path, row.symbol, row.content) for row in rows}
            wanted = texts | {h: text for items in summaries.values() for h, text in items}
            vectors = chunk_vectors_by_hash(conn, list(wanted), model_id)
        missing = [content_hash for content_hash in texts if content_hash not in vectors]
        new = embed_missing(embedder, wanted, vectors)
        vectors.update(new)
        embedded += len(new)
        with db.connection() as conn:
            set_chunk_embeddings(
                conn,
                model_id,
                [(r.id, vectors[r.content_hash], [(h, vectors[h]) for h, _ in summaries[r.id]]) for r in rows],
            )
        if counts is not None:
            counts.chunks_embedded += len(missing)
            counts.chunks_reused += len(rows) - len(missing)
            counts.summaries_embedded += len(new) - len(missing)
            counts.add("chunks", len(rows))
        after = rows[-1].id


def embed_missing(embedder: Embedder, texts: dict[str, str], known: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Vectors of the ``texts`` (hash -> text: chunks' and summaries') whose hash is not in ``known``."""
    missing = [h for h in texts if h not in known]
    if not missing:
        return {}
    return dict(zip(missing, embedder.embed_documents([texts[h] for h in missing]), strict=True))


def _reembed_facts(db: Database, embedder: Embedder, model_id: int, counts: _Counts) -> None:
    after = 0
    while True:
        with db.connection() as conn:
            rows = knowledge_to_embed(conn, model_id, after=after, limit=BATCH)
        if not rows:
            return
        vectors: np.ndarray = embedder.embed_documents(
            [fact_embedding_text(row.fact_label, row.fact_value) for row in rows]
        )
        with db.connection() as conn:
            set_knowledge_embeddings(
                conn, model_id, [(row.id, vector) for row, vector in zip(rows, vectors, strict=True)]
            )
        counts.facts_embedded += len(rows)
        counts.add("facts", len(rows))
        after = rows[-1].id


def _ensure_indexes(db: Database) -> None:
    """Create any missing HNSW index (after a retype, or a run interrupted before this step)."""
    with db.connection() as conn:
        create_missing_hnsw_indexes(conn)
