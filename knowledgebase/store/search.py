"""The statements of one search: candidates per kind (nearest by HNSW plus best by full text, with both
signals computed for each), the planner's common terms, and the HNSW settings of the transaction.

Scoring, filters that SQL cannot express and the choice of parameters live in
``knowledgebase.search.retrieval``; here each statement returns typed rows. Candidate rows name the
project in ``name`` (``projects.name``), which is None for facts recorded without a project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
import psycopg
from pgvector import SparseVector, Vector

from knowledgebase.store._rows import fetch_all


@dataclass(frozen=True)
class CandidateQuery:
    """What one search asks of every kind: the query as a vector and as a tsquery (None: no full-text
    match), ``limit`` candidates per source, and filters (None: none). ``path_regex`` applies to chunks,
    ``task_id`` to facts and commands; ``scan_rows`` bounds the full-text matches ranked for chunks;
    ``recent_commands`` most recent commands are candidates whatever their text."""

    query_vector: np.ndarray
    tsquery: str | None
    limit: int
    scan_rows: int
    recent_commands: int
    project_id: int | None = None
    task_id: str | None = None
    path_regex: str | None = None
    since: datetime | None = None
    with_vectors: bool = False
    roles: list[str] | None = None  # chunks of files with these roles only (a NULL role counts as source)
    # the query side of BM25 (idf per term dimension, knowledgebase.util.bm25); None: no BM25
    lexical: SparseVector | None = None


@dataclass(frozen=True)
class ChunkCandidate:
    id: int
    name: str
    path: str
    language: str | None
    start_line: int
    end_line: int
    symbol: str | None
    content: str
    content_hash: str
    created_at: datetime
    similarity: float
    text_rank: float
    embedding: Vector | None
    role: str | None
    definition_start: int | None  # the span of every chunk of the definition or section this one is part of
    definition_end: int | None
    bm25: float  # Okapi BM25 of the chunk for the query (0 without BM25 or a vector of the chunk)
    summary_similarity: float | None  # the best of its summaries' (migration 0009); None: it has none


@dataclass(frozen=True)
class FactCandidate:
    id: int
    name: str | None
    fact_label: str
    fact_value: str
    confidence_score: Decimal
    is_stale: bool
    pinned: bool
    last_confirmed_at: datetime
    task_id: str | None
    path: str | None
    similarity: float
    text_rank: float
    embedding: Vector | None


@dataclass(frozen=True)
class CommandCandidate:
    """A logged command; ``command`` is what was run (or asked), ``success`` None without an outcome."""

    id: int
    name: str | None
    task_id: str | None
    kind: str
    command: str
    executed_at: datetime
    success: bool | None
    return_code: int | None
    text_rank: float


COMMON_TERMS = """
SELECT e.term FROM pg_stats s,
       LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(term, share)
 WHERE s.schemaname = current_schema() AND s.tablename = 'file_chunks' AND s.attname = 'tsv'
   AND e.term = ANY(%(terms)s) AND e.share > %(share)s
   AND (SELECT reltuples FROM pg_class WHERE oid = 'file_chunks'::regclass) >= %(min_rows)s
"""

SET_SEARCH_OPTIONS = """
SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('hnsw.ef_search', %(ef_search)s, true),
       set_config('statement_timeout', %(timeout_ms)s, true)
"""

# Chunks per term dimension of a project (all projects: summed), and (term -1) how many chunks have a
# BM25 vector: N and df of BM25 (migration 0008 keeps them)
TERM_COUNTS = """
SELECT term, sum(chunks)::bigint FROM chunk_term_counts
 WHERE (%(project_id)s::bigint IS NULL OR project_id = %(project_id)s) AND term = ANY(%(terms)s::integer[])
 GROUP BY term
"""

# Chunk candidates: nearest by vector (HNSW) and best by full text (the full-text matches ranked by
# BM25, the inner product of the chunk's sparse vector and the query's, or by ts_rank_cd without
# one), then the signals for each, the file's role, and the span of the definition (function, class)
# or section the chunk is part of: the lines of every chunk of that file with the same symbol (a
# definition cut into several chunks), and the best similarity of the chunk's definition summaries (their
# short vectors re-score candidates; they are no candidate source: an HNSW scan of them as a third source
# is not worth its cost until the evaluation says so).
# BM25 candidates come from the GIN full-text index, not from an index on the sparse vectors: against
# the exact BM25 top 10 (every chunk of the project scored) the GIN matches ranked by inner product had
# recall@10 0.99-1.00 on the developer questions' projects (0.94 on csn, where 2,000 matches are cut),
# while an HNSW index on the sparsevec column (sparsevec_ip_ops) reached 0.90-0.97 at ef_search 100 and
# 0.71-0.77 on csn, for no gain in time (about 1 ms either way at 2-3k chunks per project).
# relaxed_order may return the vector list slightly out of order; the final ORDER BY is done in Python.
CHUNK_CANDIDATES = """
WITH scope AS MATERIALIZED (
    SELECT f.id FROM project_files f
     WHERE (%(project_id)s::bigint IS NULL OR f.project_id = %(project_id)s)
       AND (%(path_regex)s::text IS NULL OR f.path ~ %(path_regex)s)
       AND (%(roles)s::text[] IS NULL OR COALESCE(f.role, 'source') = ANY(%(roles)s::text[]))
), vec AS MATERIALIZED (
    SELECT c.id FROM file_chunks c
     WHERE c.embedding IS NOT NULL
       AND (%(project_id)s::bigint IS NULL OR c.project_id = %(project_id)s)
       AND ((%(path_regex)s::text IS NULL AND %(roles)s::text[] IS NULL) OR c.file_id IN (SELECT id FROM scope))
       AND (%(since)s::timestamptz IS NULL OR c.created_at >= %(since)s)
     ORDER BY c.embedding <=> %(qvec)s
     LIMIT %(k)s
), lex AS MATERIALIZED (
    SELECT m.id FROM (
        SELECT c.id, c.tsv, c.lexical FROM file_chunks c
         WHERE %(tsq)s::text IS NOT NULL AND c.tsv @@ to_tsquery('simple', %(tsq)s)
           AND (%(project_id)s::bigint IS NULL OR c.project_id = %(project_id)s)
           AND ((%(path_regex)s::text IS NULL AND %(roles)s::text[] IS NULL) OR c.file_id IN (SELECT id FROM scope))
           AND (%(since)s::timestamptz IS NULL OR c.created_at >= %(since)s)
         LIMIT %(scan_rows)s
    ) m
     ORDER BY CASE WHEN %(qlex)s::sparsevec IS NULL THEN -ts_rank_cd(m.tsv, to_tsquery('simple', %(tsq)s))
                   ELSE m.lexical <#> %(qlex)s::sparsevec END
     LIMIT %(k)s
)
SELECT c.id, p.name, f.path, f.language, c.start_line, c.end_line, c.symbol, c.content, c.content_hash,
       c.created_at,
       COALESCE(1 - (c.embedding <=> %(qvec)s), 0) AS similarity,
       COALESCE(ts_rank_cd(c.tsv, to_tsquery('simple', %(tsq)s)), 0) AS text_rank,
       CASE WHEN %(with_vectors)s THEN c.embedding END AS embedding,
       f.role, span.definition_start, span.definition_end,
       COALESCE(-(c.lexical <#> %(qlex)s::sparsevec), 0) AS bm25,
       (SELECT max(1 - (s.embedding <=> %(qvec)s)) FROM chunk_summaries s WHERE s.chunk_id = c.id)
           AS summary_similarity
  FROM (SELECT id FROM vec UNION SELECT id FROM lex) ids
  JOIN file_chunks c ON c.id = ids.id
  JOIN project_files f ON f.id = c.file_id
  JOIN projects p ON p.id = c.project_id
  CROSS JOIN LATERAL (
      SELECT min(d.start_line) AS definition_start, max(d.end_line) AS definition_end FROM file_chunks d
       WHERE d.file_id = c.file_id AND d.symbol = c.symbol AND c.kind IN ('function', 'class', 'section')
         AND strpos(c.symbol, ', ') = 0
  ) span
"""

FACT_CANDIDATES = """
WITH vec AS MATERIALIZED (
    SELECT k.id FROM knowledge k
     WHERE k.status = 'active' AND k.embedding IS NOT NULL
       AND (%(project_id)s::bigint IS NULL OR k.project_id = %(project_id)s OR k.project_id IS NULL)
       AND (%(task_id)s::text IS NULL OR k.task_id = %(task_id)s)
       AND (%(since)s::timestamptz IS NULL OR k.last_confirmed_at >= %(since)s)
     ORDER BY k.embedding <=> %(qvec)s
     LIMIT %(k)s
), lex AS MATERIALIZED (
    SELECT k.id FROM knowledge k
     WHERE %(tsq)s::text IS NOT NULL AND k.tsv @@ to_tsquery('simple', %(tsq)s) AND k.status = 'active'
       AND (%(project_id)s::bigint IS NULL OR k.project_id = %(project_id)s OR k.project_id IS NULL)
       AND (%(task_id)s::text IS NULL OR k.task_id = %(task_id)s)
       AND (%(since)s::timestamptz IS NULL OR k.last_confirmed_at >= %(since)s)
     ORDER BY ts_rank_cd(k.tsv, to_tsquery('simple', %(tsq)s)) DESC
     LIMIT %(k)s
)
SELECT k.id, p.name, k.fact_label, k.fact_value, k.confidence_score, k.is_stale, k.pinned, k.last_confirmed_at,
       k.task_id, f.path,
       COALESCE(1 - (k.embedding <=> %(qvec)s), 0) AS similarity,
       COALESCE(ts_rank_cd(k.tsv, to_tsquery('simple', %(tsq)s)), 0) AS text_rank,
       CASE WHEN %(with_vectors)s THEN k.embedding END AS embedding
  FROM (SELECT id FROM vec UNION SELECT id FROM lex) ids
  JOIN knowledge k ON k.id = ids.id
  LEFT JOIN projects p ON p.id = k.project_id
  LEFT JOIN project_files f ON f.id = k.source_file_id
"""

# Commands: full-text candidates plus the most recent few; the text of a command is what was run
# (or asked), its outcome is the last command_output row.
COMMAND_CANDIDATES = """
WITH logged AS (
    SELECT l.id, l.project_id, l.task_id, l.kind, l.executed_at,
           COALESCE(l.command, NULLIF(concat_ws(' ', l.tool_name, l.tool_input::text), ''), l.prompt, '')
               AS command
      FROM command_log l
     WHERE (%(project_id)s::bigint IS NULL OR l.project_id = %(project_id)s)
       AND (%(task_id)s::text IS NULL OR l.task_id = %(task_id)s)
       AND (%(since)s::timestamptz IS NULL OR l.executed_at >= %(since)s)
), lex AS (
    SELECT id FROM logged
     WHERE %(tsq)s::text IS NOT NULL AND to_tsvector('simple', command) @@ to_tsquery('simple', %(tsq)s)
     ORDER BY ts_rank_cd(to_tsvector('simple', command), to_tsquery('simple', %(tsq)s)) DESC
     LIMIT %(k)s
), recent AS (
    SELECT id FROM logged ORDER BY executed_at DESC, id DESC LIMIT %(recent)s
)
SELECT g.id, p.name, g.task_id, g.kind, g.command, g.executed_at, o.success, o.return_code,
       COALESCE(ts_rank_cd(to_tsvector('simple', g.command), to_tsquery('simple', %(tsq)s)), 0) AS text_rank
  FROM (SELECT id FROM lex UNION SELECT id FROM recent) ids
  JOIN logged g ON g.id = ids.id
  LEFT JOIN projects p ON p.id = g.project_id
  LEFT JOIN LATERAL (
      SELECT success, return_code FROM command_output WHERE command_log_id = g.id ORDER BY id DESC LIMIT 1
  ) o ON true
"""


def _params(query: CandidateQuery) -> dict[str, Any]:
    return {
        "project_id": query.project_id,
        "task_id": query.task_id,
        "path_regex": query.path_regex,
        "since": query.since,
        "qvec": query.query_vector,
        "tsq": query.tsquery,
        "scan_rows": query.scan_rows,
        "k": query.limit,
        "recent": query.recent_commands,
        "with_vectors": query.with_vectors,
        "roles": query.roles,
        "qlex": query.lexical,
    }


def set_search_options(conn: psycopg.Connection, *, ef_search: int, timeout_ms: int = 0) -> None:
    """For the rest of the transaction: HNSW scans go on past filtered-out rows (``relaxed_order``),
    with a candidate list of ``ef_search``, and a statement running longer than ``timeout_ms``
    (0: no limit) is cancelled (``psycopg.errors.QueryCanceled``)."""
    conn.execute(SET_SEARCH_OPTIONS, {"ef_search": str(ef_search), "timeout_ms": str(int(timeout_ms))})


def common_terms(conn: psycopg.Connection, terms: Sequence[str], *, share: float, min_rows: int) -> set[str]:
    """Those of ``terms`` found in more than ``share`` of chunks by the planner's statistics, when the
    chunk table holds at least ``min_rows`` rows (else none)."""
    params = {"terms": list(terms), "share": share, "min_rows": min_rows}
    return {row[0] for row in conn.execute(COMMON_TERMS, params)}


def term_counts(conn: psycopg.Connection, project_id: int | None, terms: Sequence[int]) -> dict[int, int]:
    """How many chunks of ``project_id`` (None: of every project) have each of the term dimensions
    ``terms``; -1 among them gives how many chunks have a BM25 vector. Dimensions in none are left out."""
    rows = conn.execute(TERM_COUNTS, {"project_id": project_id, "terms": list(terms)})
    return {int(term): int(count) for term, count in rows}


def chunk_candidates(conn: psycopg.Connection, query: CandidateQuery) -> list[ChunkCandidate]:
    """Chunks nearest to the query vector and best by full text, in no particular order."""
    return fetch_all(conn, ChunkCandidate, CHUNK_CANDIDATES, _params(query))


def fact_candidates(conn: psycopg.Connection, query: CandidateQuery) -> list[FactCandidate]:
    """Active facts nearest to the query vector and best by full text (with a project: its facts and
    those of no project), in no particular order."""
    return fetch_all(conn, FactCandidate, FACT_CANDIDATES, _params(query))


def command_candidates(conn: psycopg.Connection, query: CandidateQuery) -> list[CommandCandidate]:
    """Logged commands best by full text, and the most recent ones, in no particular order."""
    return fetch_all(conn, CommandCandidate, COMMAND_CANDIDATES, _params(query))
