"""What a store holds, as plain rows for tables and charts: counts, sizes, embeddings, commands, score parts.

Read-only queries used by the notebooks under ``notebooks/`` (and anyone exploring a store from
Python). Facts come from ``knowledgebase.facts.list_facts``; search hits from
``knowledgebase.search.retrieval``. ``project=None`` means every project.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

import numpy as np
from psycopg.rows import class_row

from knowledgebase.db import Database
from knowledgebase.errors import InputError
from knowledgebase.ranking import DEFAULT_WEIGHTS, RankingWeights, ScoreParts
from knowledgebase.store import vector_column_dimension

T = TypeVar("T")

# What the store holds, per project (NULL: facts and commands recorded without one) and kind:
# files by language, chunks by kind, facts by status (active ones split into fresh and stale),
# commands by kind.
STORE_COUNTS = """
SELECT p.name AS project, 'files' AS category, COALESCE(f.language, 'other') AS kind, count(*) AS count
  FROM project_files f JOIN projects p ON p.id = f.project_id GROUP BY 1, 2, 3
UNION ALL
SELECT p.name, 'chunks', c.kind, count(*)
  FROM file_chunks c JOIN projects p ON p.id = c.project_id GROUP BY 1, 2, 3
UNION ALL
SELECT p.name, 'facts', CASE WHEN k.status = 'active' AND k.is_stale THEN 'stale' ELSE k.status END, count(*)
  FROM knowledge k LEFT JOIN projects p ON p.id = k.project_id GROUP BY 1, 2, 3
UNION ALL
SELECT p.name, 'commands', l.kind, count(*)
  FROM command_log l LEFT JOIN projects p ON p.id = l.project_id GROUP BY 1, 2, 3
ORDER BY 1 NULLS LAST, 2, 3
"""
FILE_SIZES = """
SELECT p.name AS project, f.file_path AS path, f.language, f.size_bytes,
       count(c.id) AS chunks, COALESCE(sum(c.token_count), 0) AS tokens
  FROM project_files f
  JOIN projects p ON p.id = f.project_id
  LEFT JOIN file_chunks c ON c.file_id = f.id
 WHERE %(project)s::text IS NULL OR p.name = %(project)s
 GROUP BY p.name, f.id
 ORDER BY p.name, f.file_path
"""
CHUNK_SIZES = """
SELECT p.name AS project, f.file_path AS path, c.kind, c.end_line - c.start_line + 1 AS lines,
       c.token_count AS tokens, length(c.content) AS chars
  FROM file_chunks c
  JOIN project_files f ON f.id = c.file_id
  JOIN projects p ON p.id = c.project_id
 WHERE %(project)s::text IS NULL OR p.name = %(project)s
 ORDER BY p.name, f.file_path, c.chunk_index
"""
CHUNK_EMBEDDINGS = """
SELECT c.id, f.file_path, c.kind, c.embedding
  FROM file_chunks c
  JOIN project_files f ON f.id = c.file_id
  JOIN projects p ON p.id = c.project_id
 WHERE c.embedding IS NOT NULL AND (%(project)s::text IS NULL OR p.name = %(project)s)
 ORDER BY c.id
 LIMIT %(limit)s
"""
RECENT_COMMANDS = """
SELECT l.id, p.name AS project, l.task_id, l.kind, l.agent_id,
       COALESCE(l.proposed_command, NULLIF(concat_ws(' ', l.tool_name, l.tool_input::text), ''), l.prompt, '')
           AS command,
       l.created_at, o.success, o.return_code, o.duration_ms
  FROM command_log l
  LEFT JOIN projects p ON p.id = l.project_id
  LEFT JOIN LATERAL (
      SELECT success, return_code, duration_ms FROM command_output
       WHERE command_log_id = l.id ORDER BY id DESC LIMIT 1
  ) o ON true
 WHERE (%(project)s::text IS NULL OR p.name = %(project)s)
   AND (%(task_id)s::text IS NULL OR l.task_id = %(task_id)s)
 ORDER BY l.created_at DESC, l.id DESC
 LIMIT %(limit)s
"""


@dataclass(frozen=True)
class StoreCount:
    """How many rows of one kind a project holds: ``category`` is files (by language), chunks (by
    chunk kind), facts (active, stale, superseded, forgotten) or commands (prompt, shell, tool, note)."""

    project: str | None
    category: str
    kind: str
    count: int


@dataclass(frozen=True)
class FileStat:
    """One indexed file: its size on disk, and its chunks and their tokens."""

    project: str
    path: str
    language: str | None
    size_bytes: int
    chunks: int
    tokens: int

    @property
    def directory(self) -> str:
        return directory_of(self.path)


@dataclass(frozen=True)
class ChunkStat:
    """One chunk's size: lines of its file it covers, tokens of the embedding model, characters."""

    project: str
    path: str
    kind: str
    lines: int
    tokens: int
    chars: int


@dataclass(frozen=True)
class ChunkEmbeddings:
    """Chunk vectors with what they belong to; row ``i`` of ``vectors`` is chunk ``ids[i]``."""

    ids: tuple[int, ...]
    paths: tuple[str, ...]
    kinds: tuple[str, ...]
    vectors: np.ndarray

    @property
    def directories(self) -> tuple[str, ...]:
        return tuple(directory_of(path) for path in self.paths)


@dataclass(frozen=True)
class Projection:
    """A 2-D principal-component projection: ``points`` (n x 2) and the share of the variance each
    axis explains."""

    points: np.ndarray
    explained_variance: tuple[float, float]


@dataclass(frozen=True)
class CommandOutcome:
    """A logged command (or prompt or tool call) and its last recorded outcome (None: none recorded)."""

    id: int
    project: str | None
    task_id: str | None
    kind: str
    agent_id: str | None
    command: str
    created_at: datetime
    success: bool | None
    return_code: int | None
    duration_ms: int | None


@dataclass(frozen=True)
class ScoreBreakdown:
    """A hit's score as a sum: the three parts of relevance, then what the confidence factor and
    the recency factor took away (zero or negative). The parts add up to ``score``."""

    vector: float
    text: float
    identifier: float
    confidence: float
    recency: float
    score: float


def directory_of(path: str, depth: int = 1) -> str:
    """The first ``depth`` folders of a project-relative path (``.`` for a file at the root)."""
    folder = posixpath.dirname(path)
    return "/".join(folder.split("/")[:depth]) if folder else "."


def store_counts(db: Database) -> list[StoreCount]:
    """Rows per project, category and kind (see ``StoreCount``)."""
    return _rows(db, StoreCount, STORE_COUNTS, {})


def file_stats(db: Database, project: str | None = None) -> list[FileStat]:
    """Every indexed file with its size and chunks."""
    return _rows(db, FileStat, FILE_SIZES, {"project": project})


def chunk_stats(db: Database, project: str | None = None) -> list[ChunkStat]:
    """Every chunk's size."""
    return _rows(db, ChunkStat, CHUNK_SIZES, {"project": project})


def chunk_embeddings(db: Database, project: str | None = None, *, limit: int = 5000) -> ChunkEmbeddings:
    """Up to ``limit`` chunk vectors (the oldest chunks first)."""
    if limit < 1:
        raise InputError(f"limit {limit} must be at least 1")
    with db.connection() as conn:
        rows = conn.execute(CHUNK_EMBEDDINGS, {"project": project, "limit": limit}).fetchall()
        dimension = vector_column_dimension(conn)
    vectors = np.asarray([row[3].to_numpy() for row in rows], dtype=np.float32)
    return ChunkEmbeddings(
        ids=tuple(row[0] for row in rows),
        paths=tuple(row[1] for row in rows),
        kinds=tuple(row[2] for row in rows),
        vectors=vectors.reshape(len(rows), dimension),
    )


def pca_2d(vectors: np.ndarray) -> Projection:
    """Project row vectors on their first two principal components."""
    data = np.asarray(vectors, dtype=np.float64)
    if data.ndim != 2 or data.shape[0] < 2:
        raise InputError("a projection needs at least two vectors (index something first)")
    centered = data - data.mean(axis=0)
    _, singular, components = np.linalg.svd(centered, full_matrices=False)
    variance = singular**2
    share = variance / variance.sum() if variance.sum() > 0 else np.zeros_like(variance)
    points = centered @ components[:2].T
    if points.shape[1] < 2:
        points = np.pad(points, ((0, 0), (0, 2 - points.shape[1])))
    shares = [*share[:2].tolist(), 0.0, 0.0]
    return Projection(points=points, explained_variance=(float(shares[0]), float(shares[1])))


def recent_commands(
    db: Database, *, project: str | None = None, task_id: str | None = None, limit: int = 50
) -> list[CommandOutcome]:
    """The most recent logged commands with their outcome, newest first."""
    if limit < 1:
        raise InputError(f"limit {limit} must be at least 1")
    return _rows(db, CommandOutcome, RECENT_COMMANDS, {"project": project, "task_id": task_id, "limit": limit})


def success_rate(commands: Sequence[CommandOutcome]) -> float | None:
    """The share of commands with a recorded outcome that succeeded (None when none has one)."""
    judged = [c.success for c in commands if c.success is not None]
    return sum(judged) / len(judged) if judged else None


def score_breakdown(parts: ScoreParts, weights: RankingWeights = DEFAULT_WEIGHTS) -> ScoreBreakdown:
    """Split a score computed under ``weights`` into additive parts (see ``ScoreBreakdown``)."""
    vector = weights.vector * parts.similarity
    text = weights.text * parts.text_score
    identifier = weights.identifier if parts.identifier_match else 0.0
    relevance = vector + text + identifier
    after_confidence = relevance * parts.confidence_factor
    return ScoreBreakdown(
        vector=vector,
        text=text,
        identifier=identifier,
        confidence=after_confidence - relevance,
        recency=after_confidence * parts.recency_factor - after_confidence,
        score=parts.score,
    )


def _rows(db: Database, cls: type[T], query: str, params: dict[str, object]) -> list[T]:
    with db.connection() as conn, conn.cursor(row_factory=class_row(cls)) as cur:
        cur.execute(query, params)
        return cur.fetchall()
