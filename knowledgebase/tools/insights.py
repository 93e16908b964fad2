"""What a store holds, as plain rows for tables and charts: counts, sizes, embeddings, commands, score parts.

Read-only queries used by the notebooks under ``notebooks/`` (and anyone exploring a store from
Python). Facts come from ``knowledgebase.facts.list_facts``; search hits from
``knowledgebase.search.retrieval``. ``project=None`` means every project.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.errors import InputError
from knowledgebase.ranking import DEFAULT_WEIGHTS, RankingWeights, ScoreParts
from knowledgebase.store import ChunkStat, CommandOutcome, FileStat, StoreCount
from knowledgebase.util.paths import directory_of


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
class ScoreBreakdown:
    """A hit's score as a sum: the parts of relevance (``text``: full text, ts_rank_cd and BM25;
    ``role``: a chunk's role prior), then what the confidence factor and the recency factor took away
    (zero or negative). The parts add up to ``score``."""

    vector: float
    text: float
    identifier: float
    confidence: float
    recency: float
    score: float
    role: float = 0.0


def store_counts(db: Database) -> list[StoreCount]:
    """Rows per project, category and kind (see ``StoreCount``)."""
    with db.connection() as conn:
        return store.list_store_counts(conn)


def file_stats(db: Database, project: str | None = None) -> list[FileStat]:
    """Every indexed file with its size and chunks."""
    with db.connection() as conn:
        return store.list_file_stats(conn, project)


def chunk_stats(db: Database, project: str | None = None) -> list[ChunkStat]:
    """Every chunk's size."""
    with db.connection() as conn:
        return store.list_chunk_stats(conn, project)


def chunk_embeddings(db: Database, project: str | None = None, *, limit: int = 5000) -> ChunkEmbeddings:
    """Up to ``limit`` chunk vectors (the oldest chunks first)."""
    if limit < 1:
        raise InputError(f"limit {limit} must be at least 1")
    with db.connection() as conn:
        rows = store.list_chunk_vectors(conn, project, limit)
        dimension = store.vector_column_dimension(conn)
    vectors = np.asarray([row.embedding.to_numpy() for row in rows], dtype=np.float32)
    return ChunkEmbeddings(
        ids=tuple(row.id for row in rows),
        paths=tuple(row.path for row in rows),
        kinds=tuple(row.kind for row in rows),
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
    with db.connection() as conn:
        return store.list_command_outcomes(conn, project=project, task_id=task_id, limit=limit)


def success_rate(commands: Sequence[CommandOutcome]) -> float | None:
    """The share of commands with a recorded outcome that succeeded (None when none has one)."""
    judged = [c.success for c in commands if c.success is not None]
    return sum(judged) / len(judged) if judged else None


def score_breakdown(parts: ScoreParts, weights: RankingWeights = DEFAULT_WEIGHTS) -> ScoreBreakdown:
    """Split a score computed under ``weights`` into additive parts (see ``ScoreBreakdown``)."""
    vector = weights.vector * parts.similarity
    identifier = weights.identifier if parts.identifier_match else 0.0
    relevance = vector + parts.lexical + identifier + parts.role_prior
    after_confidence = relevance * parts.confidence_factor
    return ScoreBreakdown(
        vector=vector,
        text=parts.lexical,
        identifier=identifier,
        confidence=after_confidence - relevance,
        recency=after_confidence * parts.recency_factor - after_confidence,
        score=parts.score,
        role=parts.role_prior,
    )


__all__ = [
    "ChunkEmbeddings",
    "ChunkStat",
    "CommandOutcome",
    "FileStat",
    "Projection",
    "ScoreBreakdown",
    "StoreCount",
    "chunk_embeddings",
    "chunk_stats",
    "directory_of",
    "file_stats",
    "pca_2d",
    "recent_commands",
    "score_breakdown",
    "store_counts",
    "success_rate",
]
