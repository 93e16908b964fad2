"""Project files and their chunks (``project_files``, ``file_chunks``, with ``chunk_summaries``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import psycopg
from pgvector import SparseVector

from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required
from knowledgebase.store.summaries import Summary, insert_summaries, release_summaries_of_files, replace_summaries
from knowledgebase.util.bm25 import DIMENSIONS, document_weights
from knowledgebase.util.lexical import search_text


@dataclass(frozen=True)
class ProjectFile:
    id: int
    project_id: int
    path: str
    content_hash: str
    size_bytes: int
    language: str | None
    mtime_ns: int | None
    lossy_decode: bool
    chunked_hash: str | None
    task_id: str | None
    created_at: datetime
    last_updated: datetime
    role: str | None


@dataclass(frozen=True)
class NewFile:
    """A file to record; ``content`` is already redacted."""

    project_id: int
    path: str
    content: str
    content_hash: str
    size_bytes: int
    language: str | None
    mtime_ns: int | None
    lossy_decode: bool = False
    task_id: str | None = None
    role: str | None = None  # knowledgebase.util.roles.file_role of the path


@dataclass(frozen=True)
class StoredChunk:
    id: int
    file_id: int
    project_id: int
    chunk_index: int
    start_line: int
    end_line: int
    kind: str
    symbol: str | None
    content: str
    content_hash: str
    token_count: int
    embedding_model_id: int | None
    created_at: datetime


@dataclass(frozen=True)
class NewChunk:
    """A chunk to store; ``embedding`` may be None when it is embedded later, and then ``summaries``
    (the short vectors of its definitions, ``knowledgebase.store.summaries``) are empty too."""

    file_id: int
    project_id: int
    chunk_index: int
    start_line: int
    end_line: int
    kind: str
    symbol: str | None
    content: str
    content_hash: str
    token_count: int
    embedding: np.ndarray | None
    embedding_model_id: int | None
    summaries: tuple[Summary, ...] = ()


_FILE_COLS = columns(ProjectFile)
_CHUNK_COLS = columns(StoredChunk)

UPSERT_FILE = f"""
INSERT INTO project_files (project_id, path, content, content_hash, size_bytes, language, mtime_ns, lossy_decode,
                           task_id, role)
VALUES (%(project_id)s, %(path)s, %(content)s, %(content_hash)s, %(size_bytes)s, %(language)s, %(mtime_ns)s,
        %(lossy_decode)s, %(task_id)s, %(role)s)
ON CONFLICT (project_id, path) DO UPDATE
   SET content = EXCLUDED.content, content_hash = EXCLUDED.content_hash, size_bytes = EXCLUDED.size_bytes,
       language = EXCLUDED.language, mtime_ns = EXCLUDED.mtime_ns, lossy_decode = EXCLUDED.lossy_decode,
       task_id = COALESCE(EXCLUDED.task_id, project_files.task_id), last_updated = now(),
       role = COALESCE(EXCLUDED.role, project_files.role)
RETURNING {_FILE_COLS}
"""
GET_FILE = f"SELECT {_FILE_COLS} FROM project_files WHERE project_id = %s AND path = %s"
GET_FILE_CONTENT = "SELECT content FROM project_files WHERE id = %s"
LIST_FILES = f"SELECT {_FILE_COLS} FROM project_files WHERE project_id = %s ORDER BY path"
DELETE_FILE = "DELETE FROM project_files WHERE project_id = %s AND path = %s"
MARK_CHUNKED = "UPDATE project_files SET chunked_hash = %s WHERE id = %s"
# One statement for a whole batch (arrays unnested), not one per chunk: the statement-level triggers of
# migration 0008 then count the batch's terms once (with a statement per chunk they doubled the time
# of writing chunks).
INSERT_CHUNKS = """
INSERT INTO file_chunks (file_id, project_id, chunk_index, start_line, end_line, kind, symbol, content,
                         content_hash, token_count, embedding, embedding_model_id, tsv, lexical)
SELECT t.file_id, t.project_id, t.chunk_index, t.start_line, t.end_line, t.kind, t.symbol, t.content,
       t.content_hash, t.token_count, t.embedding, t.embedding_model_id,
       to_tsvector('simple', t.search_text), t.lexical
  FROM unnest(%(file_id)s::bigint[], %(project_id)s::bigint[], %(chunk_index)s::integer[],
              %(start_line)s::integer[], %(end_line)s::integer[], %(kind)s::text[], %(symbol)s::text[],
              %(content)s::text[], %(content_hash)s::text[], %(token_count)s::integer[], %(embedding)b::vector[],
              %(embedding_model_id)s::integer[], %(search_text)s::text[], %(lexical)b::sparsevec[])
    AS t(file_id, project_id, chunk_index, start_line, end_line, kind, symbol, content, content_hash, token_count,
         embedding, embedding_model_id, search_text, lexical)
RETURNING id, file_id, chunk_index
"""
# chunks stored before BM25 (migration 0008): filled by populate and kb reembed --missing, a batch at a time
LIST_CHUNKS_WITHOUT_LEXICAL = """
SELECT id, content FROM file_chunks
 WHERE lexical IS NULL AND (%(project_id)s::bigint IS NULL OR project_id = %(project_id)s)
 ORDER BY id LIMIT %(limit)s
"""
# one statement per batch: the counts triggers (0008) run once for it
SET_LEXICAL = """
UPDATE file_chunks c SET lexical = v.lexical::sparsevec
  FROM unnest(%(ids)s::bigint[], %(vectors)s::text[]) AS v(id, lexical)
 WHERE c.id = v.id AND c.lexical IS NULL
"""
LIST_CHUNKS = f"SELECT {_CHUNK_COLS} FROM file_chunks WHERE file_id = %s ORDER BY chunk_index"
GET_CHUNK = f"SELECT {_CHUNK_COLS} FROM file_chunks WHERE id = %s"


def upsert_file(conn: psycopg.Connection, new: NewFile) -> ProjectFile:
    """Record a file (insert, or replace the stored version of the same path)."""
    row = fetch_one(conn, ProjectFile, UPSERT_FILE, new.__dict__)
    assert row is not None
    return row


def get_file(conn: psycopg.Connection, project_id: int, path: str) -> ProjectFile:
    return fetch_required(conn, ProjectFile, GET_FILE, (project_id, path), f"file {path!r}")


def find_file(conn: psycopg.Connection, project_id: int, path: str) -> ProjectFile | None:
    return fetch_one(conn, ProjectFile, GET_FILE, (project_id, path))


def file_content(conn: psycopg.Connection, file_id: int) -> str:
    row = conn.execute(GET_FILE_CONTENT, (file_id,)).fetchone()
    return row[0] if row else ""


def list_files(conn: psycopg.Connection, project_id: int) -> list[ProjectFile]:
    return fetch_all(conn, ProjectFile, LIST_FILES, (project_id,))


def delete_file(conn: psycopg.Connection, project_id: int, path: str) -> bool:
    """Delete a file and (by cascade) its chunks."""
    return conn.execute(DELETE_FILE, (project_id, path)).rowcount > 0


def mark_chunked(conn: psycopg.Connection, file_id: int, content_hash: str) -> None:
    """Record that the chunks of ``file_id`` are complete for ``content_hash``."""
    conn.execute(MARK_CHUNKED, (content_hash, file_id))


def lexical_vector(content: str) -> SparseVector:
    """The BM25 document side of a chunk's text (``knowledgebase.util.bm25``), as stored."""
    return SparseVector(document_weights(content), DIMENSIONS)


def insert_chunks(conn: psycopg.Connection, chunks: Sequence[NewChunk]) -> None:
    """Insert chunks in one statement; their tsvector is built from ``search_text``, their
    BM25 vector from their code tokens."""
    if not chunks:
        return
    columns: dict[str, list[object]] = {name: [] for name in NewChunk.__dataclass_fields__ if name != "summaries"}
    for chunk in chunks:
        for name in columns:
            columns[name].append(getattr(chunk, name))
    columns["search_text"] = [search_text(chunk.content) for chunk in chunks]
    columns["lexical"] = [lexical_vector(chunk.content) for chunk in chunks]
    ids = {(file_id, index): chunk_id for chunk_id, file_id, index in conn.execute(INSERT_CHUNKS, columns)}
    insert_summaries(conn, [(ids[c.file_id, c.chunk_index], c.summaries) for c in chunks if c.summaries])


def fill_lexical(conn: psycopg.Connection, project_id: int | None = None, batch: int = 2000) -> int:
    """Give every chunk (of ``project_id``, or all) stored without a BM25 vector its vector; how many.
    No model is needed: the vector comes from the chunk's text."""
    filled = 0
    while True:
        rows = conn.execute(LIST_CHUNKS_WITHOUT_LEXICAL, {"project_id": project_id, "limit": batch}).fetchall()
        if not rows:
            return filled
        vectors = [lexical_vector(row[1]).to_text() for row in rows]
        conn.execute(SET_LEXICAL, {"ids": [row[0] for row in rows], "vectors": vectors})
        filled += len(rows)


def list_chunks(conn: psycopg.Connection, file_id: int) -> list[StoredChunk]:
    return fetch_all(conn, StoredChunk, LIST_CHUNKS, (file_id,))


def get_chunk(conn: psycopg.Connection, chunk_id: int) -> StoredChunk:
    return fetch_required(conn, StoredChunk, GET_CHUNK, (chunk_id,), f"chunk #{chunk_id}")


def delete_chunks(conn: psycopg.Connection, file_id: int) -> int:
    """Delete every chunk of ``file_id``; how many there were."""
    return delete_chunks_of_files(conn, [file_id])


@dataclass(frozen=True)
class FileState:
    """What a re-scan compares with the disk (no content)."""

    id: int
    path: str
    content_hash: str
    size_bytes: int
    mtime_ns: int | None
    chunked_hash: str | None
    role: str | None


@dataclass(frozen=True)
class ChunkMatch:
    """A chunk found by vector similarity, with its file path."""

    chunk_id: int
    path: str
    start_line: int
    end_line: int
    kind: str
    symbol: str | None
    content: str
    similarity: float


_STATE_COLS = columns(FileState)
LIST_FILE_STATES = f"SELECT {_STATE_COLS} FROM project_files WHERE project_id = %s"
UPDATE_FILE_STAT = "UPDATE project_files SET size_bytes = %s, mtime_ns = %s WHERE id = %s"
UPDATE_FILE_ROLE = "UPDATE project_files SET role = %s WHERE id = %s"
DELETE_FILES_BY_ID = "DELETE FROM project_files WHERE id = ANY(%s::bigint[])"
# a vector by content hash: from any stored chunk, or released by a deleted one (chunk_vector_cache)
CHUNK_VECTORS_BY_HASH = """
SELECT DISTINCT ON (content_hash) content_hash, embedding FROM (
    SELECT content_hash, embedding FROM file_chunks
     WHERE content_hash = ANY(%(hashes)s::text[]) AND embedding_model_id = %(model_id)s AND embedding IS NOT NULL
    UNION ALL
    SELECT content_hash, embedding FROM chunk_vector_cache
     WHERE content_hash = ANY(%(hashes)s::text[]) AND embedding_model_id = %(model_id)s
    UNION ALL
    SELECT s.summary_hash, s.embedding FROM chunk_summaries s JOIN file_chunks c ON c.id = s.chunk_id
     WHERE s.summary_hash = ANY(%(hashes)s::text[]) AND c.embedding_model_id = %(model_id)s
) AS known
"""
# keep the vectors of chunks about to be deleted (the files', or the files' chunks only)
RELEASE_VECTORS_OF_FILES = """
INSERT INTO chunk_vector_cache (content_hash, embedding_model_id, embedding)
SELECT DISTINCT ON (content_hash, embedding_model_id) content_hash, embedding_model_id, embedding
  FROM file_chunks
 WHERE file_id = ANY(%s::bigint[]) AND embedding IS NOT NULL AND embedding_model_id IS NOT NULL
ON CONFLICT (content_hash, embedding_model_id) DO UPDATE SET released_at = now()
"""
PRUNE_RELEASED_VECTORS = "DELETE FROM chunk_vector_cache WHERE released_at < now() - make_interval(days => %s)"
# strict_order keeps the cosine order exact while the project filter makes HNSW scan further
NEAREST_CHUNKS = """
SELECT c.id AS chunk_id, f.path, c.start_line, c.end_line, c.kind, c.symbol, c.content,
       1 - (c.embedding <=> %(vector)s::vector) AS similarity
  FROM file_chunks c JOIN project_files f ON f.id = c.file_id
 WHERE c.project_id = %(project_id)s AND c.embedding IS NOT NULL
 ORDER BY c.embedding <=> %(vector)s::vector
 LIMIT %(limit)s
"""
ITERATIVE_SCAN = "SET LOCAL hnsw.iterative_scan = strict_order"
MARK_FILES_CHUNKED = "UPDATE project_files SET chunked_hash = content_hash WHERE id = %s"
DELETE_CHUNKS_OF_FILES = "DELETE FROM file_chunks WHERE file_id = ANY(%s::bigint[])"
CHUNK_BY_HASH = "SELECT content_hash FROM file_chunks WHERE file_id = %s AND content_hash = %s LIMIT 1"
CHUNK_AT_LINE = """
SELECT content_hash FROM file_chunks
 WHERE file_id = %s AND start_line <= %s AND end_line >= %s
 ORDER BY end_line - start_line, chunk_index LIMIT 1
"""


def list_file_states(conn: psycopg.Connection, project_id: int) -> list[FileState]:
    """Path, hashes and stat of every stored file of a project."""
    return fetch_all(conn, FileState, LIST_FILE_STATES, (project_id,))


def update_file_stats(conn: psycopg.Connection, stats: Sequence[tuple[int, int, int | None]]) -> None:
    """Record new ``(file_id, size_bytes, mtime_ns)`` for files whose content did not change."""
    if stats:
        with conn.cursor() as cur:
            cur.executemany(UPDATE_FILE_STAT, [(size, mtime, file_id) for file_id, size, mtime in stats])


def set_file_roles(conn: psycopg.Connection, roles: Sequence[tuple[int, str]]) -> None:
    """Record the ``(file_id, role)`` of files whose stored role differs (or is missing)."""
    if roles:
        with conn.cursor() as cur:
            cur.executemany(UPDATE_FILE_ROLE, [(role, file_id) for file_id, role in roles])


def delete_files_by_id(conn: psycopg.Connection, file_ids: Sequence[int]) -> int:
    """Delete files (and by cascade their chunks) by id; their chunks' vectors stay reusable for a while."""
    if not file_ids:
        return 0
    conn.execute(RELEASE_VECTORS_OF_FILES, (list(file_ids),))
    release_summaries_of_files(conn, file_ids)
    return conn.execute(DELETE_FILES_BY_ID, (list(file_ids),)).rowcount


def chunk_vectors_by_hash(conn: psycopg.Connection, hashes: Sequence[str], model_id: int) -> dict[str, np.ndarray]:
    """Stored vectors of ``model_id`` for any chunk (of any project) with one of these content hashes,
    or any chunk summary with one of these summary hashes, or released by a chunk deleted recently
    (see ``prune_released_vectors``)."""
    if not hashes:
        return {}
    rows = conn.execute(CHUNK_VECTORS_BY_HASH, {"hashes": list(hashes), "model_id": model_id}).fetchall()
    return {content_hash: vector.to_numpy() for content_hash, vector in rows}


def prune_released_vectors(conn: psycopg.Connection, older_than_days: int) -> int:
    """Forget vectors of deleted chunks released more than ``older_than_days`` ago; how many."""
    return conn.execute(PRUNE_RELEASED_VECTORS, (older_than_days,)).rowcount


def nearest_chunks(conn: psycopg.Connection, project_id: int, vector: np.ndarray, limit: int) -> list[ChunkMatch]:
    """The ``limit`` chunks of a project most similar to ``vector`` (cosine, through the HNSW index)."""
    conn.execute(ITERATIVE_SCAN)
    return fetch_all(conn, ChunkMatch, NEAREST_CHUNKS, {"vector": vector, "project_id": project_id, "limit": limit})


def mark_files_chunked(conn: psycopg.Connection, file_ids: Sequence[int]) -> None:
    """Record that the chunks of these files are complete for their current content hash."""
    if file_ids:
        with conn.cursor() as cur:
            cur.executemany(MARK_FILES_CHUNKED, [(file_id,) for file_id in file_ids])


def delete_chunks_of_files(conn: psycopg.Connection, file_ids: Sequence[int]) -> int:
    """Delete every chunk of these files (the files stay); their vectors stay reusable for a while."""
    if not file_ids:
        return 0
    conn.execute(RELEASE_VECTORS_OF_FILES, (list(file_ids),))
    release_summaries_of_files(conn, file_ids)
    return conn.execute(DELETE_CHUNKS_OF_FILES, (list(file_ids),)).rowcount


def chunk_hash_in_file(conn: psycopg.Connection, file_id: int, content_hash: str) -> str | None:
    """``content_hash`` if a chunk of ``file_id`` has it, else None."""
    row = conn.execute(CHUNK_BY_HASH, (file_id, content_hash)).fetchone()
    return row[0] if row else None


def chunk_hash_at_line(conn: psycopg.Connection, file_id: int, line: int) -> str | None:
    """The content hash of the smallest chunk of ``file_id`` that covers ``line``, or None."""
    row = conn.execute(CHUNK_AT_LINE, (file_id, line, line)).fetchone()
    return row[0] if row else None


@dataclass(frozen=True)
class ChunkText:
    """What a chunk's embedding text (``chunking.embedding_text``) and its summary texts
    (``summaries.summary_texts``) are rebuilt from."""

    id: int
    path: str
    symbol: str | None
    content: str
    content_hash: str


CHUNKS_TO_EMBED = """
SELECT c.id, f.path, c.symbol, c.content, c.content_hash
  FROM file_chunks c JOIN project_files f ON f.id = c.file_id
 WHERE c.id > %(after)s AND (%(project_id)s::bigint IS NULL OR c.project_id = %(project_id)s)
   AND (c.embedding IS NULL OR c.embedding_model_id IS DISTINCT FROM %(model_id)s
        OR (c.symbol IS NOT NULL AND NOT EXISTS (SELECT FROM chunk_summaries s WHERE s.chunk_id = c.id)))
 ORDER BY c.id
 LIMIT %(limit)s
"""
SET_CHUNK_EMBEDDING = "UPDATE file_chunks SET embedding = %s, embedding_model_id = %s WHERE id = %s"


def chunks_to_embed(
    conn: psycopg.Connection, model_id: int, *, after: int, limit: int, project_id: int | None = None
) -> list[ChunkText]:
    """Up to ``limit`` chunks with an id above ``after`` that hold no vector of ``model_id`` (or, with a
    symbol, no summaries: stored before migration 0009), by id; of ``project_id`` only when given."""
    params = {"after": after, "model_id": model_id, "limit": limit, "project_id": project_id}
    return fetch_all(conn, ChunkText, CHUNKS_TO_EMBED, params)


def set_chunk_embeddings(
    conn: psycopg.Connection, model_id: int, vectors: Sequence[tuple[int, np.ndarray, Sequence[Summary]]]
) -> None:
    """Store ``(chunk_id, vector, summaries)`` as vectors of ``model_id`` (the summaries replace the
    chunk's), in batched round trips."""
    with conn.cursor() as cur:
        cur.executemany(SET_CHUNK_EMBEDDING, [(vector, model_id, chunk_id) for chunk_id, vector, _ in vectors])
    replace_summaries(conn, [(chunk_id, summaries) for chunk_id, _, summaries in vectors])


@dataclass(frozen=True)
class WaitingFile:
    """A ``project_files`` row whose chunks do not match its content (written by plain SQL, say)."""

    id: int
    project_id: int
    path: str
    content: str
    size_bytes: int
    language: str | None


WAITING_FILES = """
SELECT id, project_id, path, content, size_bytes, language FROM project_files
 WHERE project_id = %(project_id)s AND id > %(after)s AND chunked_hash IS DISTINCT FROM content_hash
 ORDER BY id
 LIMIT %(limit)s
"""
PROJECTS_WITH_WAITING_FILES = """
SELECT DISTINCT project_id FROM project_files WHERE chunked_hash IS DISTINCT FROM content_hash ORDER BY 1
"""
SET_FILE_CONTENT = "UPDATE project_files SET content = %s, language = COALESCE(language, %s) WHERE id = %s"


def projects_with_waiting_files(conn: psycopg.Connection) -> list[int]:
    """Ids of the projects that hold files waiting to be chunked."""
    return [row[0] for row in conn.execute(PROJECTS_WITH_WAITING_FILES)]


def waiting_files(conn: psycopg.Connection, project_id: int, *, after: int, limit: int) -> list[WaitingFile]:
    """Up to ``limit`` files of a project, with an id above ``after``, whose chunks are missing or out of date."""
    params = {"project_id": project_id, "after": after, "limit": limit}
    return fetch_all(conn, WaitingFile, WAITING_FILES, params)


def set_file_content(conn: psycopg.Connection, file_id: int, content: str, language: str | None) -> None:
    """Replace a file's stored text (its hash and size follow, by trigger) and fill in its language if unknown."""
    conn.execute(SET_FILE_CONTENT, (content, language, file_id))
