"""One search over a project's code chunks and facts (and, on request, past commands with their outcome).

For each kind, candidates come from two sources in one SQL statement: the nearest embeddings by HNSW
(``hnsw.iterative_scan = relaxed_order``, so filters on project, path, task or time never shrink the
result below the limit) and the best full-text matches (tsvector, with identifiers split so
``snake_case`` and ``CamelCase`` names are findable). Every candidate then gets both signals computed
exactly and is scored by ``knowledgebase.ranking``; overlapping spans of one file are collapsed to the
best one, and hits are returned in score order (or MMR order when ``weights.diversity`` > 0).

Filters never leak another project's rows: with a project, chunks and commands of that project only,
and facts of that project plus facts recorded without a project (store-wide knowledge).
Past commands have no embeddings (they are logged on the hook path, which never loads a model): they
are found by full text and their similarity is computed here for the few candidates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder, bind_model
from knowledgebase.errors import InputError
from knowledgebase.ranking import (
    DEFAULT_WEIGHTS,
    RankingWeights,
    ScoreParts,
    age_seconds,
    effective_confidence,
    mmr_order,
    score,
)
from knowledgebase.util.lexical import code_identifiers, search_terms, tsquery_from_terms
from knowledgebase.util.pathglob import glob_to_regex

KINDS = ("chunk", "fact", "command")
DEFAULT_KINDS = ("chunk", "fact")
MAX_LIMIT = 500
# HNSW candidate list size; raised to the number of candidates asked for when that is larger.
# Natural-language prompts sit far from every code chunk (top-1 cosine ~0.4, the 10th and 11th
# nearly tied), where HNSW needs a long candidate list: on 100k chunks of real code, recall@10
# against exact search is 0.79 at 100, 0.88 at 200, 0.93 at 400 and 0.96 at 800, for 2.5 / 3.6 /
# 5.8 / 9.7 ms per index scan (scripts/bench_search.py; docs/BENCHMARKS.md). pgvector allows 1000.
EF_SEARCH = 800
# past commands without a full-text match that are still considered: the most recent ones
RECENT_COMMANDS = 10
# A full-text term found in more than this share of chunks is dropped from the query, as a stop word
# of this corpus (``return``, ``self``): it says little, and matching it means ranking most of the
# table. Shares come from the planner's statistics (pg_stats.most_common_elems, kept by ANALYZE), so
# finding them costs one catalog read. Whole identifiers (``populate_project``) are never dropped.
COMMON_TERM_SHARE = 0.05
# ... but only in a store this large: in a small one every term is cheap, and a share says little.
COMMON_TERMS_MIN_ROWS = 10_000
# Full-text candidates are ranked among at most this many matching rows, which bounds the work of one
# search whatever the size of the store.
LEXICAL_SCAN_ROWS = 2000

COMMON_TERMS = """
SELECT e.term FROM pg_stats s,
       LATERAL unnest(s.most_common_elems::text::text[], s.most_common_elem_freqs) AS e(term, share)
 WHERE s.schemaname = current_schema() AND s.tablename = 'file_chunks' AND s.attname = 'tsv'
   AND e.term = ANY(%(terms)s) AND e.share > %(share)s
   AND (SELECT reltuples FROM pg_class WHERE oid = 'file_chunks'::regclass) >= %(min_rows)s
"""

SET_SEARCH_OPTIONS = """
SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('hnsw.ef_search', %(ef_search)s, true)
"""

# Chunk candidates: nearest by vector (HNSW) and best by full text, then both signals for each.
# relaxed_order may return the vector list slightly out of order; the final ORDER BY is done in Python.
CHUNK_CANDIDATES = """
WITH scope AS MATERIALIZED (
    SELECT f.id FROM project_files f
     WHERE (%(project_id)s::bigint IS NULL OR f.project_id = %(project_id)s)
       AND (%(path_regex)s::text IS NULL OR f.file_path ~ %(path_regex)s)
), vec AS MATERIALIZED (
    SELECT c.id FROM file_chunks c
     WHERE c.embedding IS NOT NULL
       AND (%(project_id)s::bigint IS NULL OR c.project_id = %(project_id)s)
       AND (%(path_regex)s::text IS NULL OR c.file_id IN (SELECT id FROM scope))
       AND (%(since)s::timestamptz IS NULL OR c.created_at >= %(since)s)
     ORDER BY c.embedding <=> %(qvec)s
     LIMIT %(k)s
), lex AS MATERIALIZED (
    SELECT m.id FROM (
        SELECT c.id, c.tsv FROM file_chunks c
         WHERE %(tsq)s::text IS NOT NULL AND c.tsv @@ to_tsquery('simple', %(tsq)s)
           AND (%(project_id)s::bigint IS NULL OR c.project_id = %(project_id)s)
           AND (%(path_regex)s::text IS NULL OR c.file_id IN (SELECT id FROM scope))
           AND (%(since)s::timestamptz IS NULL OR c.created_at >= %(since)s)
         LIMIT %(scan_rows)s
    ) m
     ORDER BY ts_rank_cd(m.tsv, to_tsquery('simple', %(tsq)s)) DESC
     LIMIT %(k)s
)
SELECT c.id, p.name, f.file_path, f.language, c.start_line, c.end_line, c.symbol, c.content, c.content_hash,
       c.created_at,
       COALESCE(1 - (c.embedding <=> %(qvec)s), 0) AS similarity,
       COALESCE(ts_rank_cd(c.tsv, to_tsquery('simple', %(tsq)s)), 0) AS text_rank,
       CASE WHEN %(with_vectors)s THEN c.embedding END AS embedding
  FROM (SELECT id FROM vec UNION SELECT id FROM lex) ids
  JOIN file_chunks c ON c.id = ids.id
  JOIN project_files f ON f.id = c.file_id
  JOIN projects p ON p.id = c.project_id
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
SELECT k.id, p.name, k.label, k.value, k.confidence_score, k.is_stale, k.pinned, k.last_confirmed_at,
       k.task_id, f.file_path,
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
    SELECT l.id, l.project_id, l.task_id, l.kind, l.created_at,
           COALESCE(l.proposed_command, NULLIF(concat_ws(' ', l.tool_name, l.tool_input::text), ''), l.prompt, '')
               AS command
      FROM command_log l
     WHERE (%(project_id)s::bigint IS NULL OR l.project_id = %(project_id)s)
       AND (%(task_id)s::text IS NULL OR l.task_id = %(task_id)s)
       AND (%(since)s::timestamptz IS NULL OR l.created_at >= %(since)s)
), lex AS (
    SELECT id FROM logged
     WHERE %(tsq)s::text IS NOT NULL AND to_tsvector('simple', command) @@ to_tsquery('simple', %(tsq)s)
     ORDER BY ts_rank_cd(to_tsvector('simple', command), to_tsquery('simple', %(tsq)s)) DESC
     LIMIT %(k)s
), recent AS (
    SELECT id FROM logged ORDER BY created_at DESC, id DESC LIMIT %(recent)s
)
SELECT g.id, p.name, g.task_id, g.kind, g.command, g.created_at, o.success, o.return_code,
       COALESCE(ts_rank_cd(to_tsvector('simple', g.command), to_tsquery('simple', %(tsq)s)), 0) AS text_rank
  FROM (SELECT id FROM lex UNION SELECT id FROM recent) ids
  JOIN logged g ON g.id = ids.id
  LEFT JOIN projects p ON p.id = g.project_id
  LEFT JOIN LATERAL (
      SELECT success, return_code FROM command_output WHERE command_log_id = g.id ORDER BY id DESC LIMIT 1
  ) o ON true
"""


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk of a file, a fact, or a past command, with its score and its parts.

    Lines are 1-based and inclusive; ``path`` is relative to the project root. ``created_at`` is when
    the chunk was indexed, the fact last confirmed, or the command run.
    """

    kind: str
    id: int
    score: float
    parts: ScoreParts
    text: str
    project: str | None
    path: str | None = None
    start_line: int | None = None
    end_line: int | None = None
    symbol: str | None = None
    language: str | None = None
    content_hash: str | None = None
    label: str | None = None
    value: str | None = None
    confidence_score: float | None = None
    effective_confidence: float | None = None
    is_stale: bool | None = None
    pinned: bool | None = None
    source_path: str | None = None
    task_id: str | None = None
    command: str | None = None
    success: bool | None = None
    return_code: int | None = None
    created_at: datetime | None = None
    vector: np.ndarray | None = field(default=None, repr=False, compare=False)

    def citation(self) -> str:
        """``src/x.py:10-42``, ``fact #7, confidence 0.81`` or ``command #12, exit 0``."""
        if self.kind == "chunk":
            return f"{self.path}:{self.start_line}-{self.end_line}"
        if self.kind == "fact":
            stale = ", stale" if self.is_stale else ""
            return f"fact #{self.id}, confidence {self.effective_confidence or 0:.2f}{stale}"
        outcome = "no outcome recorded" if self.success is None else f"exit {self.return_code}"
        return f"command #{self.id}, {outcome}"

    def explain(self) -> str:
        return f"{self.kind} {self.citation()}: {self.parts.explain()}"


def search(
    db: Database,
    embedder: Embedder,
    query: str,
    *,
    project: str | None = None,
    task_id: str | None = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    path_glob: str | None = None,
    since: datetime | timedelta | None = None,
    limit: int = 10,
    weights: RankingWeights | None = None,
) -> list[Hit]:
    """The ``limit`` best hits for ``query``, best first.

    ``project`` (a name) limits the search to that project; ``task_id`` limits facts and commands to
    one task; ``path_glob`` limits chunks to matching files (and facts read from them); ``since`` (a
    time, or an age) keeps what was indexed, confirmed or run since then. ``kinds`` is any of
    ``chunk``, ``fact``, ``command``.
    """
    weights = weights or DEFAULT_WEIGHTS
    hits = search_candidates(
        db,
        embedder,
        query,
        project=project,
        task_id=task_id,
        kinds=kinds,
        path_glob=path_glob,
        since=since,
        limit=limit,
        weights=weights,
    )
    return _select(hits, limit, weights)


def search_candidates(
    db: Database,
    embedder: Embedder,
    query: str,
    *,
    project: str | None = None,
    task_id: str | None = None,
    kinds: Sequence[str] = DEFAULT_KINDS,
    path_glob: str | None = None,
    since: datetime | timedelta | None = None,
    limit: int = 10,
    weights: RankingWeights | None = None,
) -> list[Hit]:
    """Every candidate ``search`` considers (``weights.candidates`` per source and kind, at least
    ``limit``), scored but in no particular order and with overlapping spans kept; ``rerank`` orders
    them. Arguments as for ``search``; item vectors are fetched only when ``weights.diversity`` > 0."""
    weights = weights or DEFAULT_WEIGHTS
    plan = _plan(query, kinds, path_glob, since, limit, weights)
    qvec = embedder.embed_query(query.strip())
    with db.connection() as conn:
        project_id = store.get_project(conn, project).id if project is not None else None
        if store.active_model(conn) is not None:
            bind_model(conn, embedder)  # refuses a model other than the one that made the stored vectors
        conn.execute(SET_SEARCH_OPTIONS, {"ef_search": str(max(EF_SEARCH, plan.k))})
        single = [t for t in plan.terms if "_" not in t]
        common = {
            row[0]
            for row in conn.execute(
                COMMON_TERMS, {"terms": single, "share": COMMON_TERM_SHARE, "min_rows": COMMON_TERMS_MIN_ROWS}
            )
        }
        tsquery = tsquery_from_terms([t for t in plan.terms if t not in common])
        params = {
            "project_id": project_id,
            "task_id": task_id,
            "path_regex": plan.path_regex,
            "since": plan.since,
            "qvec": qvec,
            "tsq": tsquery,
            "scan_rows": LEXICAL_SCAN_ROWS,
            "k": plan.k,
            "recent": RECENT_COMMANDS,
            # item vectors are only needed to keep near-duplicates apart (MMR)
            "with_vectors": weights.diversity > 0,
        }
        hits: list[Hit] = []
        if "chunk" in plan.kinds:
            hits += _chunk_hits(conn, params, plan)
        if "fact" in plan.kinds:
            hits += _fact_hits(conn, params, plan)
        if "command" in plan.kinds:
            hits += _command_hits(conn, params, plan, embedder, qvec)
    return [_scored(hit, weights, plan.now) for hit in hits]


def rerank(
    hits: Sequence[Hit], *, weights: RankingWeights | None = None, limit: int = 10, now: datetime | None = None
) -> list[Hit]:
    """Score ``hits`` again with other ``weights`` (their similarity, text rank and identifier match
    are kept) and select as ``search`` does: best first, one per overlapping span, MMR if asked."""
    weights = weights or DEFAULT_WEIGHTS
    now = now or datetime.now(UTC)
    return _select([_scored(hit, weights, now) for hit in hits], limit, weights)


def _scored(hit: Hit, weights: RankingWeights, now: datetime) -> Hit:
    """``hit`` with its score computed from its signals under ``weights``."""
    confidence: float | None = None
    age: float | None = None
    if hit.kind == "fact" and hit.confidence_score is not None and hit.created_at is not None:
        confidence = effective_confidence(
            hit.confidence_score,
            last_confirmed_at=hit.created_at,
            now=now,
            is_stale=bool(hit.is_stale),
            pinned=bool(hit.pinned),
            weights=weights,
        )
    if hit.kind in ("fact", "command") and hit.created_at is not None:
        age = age_seconds(hit.created_at, now)
    parts = score(
        similarity=hit.parts.similarity,
        text_rank=hit.parts.text_rank,
        identifier_match=hit.parts.identifier_match,
        confidence=confidence,
        age_seconds=age,
        weights=weights,
    )
    effective = confidence if confidence is not None else hit.effective_confidence
    return replace(hit, score=parts.score, parts=parts, effective_confidence=effective)


@dataclass(frozen=True)
class _Plan:
    kinds: tuple[str, ...]
    path_regex: str | None
    since: datetime | None
    terms: list[str]
    identifiers: tuple[str, ...]
    k: int
    now: datetime


def _plan(
    query: str,
    kinds: Sequence[str],
    path_glob: str | None,
    since: datetime | timedelta | None,
    limit: int,
    weights: RankingWeights,
) -> _Plan:
    """Validate the arguments of a search (before any work is done)."""
    if not isinstance(query, str) or not query.strip():
        raise InputError("the search query is empty; say what you are looking for")
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise InputError(f"unknown kind {', '.join(unknown) or '(none)'}; use any of {', '.join(KINDS)}")
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"limit {limit} must be between 1 and {MAX_LIMIT}")
    now = datetime.now(UTC)
    if isinstance(since, timedelta):
        since = now - since
    elif since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return _Plan(
        kinds=tuple(dict.fromkeys(kinds)),
        path_regex=glob_to_regex(path_glob) if path_glob is not None else None,
        since=since,
        terms=search_terms(query),
        identifiers=tuple(code_identifiers(query)),
        k=max(weights.candidates, limit),
        now=now,
    )


def _has_identifier(identifiers: tuple[str, ...], text: str) -> bool:
    return any(re.search(r"(?<![\w.])" + re.escape(ident) + r"(?![\w])", text) for ident in identifiers)


def _vector(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return np.asarray(value.to_numpy() if hasattr(value, "to_numpy") else value, dtype=np.float32)


def _signals(similarity: float, text_rank: float, identifier_match: bool) -> ScoreParts:
    """Parts holding only the raw signals of a candidate; ``_scored`` computes the rest."""
    return score(similarity=float(similarity), text_rank=float(text_rank), identifier_match=identifier_match)


def _chunk_hits(conn: psycopg.Connection, params: dict[str, Any], plan: _Plan) -> list[Hit]:
    hits = []
    for row in conn.execute(CHUNK_CANDIDATES, params).fetchall():
        (cid, project, path, language, start, end, symbol, content, chash, created, sim, trank, vec) = row
        parts = _signals(sim, trank, _has_identifier(plan.identifiers, content))
        hits.append(
            Hit(
                kind="chunk",
                id=cid,
                score=parts.score,
                parts=parts,
                text=content,
                project=project,
                path=path,
                start_line=start,
                end_line=end,
                symbol=symbol,
                language=language,
                content_hash=chash,
                created_at=created,
                vector=_vector(vec),
            )
        )
    return hits


def _fact_hits(conn: psycopg.Connection, params: dict[str, Any], plan: _Plan) -> list[Hit]:
    hits = []
    for row in conn.execute(FACT_CANDIDATES, params).fetchall():
        (fid, project, label, value, confidence, stale, pinned, confirmed, task_id, source_path, sim, trank, vec) = row
        if plan.path_regex is not None and (source_path is None or not re.search(plan.path_regex, source_path)):
            continue
        parts = _signals(sim, trank, _has_identifier(plan.identifiers, f"{label}\n{value}"))
        hits.append(
            Hit(
                kind="fact",
                id=fid,
                score=parts.score,
                parts=parts,
                text=f"{label}: {value}",
                project=project,
                label=label,
                value=value,
                confidence_score=float(confidence),
                is_stale=stale,
                pinned=pinned,
                source_path=source_path,
                task_id=task_id,
                created_at=confirmed,
                vector=_vector(vec),
            )
        )
    return hits


def _command_hits(
    conn: psycopg.Connection, params: dict[str, Any], plan: _Plan, embedder: Embedder, qvec: np.ndarray
) -> list[Hit]:
    rows = conn.execute(COMMAND_CANDIDATES, params).fetchall()
    rows = [row for row in rows if row[4].strip()]
    if not rows:
        return []
    vectors = embedder.embed_documents([row[4] for row in rows])
    hits = []
    for row, vec in zip(rows, vectors, strict=True):
        lid, project, task_id, _kind, command, created, success, return_code, trank = row
        parts = _signals(float(vec @ qvec), trank, _has_identifier(plan.identifiers, command))
        outcome = "no outcome recorded" if success is None else f"exit code {return_code}"
        hits.append(
            Hit(
                kind="command",
                id=lid,
                score=parts.score,
                parts=parts,
                text=f"{command}\n({outcome})",
                project=project,
                task_id=task_id,
                command=command,
                success=success,
                return_code=return_code,
                created_at=created,
                vector=vec,
            )
        )
    return hits


def _overlaps(a: Hit, b: Hit) -> bool:
    return (
        a.kind == b.kind == "chunk"
        and a.project == b.project
        and a.path == b.path
        and a.start_line is not None
        and b.start_line is not None
        and a.end_line is not None
        and b.end_line is not None
        and a.start_line <= b.end_line
        and b.start_line <= a.end_line
    )


def _select(hits: list[Hit], limit: int, weights: RankingWeights) -> list[Hit]:
    """Best first, one hit per overlapping span of a file, then MMR when diversity is asked for."""
    ranked = sorted(hits, key=lambda h: (-h.score, h.kind, h.id))
    kept: list[Hit] = []
    for hit in ranked:
        if not any(_overlaps(hit, other) for other in kept):
            kept.append(hit)
    if weights.diversity == 0 or len(kept) <= 1:
        return kept[:limit]
    pool = kept[: max(limit * 3, limit)]
    vectors = [h.vector for h in pool]
    similarity = [[float(a @ b) if a is not None and b is not None else 0.0 for b in vectors] for a in vectors]
    order = mmr_order([h.score for h in pool], similarity, weights.diversity, limit)
    return [pool[i] for i in order]
