"""The short vectors of a chunk's definitions (``chunk_summaries``, migration 0009).

Written only beside the chunk's own vector (``insert_chunks``, ``set_chunk_embeddings``), so they are
always of the chunk's model; looked up for reuse by their text's hash as chunk vectors are by
``content_hash`` (``chunk_vectors_by_hash`` reads both). The texts come from
``knowledgebase.index.summaries``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psycopg

Summary = tuple[str, np.ndarray]
"""One summary of a chunk: the hash of its text and its vector."""

INSERT_SUMMARIES = """
INSERT INTO chunk_summaries (chunk_id, ordinal, summary_hash, embedding)
SELECT * FROM unnest(%(chunk_id)s::bigint[], %(ordinal)s::smallint[], %(summary_hash)s::text[],
                     %(embedding)b::vector[])
"""
DELETE_SUMMARIES = "DELETE FROM chunk_summaries WHERE chunk_id = ANY(%s::bigint[])"
# summaries of chunks about to be deleted go to the same cache as the chunks' vectors
RELEASE_SUMMARIES_OF_FILES = """
INSERT INTO chunk_vector_cache (content_hash, embedding_model_id, embedding)
SELECT DISTINCT ON (s.summary_hash, c.embedding_model_id) s.summary_hash, c.embedding_model_id, s.embedding
  FROM chunk_summaries s JOIN file_chunks c ON c.id = s.chunk_id
 WHERE c.file_id = ANY(%s::bigint[]) AND c.embedding_model_id IS NOT NULL
ON CONFLICT (content_hash, embedding_model_id) DO UPDATE SET released_at = now()
"""
DELETE_ALL_SUMMARIES = "DELETE FROM chunk_summaries"


def insert_summaries(conn: psycopg.Connection, summaries: Sequence[tuple[int, Sequence[Summary]]]) -> None:
    """Store ``(chunk_id, summaries)`` pairs (the chunks hold none yet), in one statement."""
    rows = [(chunk_id, n, h, v) for chunk_id, items in summaries for n, (h, v) in enumerate(items)]
    if rows:
        chunk_id, ordinal, summary_hash, embedding = (list(column) for column in zip(*rows, strict=True))
        params = {"chunk_id": chunk_id, "ordinal": ordinal, "summary_hash": summary_hash, "embedding": embedding}
        conn.execute(INSERT_SUMMARIES, params)


def replace_summaries(conn: psycopg.Connection, summaries: Sequence[tuple[int, Sequence[Summary]]]) -> None:
    """Make ``summaries`` the only summaries of their chunks."""
    if summaries:
        conn.execute(DELETE_SUMMARIES, ([chunk_id for chunk_id, _ in summaries],))
        insert_summaries(conn, summaries)


def release_summaries_of_files(conn: psycopg.Connection, file_ids: Sequence[int]) -> None:
    """Keep the summary vectors of these files' chunks reusable after the chunks are deleted."""
    conn.execute(RELEASE_SUMMARIES_OF_FILES, (list(file_ids),))


def delete_all_summaries(conn: psycopg.Connection) -> None:
    """Forget every summary (their model's vectors are gone: ``retype_vector_columns``)."""
    conn.execute(DELETE_ALL_SUMMARIES)
