"""Read-only statistics across tables: what a store holds, file and chunk sizes, chunk vectors, and
logged commands with their outcome (for ``knowledgebase.tools.insights``). ``project=None`` means
every project."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from pgvector import Vector

from knowledgebase.store._rows import fetch_all
from knowledgebase.util.paths import directory_of


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
class ChunkVector:
    """One chunk's stored vector with the file and kind it belongs to."""

    id: int
    path: str
    kind: str
    embedding: Vector


@dataclass(frozen=True)
class CommandOutcome:
    """A logged command (or prompt or tool call) and its last recorded outcome (None: none recorded)."""

    id: int
    project: str | None
    task_id: str | None
    kind: str
    agent_id: str | None
    command: str
    executed_at: datetime
    success: bool | None
    return_code: int | None
    duration_ms: int | None


@dataclass(frozen=True)
class ProjectSummary:
    """What one project holds: its root, indexed files and chunks, active facts, logged commands and
    tasks, and when it was created and last populated (None: never populated)."""

    id: int
    name: str
    root_path: str | None
    files: int
    chunks: int
    facts: int
    commands: int
    tasks: int
    created_at: datetime
    last_populated_at: datetime | None


PROJECT_SUMMARIES = """
SELECT p.id, p.name, p.root_path,
       (SELECT count(*) FROM project_files f WHERE f.project_id = p.id) AS files,
       (SELECT count(*) FROM file_chunks c WHERE c.project_id = p.id) AS chunks,
       (SELECT count(*) FROM knowledge k WHERE k.project_id = p.id AND k.status = 'active') AS facts,
       (SELECT count(*) FROM command_log l WHERE l.project_id = p.id) AS commands,
       (SELECT count(*) FROM tasks t WHERE t.project_id = p.id) AS tasks,
       p.created_at,
       CASE WHEN p.root_path IS NOT NULL THEN p.updated_at END AS last_populated_at
  FROM projects p
 WHERE %(name)s::text IS NULL OR p.name = %(name)s
 ORDER BY p.name
"""
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
SELECT p.name AS project, f.path, f.language, f.size_bytes,
       count(c.id) AS chunks, COALESCE(sum(c.token_count), 0) AS tokens
  FROM project_files f
  JOIN projects p ON p.id = f.project_id
  LEFT JOIN file_chunks c ON c.file_id = f.id
 WHERE %(project)s::text IS NULL OR p.name = %(project)s
 GROUP BY p.name, f.id
 ORDER BY p.name, f.path
"""
CHUNK_SIZES = """
SELECT p.name AS project, f.path, c.kind, c.end_line - c.start_line + 1 AS lines,
       c.token_count AS tokens, length(c.content) AS chars
  FROM file_chunks c
  JOIN project_files f ON f.id = c.file_id
  JOIN projects p ON p.id = c.project_id
 WHERE %(project)s::text IS NULL OR p.name = %(project)s
 ORDER BY p.name, f.path, c.chunk_index
"""
CHUNK_EMBEDDINGS = """
SELECT c.id, f.path, c.kind, c.embedding
  FROM file_chunks c
  JOIN project_files f ON f.id = c.file_id
  JOIN projects p ON p.id = c.project_id
 WHERE c.embedding IS NOT NULL AND (%(project)s::text IS NULL OR p.name = %(project)s)
 ORDER BY c.id
 LIMIT %(limit)s
"""
RECENT_COMMANDS = """
SELECT l.id, p.name AS project, l.task_id, l.kind, l.agent_id,
       COALESCE(l.command, NULLIF(concat_ws(' ', l.tool_name, l.tool_input::text), ''), l.prompt, '')
           AS command,
       l.executed_at, o.success, o.return_code, o.duration_ms
  FROM command_log l
  LEFT JOIN projects p ON p.id = l.project_id
  LEFT JOIN LATERAL (
      SELECT success, return_code, duration_ms FROM command_output
       WHERE command_log_id = l.id ORDER BY id DESC LIMIT 1
  ) o ON true
 WHERE (%(project)s::text IS NULL OR p.name = %(project)s)
   AND (%(task_id)s::text IS NULL OR l.task_id = %(task_id)s)
 ORDER BY l.executed_at DESC, l.id DESC
 LIMIT %(limit)s
"""


def list_project_summaries(conn: psycopg.Connection, name: str | None = None) -> list[ProjectSummary]:
    """Every project (or the one called ``name``) with its counts, by name."""
    return fetch_all(conn, ProjectSummary, PROJECT_SUMMARIES, {"name": name})


def list_store_counts(conn: psycopg.Connection) -> list[StoreCount]:
    """Rows per project, category and kind (see ``StoreCount``)."""
    return fetch_all(conn, StoreCount, STORE_COUNTS, {})


def list_file_stats(conn: psycopg.Connection, project: str | None) -> list[FileStat]:
    """Every indexed file of ``project`` with its size and chunks, by project and path."""
    return fetch_all(conn, FileStat, FILE_SIZES, {"project": project})


def list_chunk_stats(conn: psycopg.Connection, project: str | None) -> list[ChunkStat]:
    """Every chunk's size, by project, path and position in the file."""
    return fetch_all(conn, ChunkStat, CHUNK_SIZES, {"project": project})


def list_chunk_vectors(conn: psycopg.Connection, project: str | None, limit: int) -> list[ChunkVector]:
    """Up to ``limit`` embedded chunks with their vector, the oldest first."""
    return fetch_all(conn, ChunkVector, CHUNK_EMBEDDINGS, {"project": project, "limit": limit})


def list_command_outcomes(
    conn: psycopg.Connection, *, project: str | None, task_id: str | None, limit: int
) -> list[CommandOutcome]:
    """The ``limit`` most recent logged commands with their last outcome, newest first."""
    return fetch_all(conn, CommandOutcome, RECENT_COMMANDS, {"project": project, "task_id": task_id, "limit": limit})
