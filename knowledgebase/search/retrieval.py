"""One search over a project's code chunks and facts (and, on request, past commands with their outcome).

For each kind, candidates come from two sources in one SQL statement (``knowledgebase.store.search``):
the nearest embeddings by HNSW (``hnsw.iterative_scan = relaxed_order``, so filters on project, path,
task or time never shrink the result below the limit) and the best full-text matches (tsvector, with
identifiers split so ``snake_case`` and ``CamelCase`` names are findable). Every candidate then gets
both signals computed exactly and is scored by ``knowledgebase.ranking``; overlapping spans of one
file are collapsed to the best one, and hits (``knowledgebase.search.hits``) are returned in score
order (or MMR order when ``weights.diversity`` > 0).

Filters never leak another project's rows: with a project, chunks and commands of that project only,
and facts of that project plus facts recorded without a project (store-wide knowledge).
Past commands have no embeddings (they are logged on the hook path, which never loads a model): they
are found by full text and their similarity is computed here for the few candidates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
from pgvector import SparseVector, Vector

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder, bind_model
from knowledgebase.errors import InputError, SearchTimeout
from knowledgebase.ranking import (
    DEFAULT_WEIGHTS,
    RankingWeights,
    ScoreParts,
    age_seconds,
    effective_confidence,
    mmr_order,
    score,
)
from knowledgebase.search.hits import DEFAULT_KINDS, KINDS, ChunkHit, CommandHit, FactHit, Hit
from knowledgebase.util.bm25 import DIMENSIONS, query_weights, term_dimension
from knowledgebase.util.lexical import code_identifiers, search_terms, tsquery_from_terms
from knowledgebase.util.pathglob import glob_to_regex
from knowledgebase.util.roles import ROLES, file_role, query_roles
from knowledgebase.util.text import storable_text

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
# What of a query is read. The model embeds its first ~256 tokens (about 1000 characters) anyway; the
# full-text query ORs the first distinct terms (a pasted megabyte must not become a 100,000-term
# query: PostgreSQL cannot even parse one, and ranking rows against thousands of terms takes minutes).
MAX_EMBED_CHARS = 4000
MAX_QUERY_TERMS = 32
MAX_QUERY_IDENTIFIERS = 16
# The words a question opens with ("how does", "where is", "how do I") say nothing about the code that
# answers it, and pull the query's vector towards prose that asks or explains: the model embeds the
# query without them (full text drops them as stop words anyway; the roles a query asks for are read
# from the whole query). On the developer questions of scripts/eval_retrieval.py this raised the top-3
# rate from 0.646 to 0.696 (MRR@10 0.546 -> 0.558); docstring summaries do not open so and are unchanged.
_QUESTION_OPENING = re.compile(
    r"^(?:how\s+(?:do|does|can|should|is|are|would)\s+(?:i|we|you)?|how|where\s+(?:is|are|do|does)|which|"
    r"what\s+(?:is|are|does|do)?|when\s+(?:is|are|does|do)|why\s+(?:is|are|does|do))\b\s*",
    re.IGNORECASE,
)
# Every statement of a search is cancelled after this long; the full-text part is then dropped and
# the search answered by vector similarity alone: at most 2 + 3 statements, within a hook's 15 s budget.
SEARCH_TIMEOUT_MS = 2000


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
    roles: Sequence[str] | None = None,
) -> list[Hit]:
    """The ``limit`` best hits for ``query``, best first.

    ``project`` (a name) limits the search to that project; ``task_id`` limits facts and commands to
    one task; ``path_glob`` limits chunks to matching files (and facts read from them); ``since`` (a
    time, or an age) keeps what was indexed, confirmed or run since then. ``kinds`` is any of
    ``chunk``, ``fact``, ``command``; ``roles`` keeps only chunks of files with one of these roles
    (``knowledgebase.util.roles.ROLES``).
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
        roles=roles,
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
    roles: Sequence[str] | None = None,
) -> list[Hit]:
    """Every candidate ``search`` considers (``weights.candidates`` per source and kind, at least
    ``limit``), scored but in no particular order and with overlapping spans kept; ``rerank`` orders
    them. Arguments as for ``search``; item vectors are fetched only when ``weights.diversity`` > 0."""
    weights = weights or DEFAULT_WEIGHTS
    query = storable_text(query) if isinstance(query, str) else query
    plan = _plan(query, kinds, path_glob, since, limit, weights, roles)
    qvec = embedder.embed_query(embedded_query(query))

    def run(conn: psycopg.Connection) -> list[Hit]:
        project_id = store.get_project(conn, project).id if project is not None else None
        if store.active_model(conn) is not None:
            bind_model(conn, embedder)  # refuses a model other than the one that made the stored vectors
        store.set_search_options(conn, ef_search=max(EF_SEARCH, plan.k), timeout_ms=SEARCH_TIMEOUT_MS)
        single = [t for t in plan.terms if "_" not in t]
        common = store.common_terms(conn, single, share=COMMON_TERM_SHARE, min_rows=COMMON_TERMS_MIN_ROWS)
        lexical = _bm25_query(conn, project_id, plan.terms) if "chunk" in plan.kinds else None
        candidates = store.CandidateQuery(
            query_vector=qvec,
            tsquery=tsquery_from_terms([t for t in plan.terms if t not in common]),
            limit=plan.k,
            scan_rows=LEXICAL_SCAN_ROWS,
            recent_commands=RECENT_COMMANDS,
            project_id=project_id,
            task_id=task_id,
            path_regex=plan.path_regex,
            since=plan.since,
            # item vectors are only needed to keep near-duplicates apart (MMR)
            with_vectors=weights.diversity > 0,
            roles=plan.roles,
            lexical=lexical,
        )
        try:
            with conn.transaction():  # a savepoint: a cancelled statement leaves the connection usable
                hits = _candidate_hits(conn, candidates, plan, embedder, qvec)
        except psycopg.errors.QueryCanceled:
            if candidates.tsquery is None:
                raise SearchTimeout(_TIMEOUT_MESSAGE) from None
            try:  # the full-text part is what grows with the store and the query: answer without it
                with conn.transaction():
                    hits = _candidate_hits(conn, replace(candidates, tsquery=None), plan, embedder, qvec)
            except psycopg.errors.QueryCanceled:
                raise SearchTimeout(_TIMEOUT_MESSAGE) from None
        return hits

    hits = db.read(run)  # a replica answers when one is fresh (knowledgebase.db.routing)
    return [_scored(hit, weights, plan.now, plan.asked) for hit in hits]


_TIMEOUT_MESSAGE = (
    f"the search did not finish within {SEARCH_TIMEOUT_MS} ms: narrow it (--project, --glob, --kind) "
    "or try again when the database is less busy"
)


def embedded_query(query: str) -> str:
    """What of a query the model embeds: its first ``MAX_EMBED_CHARS`` characters, without the words
    a question opens with (``_QUESTION_OPENING``) or its closing question mark."""
    text = query.strip()[:MAX_EMBED_CHARS]
    return _QUESTION_OPENING.sub("", text.rstrip("?").rstrip()).strip() or text


def _bm25_query(conn: psycopg.Connection, project_id: int | None, terms: list[str]) -> SparseVector | None:
    """The query side of BM25 for ``terms``: each term's idf among the chunks of the project (None when
    there are no terms or no chunk has a BM25 vector). Common terms stay: their idf is what they are worth."""
    if not terms:
        return None
    counts = store.term_counts(conn, project_id, [*{term_dimension(t) for t in terms}, -1])
    documents = counts.pop(-1, 0)
    if documents == 0:
        return None
    return SparseVector(query_weights(terms, counts, documents), DIMENSIONS)


def _bm25_norm(lexical: SparseVector | None) -> float:
    """What a chunk holding each query term once, at the average length, scores: the idf sum."""
    return float(sum(lexical.values())) if lexical is not None else 0.0


def _candidate_hits(
    conn: psycopg.Connection, candidates: store.CandidateQuery, plan: _Plan, embedder: Embedder, qvec: np.ndarray
) -> list[Hit]:
    hits: list[Hit] = []
    if "chunk" in plan.kinds:
        hits += _chunk_hits(conn, candidates, plan)
    if "fact" in plan.kinds:
        hits += _fact_hits(conn, candidates, plan)
    if "command" in plan.kinds:
        hits += _command_hits(conn, candidates, plan, embedder, qvec)
    return hits


def rerank(
    hits: Sequence[Hit],
    *,
    weights: RankingWeights | None = None,
    limit: int = 10,
    now: datetime | None = None,
    query: str | None = None,
) -> list[Hit]:
    """Score ``hits`` again with other ``weights`` (their similarity, text rank and identifier match
    are kept) and select as ``search`` does: best first, one per definition and overlapping span, MMR
    if asked. ``query`` is what the hits were found for (the roles it asks for lift their files)."""
    weights = weights or DEFAULT_WEIGHTS
    now = now or datetime.now(UTC)
    asked = query_roles(query) if query else frozenset()
    return _select([_scored(hit, weights, now, asked) for hit in hits], limit, weights)


def _scored(hit: Hit, weights: RankingWeights, now: datetime, asked: frozenset[str] = frozenset()) -> Hit:
    """``hit`` with its score computed from its signals under ``weights``."""
    confidence: float | None = None
    if isinstance(hit, FactHit):
        confidence = effective_confidence(
            hit.confidence_score,
            last_confirmed_at=hit.created_at,
            now=now,
            is_stale=hit.is_stale,
            pinned=hit.pinned,
            weights=weights,
        )
    age = age_seconds(hit.created_at, now) if isinstance(hit, FactHit | CommandHit) else None
    parts = score(
        similarity=hit.parts.similarity,
        summary_similarity=hit.parts.summary_similarity,
        text_rank=hit.parts.text_rank,
        bm25=hit.parts.bm25,
        identifier_match=hit.parts.identifier_match,
        confidence=confidence,
        age_seconds=age,
        role_prior=(
            weights.role_prior(hit.role, asked, in_definition=hit.symbol is not None)
            if isinstance(hit, ChunkHit)
            else 0.0
        ),
        weights=weights,
        chunk=isinstance(hit, ChunkHit),
    )
    if isinstance(hit, FactHit):
        return replace(hit, score=parts.score, parts=parts, effective_confidence=confidence)
    return replace(hit, score=parts.score, parts=parts)


@dataclass(frozen=True)
class _Plan:
    kinds: tuple[str, ...]
    path_regex: str | None
    since: datetime | None
    terms: list[str]
    identifiers: tuple[str, ...]
    k: int
    now: datetime
    asked: frozenset[str]
    roles: list[str] | None


def _plan(
    query: str,
    kinds: Sequence[str],
    path_glob: str | None,
    since: datetime | timedelta | None,
    limit: int,
    weights: RankingWeights,
    roles: Sequence[str] | None = None,
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
    if isinstance(roles, str):
        roles = (roles,)
    unknown_roles = [r for r in roles or () if r not in ROLES]
    if unknown_roles or (roles is not None and not roles):
        raise InputError(f"unknown file role {', '.join(unknown_roles) or '(none)'}; use any of {', '.join(ROLES)}")
    now = datetime.now(UTC)
    if isinstance(since, timedelta):
        since = now - since
    elif since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return _Plan(
        kinds=tuple(dict.fromkeys(kinds)),
        path_regex=glob_to_regex(path_glob) if path_glob is not None else None,
        since=since,
        terms=search_terms(query, MAX_QUERY_TERMS),
        identifiers=tuple(code_identifiers(query, MAX_QUERY_IDENTIFIERS)),
        k=max(weights.candidates, limit),
        now=now,
        asked=query_roles(query),
        roles=list(dict.fromkeys(roles)) if roles is not None else None,
    )


def _has_identifier(identifiers: tuple[str, ...], text: str) -> bool:
    return any(re.search(r"(?<![\w.])" + re.escape(ident) + r"(?![\w])", text) for ident in identifiers)


def _vector(value: Vector | None) -> np.ndarray | None:
    return None if value is None else np.asarray(value.to_numpy(), dtype=np.float32)


def _signals(
    similarity: float,
    text_rank: float,
    identifier_match: bool,
    bm25: float = 0.0,
    summary_similarity: float | None = None,
) -> ScoreParts:
    """Parts holding only the raw signals of a candidate; ``_scored`` computes the rest."""
    return score(
        similarity=float(similarity),
        summary_similarity=None if summary_similarity is None else float(summary_similarity),
        text_rank=float(text_rank),
        identifier_match=identifier_match,
        bm25=bm25,
    )


def _chunk_hits(conn: psycopg.Connection, candidates: store.CandidateQuery, plan: _Plan) -> list[Hit]:
    hits: list[Hit] = []
    norm = _bm25_norm(candidates.lexical)
    for row in store.chunk_candidates(conn, candidates):
        bm25 = float(row.bm25) / norm if norm > 0 else 0.0
        identifier_match = _has_identifier(plan.identifiers, row.content)
        parts = _signals(row.similarity, row.text_rank, identifier_match, bm25, row.summary_similarity)
        hits.append(
            ChunkHit(
                id=row.id,
                score=parts.score,
                parts=parts,
                text=row.content,
                project=row.name,
                path=row.path,
                start_line=row.start_line,
                end_line=row.end_line,
                symbol=row.symbol,
                language=row.language,
                content_hash=row.content_hash,
                created_at=row.created_at,
                vector=_vector(row.embedding),
                role=row.role or file_role(row.path),
                definition_start=row.definition_start,
                definition_end=row.definition_end,
            )
        )
    return hits


def _fact_hits(conn: psycopg.Connection, candidates: store.CandidateQuery, plan: _Plan) -> list[Hit]:
    hits: list[Hit] = []
    for row in store.fact_candidates(conn, candidates):
        if plan.path_regex is not None and (row.path is None or not re.search(plan.path_regex, row.path)):
            continue
        parts = _signals(
            row.similarity, row.text_rank, _has_identifier(plan.identifiers, f"{row.fact_label}\n{row.fact_value}")
        )
        hits.append(
            FactHit(
                id=row.id,
                score=parts.score,
                parts=parts,
                text=f"{row.fact_label}: {row.fact_value}",
                project=row.name,
                fact_label=row.fact_label,
                fact_value=row.fact_value,
                confidence_score=float(row.confidence_score),
                is_stale=row.is_stale,
                pinned=row.pinned,
                source_path=row.path,
                task_id=row.task_id,
                created_at=row.last_confirmed_at,
                vector=_vector(row.embedding),
            )
        )
    return hits


def _command_hits(
    conn: psycopg.Connection, candidates: store.CandidateQuery, plan: _Plan, embedder: Embedder, qvec: np.ndarray
) -> list[Hit]:
    rows = [row for row in store.command_candidates(conn, candidates) if row.command.strip()]
    if not rows:
        return []
    vectors = embedder.embed_documents([row.command for row in rows])
    hits: list[Hit] = []
    for row, vec in zip(rows, vectors, strict=True):
        parts = _signals(float(vec @ qvec), row.text_rank, _has_identifier(plan.identifiers, row.command))
        outcome = "no outcome recorded" if row.success is None else f"exit code {row.return_code}"
        hits.append(
            CommandHit(
                id=row.id,
                score=parts.score,
                parts=parts,
                text=f"{row.command}\n({outcome})",
                project=row.name,
                command=row.command,
                success=row.success,
                return_code=row.return_code,
                task_id=row.task_id,
                created_at=row.executed_at,
                vector=vec,
            )
        )
    return hits


def _select(hits: list[Hit], limit: int, weights: RankingWeights) -> list[Hit]:
    """Best first, one hit per definition (``weights.definitions``) and per overlapping span of a file,
    then MMR when diversity is asked for."""
    ranked = sorted(hits, key=lambda h: (-h.score, h.kind, h.id))
    kept: list[Hit] = []
    definitions: set[tuple[str | None, str, str]] = set()
    for hit in ranked:
        key = hit.definition_key if weights.definitions and isinstance(hit, ChunkHit) else None
        if key is not None and key in definitions:
            continue  # a better chunk of the same definition is already in
        if not any(hit.overlaps(other) for other in kept):
            kept.append(hit)
            if key is not None:
                definitions.add(key)
    if weights.diversity == 0 or len(kept) <= 1:
        return kept[:limit]
    pool = kept[: max(limit * 3, limit)]
    vectors = [h.vector for h in pool]
    similarity = [[float(a @ b) if a is not None and b is not None else 0.0 for b in vectors] for a in vectors]
    order = mmr_order([h.score for h in pool], similarity, weights.diversity, limit)
    return [pool[i] for i in order]
