"""Facts: what agents have learned, with a source, a confidence that decays, and a history.

A fact is a (label, value) pair in a project, embedded as ``"label: value"`` so retrieval finds it.
The label names the slot ("test command", "db port"); within a project at most one fact per label
is active:

- stating a near-identical value again **reinforces** the active fact (confidence up, one more
  confirmation, last-confirmed time now, stale flag cleared) instead of adding a duplicate;
- stating a different value **supersedes** it: the old fact is kept for history with status
  ``superseded`` and ``superseded_by`` pointing at the new one, and is no longer returned by default.

"Near-identical" means the same words once case, punctuation and quoting are ignored, or a paraphrase
(embedding similarity >= ``RESTATEMENT_SIMILARITY``) that keeps every literal (numbers, paths,
identifiers) the same: "port 5432" and "port 5433" are different facts however similar they read.

How far to trust a fact is its *effective* confidence (``knowledgebase.ranking.effective_confidence``):
the stored confidence halved per half-life since the last confirmation, and lowered while the fact is
stale (its source chunk changed on a later populate). Label, value, source text are redacted before
they are stored or embedded.

A **proposed** fact (``propose_fact``; ``knowledgebase.search.trail_facts`` proposes them from what a
session's commands showed) starts at ``PROPOSED_CONFIDENCE``, below the context cutoff
(``RankingWeights.min_fact_confidence``), and never supersedes anything. Each later session that proposes
it again adds ``PROPOSAL_STEP`` (up to ``PROPOSED_CEILING``), so a second session brings it into context
blocks; a session counts once however often it proposes. Confirming it (``confirm_fact``) or stating it
(``add_fact``) makes it an ordinary fact, a confirmation at ``CONFIRMED_CONFIDENCE`` at least; a proposal
that was forgotten or superseded is not proposed again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder, bind_model
from knowledgebase.errors import InputError, NotFound
from knowledgebase.ranking import DEFAULT_WEIGHTS, RankingWeights, effective_confidence, reinforced_confidence
from knowledgebase.util.redact import redact

# Cosine similarity of two "label: value" embeddings above which a restatement with the same literals
# counts as the same fact (MiniLM: "tests run with make test" vs "the tests are run using make test" 0.95).
RESTATEMENT_SIMILARITY = 0.95
MAX_VALUE_CHARS = 8000
MAX_LABEL_CHARS = 200
SOURCE_KINDS = ("manual", "command", "chunk", "prompt", "agent")
# the confidence of a fact stated without one; a new value that supersedes a fact keeps that fact's
# confidence when it was higher (a correction is trusted as much as what it corrects), unless the
# caller states a confidence
DEFAULT_CONFIDENCE = 0.5
# proposals from the trail: start under the context cutoff, rise per proposing session, stay below the
# session digest's "established" bar (0.7) until someone confirms them
PROPOSED_CONFIDENCE = round(DEFAULT_WEIGHTS.min_fact_confidence - 0.1, 3)
PROPOSAL_STEP = 0.15
PROPOSED_CEILING = 0.6
CONFIRMED_CONFIDENCE = 0.9


@dataclass(frozen=True)
class FactSource:
    """Where a fact came from: a command_log row, a chunk of a file (by path and content hash, or by a
    line inside it), a prompt, an agent's own conclusion, or a person (``manual``)."""

    kind: str = "manual"
    command_id: int | None = None
    file_path: str | None = None
    chunk_hash: str | None = None
    line: int | None = None
    prompt: str | None = None

    @classmethod
    def from_command(cls, command_id: int) -> FactSource:
        return cls(kind="command", command_id=command_id)

    @classmethod
    def from_chunk(cls, file_path: str, chunk_hash: str | None = None, *, line: int | None = None) -> FactSource:
        """A chunk of ``file_path`` (relative to the project root), named by content hash or by a line in it."""
        return cls(kind="chunk", file_path=file_path, chunk_hash=chunk_hash, line=line)

    @classmethod
    def from_prompt(cls, prompt: str) -> FactSource:
        return cls(kind="prompt", prompt=prompt)


MANUAL = FactSource()
AGENT = FactSource(kind="agent")


@dataclass(frozen=True)
class Fact:
    """A stored fact with its provenance, history links and current effective confidence."""

    id: int
    project_id: int | None
    project: str | None
    task_id: str | None
    fact_label: str
    fact_value: str
    extracted_from: str | None
    confidence_score: float
    # computed when read (decays with time), so not part of equality
    effective_confidence: float = field(compare=False)
    status: str
    superseded_by: int | None
    supersedes: tuple[int, ...]
    is_stale: bool
    stale_since: datetime | None
    pinned: bool
    confirmations: int
    source_kind: str
    source_command_id: int | None
    source_file_path: str | None
    source_chunk_hash: str | None
    inserted_at: datetime
    updated_at: datetime
    last_confirmed_at: datetime
    proposed: bool = False
    # the session tasks that proposed it
    proposed_in: tuple[str, ...] = ()

    def citation(self) -> str:
        """How context blocks cite this fact."""
        return f"fact #{self.id}, confidence {self.effective_confidence:.2f}" + (", stale" if self.is_stale else "")


@dataclass(frozen=True)
class _ResolvedSource:
    kind: str
    command_id: int | None = None
    file_id: int | None = None
    chunk_hash: str | None = None
    prompt: str | None = None

    def new_knowledge(self, **fields: Any) -> store.NewKnowledge:
        """The fact to insert, read from this source: ``fields`` give the rest of ``NewKnowledge``."""
        return store.NewKnowledge(
            source_kind=self.kind,
            source_command_id=self.command_id,
            source_file_id=self.file_id,
            source_chunk_hash=self.chunk_hash,
            **fields,
        )


def fact_embedding_text(label: str, value: str) -> str:
    """The text a fact is embedded as (``kb reembed`` rebuilds vectors from it)."""
    return f"{label}: {value}"


def add_fact(
    db: Database,
    embedder: Embedder,
    *,
    label: str,
    value: str,
    project: str | None = None,
    task_id: str | None = None,
    extracted_from: str | None = None,
    confidence: float | None = None,
    source: FactSource = MANUAL,
    pinned: bool = False,
    weights: RankingWeights = DEFAULT_WEIGHTS,
) -> Fact:
    """Record a fact in ``project`` (created if new; None for a fact that belongs to no project).

    Returns the fact as stored: a new one, the reinforced existing one (``confirmations`` > 1), or a
    new one that supersedes the old value (``supersedes`` lists it). ``confidence`` None means
    ``DEFAULT_CONFIDENCE``, or the superseded fact's confidence when that is higher; a reinforcement
    never lowers a confidence. A prompt source with no ``extracted_from`` records the prompt as what
    the fact was extracted from.
    """
    label, value = _clean_label(label), _clean_value(value)
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise InputError(f"confidence {confidence} must be between 0 and 1")
    if source.kind not in SOURCE_KINDS:
        raise InputError(f"unknown fact source {source.kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    extracted = redact(extracted_from if extracted_from is not None else source.prompt)
    vector = embedder.embed_documents([fact_embedding_text(label, value)])[0]
    with db.connection() as conn:
        model_id = bind_model(conn, embedder)
        project_id = store.ensure_project(conn, project).id if project is not None else None
        if task_id is not None:
            store.ensure_task(conn, task_id, project_id=project_id)
        resolved = _resolve_source(conn, source, project_id)
        store.lock_knowledge_label(conn, project_id, label)
        existing = store.active_knowledge_with_label(conn, project_id, label)
        for active in existing:
            if _same_statement(active.fact_value, value, active.embedding, vector):
                stated = DEFAULT_CONFIDENCE if confidence is None else confidence
                _reinforce(conn, active.id, stated, resolved, task_id)
                return _get(conn, active.id, weights)
        if confidence is None:
            confidence = max([DEFAULT_CONFIDENCE, *(float(active.confidence_score) for active in existing)])
        new = store.insert_knowledge(
            conn,
            resolved.new_knowledge(
                fact_label=label,
                fact_value=value,
                project_id=project_id,
                task_id=task_id,
                extracted_from=extracted,
                confidence_score=round(confidence, 3),
                pinned=pinned,
                embedding=vector,
                embedding_model_id=model_id,
            ),
        )
        if existing:
            store.supersede_knowledge(conn, [active.id for active in existing], new.id)
        return _get(conn, new.id, weights)


def propose_fact(
    db: Database,
    embedder: Embedder,
    *,
    label: str,
    value: str,
    project: str,
    task_id: str,
    extracted_from: str | None = None,
    source: FactSource = MANUAL,
    weights: RankingWeights = DEFAULT_WEIGHTS,
) -> Fact | None:
    """Propose that LABEL is VALUE in ``project``, as seen by the session task ``task_id`` (see the module).

    Returns the new or reinforced proposal; the fact unchanged when it is no longer proposed (confirmed
    or stated) or ``task_id`` proposed it already; None when a fact of that value was forgotten or
    superseded (someone decided against it).
    """
    label, value = _clean_label(label), _clean_value(value)
    if source.kind not in SOURCE_KINDS:
        raise InputError(f"unknown fact source {source.kind!r}; use one of {', '.join(SOURCE_KINDS)}")
    with db.connection() as conn:
        project_id = store.ensure_project(conn, project).id
        store.ensure_task(conn, task_id, project_id=project_id)
        store.lock_knowledge_label(conn, project_id, label)
        same = [f for f in store.knowledge_with_label(conn, project_id, label) if _words(f.fact_value) == _words(value)]
        if same and all(f.status != "active" for f in same):
            return None
        if same:
            current = next(f for f in same if f.status == "active")
            raised = min(PROPOSED_CEILING, float(current.confidence_score) + PROPOSAL_STEP)
            store.reinforce_proposal(conn, current.id, task_id=task_id, confidence=round(raised, 3))
            return _get(conn, current.id, weights)
    vector = embedder.embed_documents([fact_embedding_text(label, value)])[0]
    with db.connection() as conn:
        model_id = bind_model(conn, embedder)
        resolved = _resolve_source(conn, source, project_id)
        store.lock_knowledge_label(conn, project_id, label)
        if any(_words(f.fact_value) == _words(value) for f in store.knowledge_with_label(conn, project_id, label)):
            return None  # another session proposed it meanwhile: it counts when it proposes it again
        new = store.insert_knowledge(
            conn,
            resolved.new_knowledge(
                fact_label=label,
                fact_value=value,
                project_id=project_id,
                task_id=task_id,
                extracted_from=redact(extracted_from),
                confidence_score=PROPOSED_CONFIDENCE,
                embedding=vector,
                embedding_model_id=model_id,
                proposed=True,
                proposed_in=(task_id,),
            ),
        )
        return _get(conn, new.id, weights)


def confirm_fact(
    db: Database, fact_id: int, *, confidence: float | None = None, weights: RankingWeights = DEFAULT_WEIGHTS
) -> Fact:
    """Someone checked the fact and it still holds: reinforce it and clear its stale flag; a proposed
    fact becomes an ordinary one, at ``CONFIRMED_CONFIDENCE`` at least unless ``confidence`` says otherwise."""
    if confidence is not None and not 0.0 <= confidence <= 1.0:
        raise InputError(f"confidence {confidence} must be between 0 and 1")
    with db.connection() as conn:
        standing = store.knowledge_standing_for_update(conn, fact_id)
        if standing is None:
            raise NotFound(f"fact #{fact_id} does not exist (list facts with `kb fact list`)")
        if standing.status == "superseded":
            raise InputError(
                f"fact #{fact_id} was superseded by fact #{standing.superseded_by}; confirm that one instead"
            )
        if standing.status == "forgotten":
            raise InputError(f"fact #{fact_id} was forgotten; add it again with `kb fact add` if it holds")
        stated = float(standing.confidence_score) if confidence is None else confidence
        if confidence is None and _get(conn, fact_id, weights).proposed:
            stated = max(stated, CONFIRMED_CONFIDENCE)
        _reinforce(conn, fact_id, stated, None, None)
        return _get(conn, fact_id, weights)


def forget_fact(db: Database, fact_id: int, *, weights: RankingWeights = DEFAULT_WEIGHTS) -> Fact:
    """Stop returning a fact (it stays on record with status ``forgotten``)."""
    with db.connection() as conn:
        if not store.forget_knowledge(conn, fact_id):
            raise NotFound(f"fact #{fact_id} does not exist (list facts with `kb fact list`)")
        return _get(conn, fact_id, weights)


def get_fact(db: Database, fact_id: int, *, weights: RankingWeights = DEFAULT_WEIGHTS) -> Fact:
    """One fact by id, whatever its status."""
    with db.connection() as conn:
        return _get(conn, fact_id, weights)


def list_facts(
    db: Database,
    *,
    project: str | None = None,
    label: str | None = None,
    task_id: str | None = None,
    include_inactive: bool = False,
    stale_only: bool = False,
    proposed_only: bool = False,
    limit: int = 50,
    weights: RankingWeights = DEFAULT_WEIGHTS,
) -> list[Fact]:
    """Facts, newest first: active ones, or all with ``include_inactive``; of one project if given;
    only the proposed ones (not yet confirmed) with ``proposed_only``."""
    if limit < 1:
        raise InputError(f"limit {limit} must be at least 1")
    with db.connection() as conn:
        project_id = store.get_project(conn, project).id if project is not None else None
        rows = store.list_knowledge_views(
            conn,
            project_id=project_id,
            fact_label=label.strip() if label else None,
            task_id=task_id,
            include_inactive=include_inactive,
            stale_only=stale_only,
            proposed_only=proposed_only,
            limit=limit,
        )
    now = datetime.now(UTC)
    return [_fact_from_view(row, now, weights) for row in rows]


def _get(conn: psycopg.Connection, fact_id: int, weights: RankingWeights) -> Fact:
    row = store.find_knowledge_view(conn, fact_id)
    if row is None:
        raise NotFound(f"fact #{fact_id} does not exist (list facts with `kb fact list`)")
    return _fact_from_view(row, datetime.now(UTC), weights)


def _fact_from_view(row: store.KnowledgeView, now: datetime, weights: RankingWeights) -> Fact:
    confidence = float(row.confidence_score)
    effective = effective_confidence(
        confidence,
        last_confirmed_at=row.last_confirmed_at,
        now=now,
        is_stale=row.is_stale,
        pinned=row.pinned,
        weights=weights,
    )
    return Fact(
        id=row.id,
        project_id=row.project_id,
        project=row.project,
        task_id=row.task_id,
        fact_label=row.fact_label,
        fact_value=row.fact_value,
        extracted_from=row.extracted_from,
        confidence_score=confidence,
        effective_confidence=effective,
        status=row.status,
        superseded_by=row.superseded_by,
        supersedes=tuple(row.supersedes or ()),
        is_stale=row.is_stale,
        stale_since=row.stale_since,
        pinned=row.pinned,
        confirmations=row.confirmations,
        source_kind=row.source_kind,
        source_command_id=row.source_command_id,
        source_file_path=row.source_file_path,
        source_chunk_hash=row.source_chunk_hash,
        inserted_at=row.inserted_at,
        updated_at=row.updated_at,
        last_confirmed_at=row.last_confirmed_at,
        proposed=row.proposed,
        proposed_in=tuple(row.proposed_in or ()),
    )


def _reinforce(
    conn: psycopg.Connection, fact_id: int, stated: float, source: _ResolvedSource | None, task_id: str | None
) -> None:
    """One more confirmation; a new command, chunk or prompt source replaces the recorded one."""
    standing = store.knowledge_standing_for_update(conn, fact_id)
    assert standing is not None
    new_source = source if source is not None and source.kind in ("command", "chunk", "prompt") else None
    store.reinforce_knowledge(
        conn,
        fact_id,
        confidence=reinforced_confidence(float(standing.confidence_score), stated),
        source_kind=new_source.kind if new_source else None,
        source_command_id=new_source.command_id if new_source else None,
        source_file_id=new_source.file_id if new_source else None,
        source_chunk_hash=new_source.chunk_hash if new_source else None,
        task_id=task_id,
    )


def _resolve_source(conn: psycopg.Connection, source: FactSource, project_id: int | None) -> _ResolvedSource:
    """Check that the source exists and turn a file path (and line) into ids and a chunk hash."""
    if source.kind == "command":
        if source.command_id is None:
            raise InputError("a command source needs the command_log id")
        store.get_command_log(conn, source.command_id)
        return _ResolvedSource(kind="command", command_id=source.command_id)
    if source.kind == "chunk":
        if project_id is None:
            raise InputError("a fact read from a file needs the project the file belongs to")
        if not source.file_path:
            raise InputError("a chunk source needs the file path (relative to the project root)")
        file = store.find_file(conn, project_id, source.file_path)
        if file is None:
            raise NotFound(f"file {source.file_path!r} is not indexed in this project (run `kb populate` first)")
        if source.chunk_hash is not None:
            chunk_hash = store.chunk_hash_in_file(conn, file.id, source.chunk_hash)
            what = f"no chunk of {source.file_path} has content hash {source.chunk_hash!r}"
        elif source.line is not None:
            chunk_hash = store.chunk_hash_at_line(conn, file.id, source.line)
            what = f"no chunk of {source.file_path} covers line {source.line}"
        else:
            raise InputError("a chunk source needs the chunk's content hash or a line inside it")
        if chunk_hash is None:
            raise NotFound(what + " (the file may have changed: run `kb populate` and look again)")
        return _ResolvedSource(kind="chunk", file_id=file.id, chunk_hash=chunk_hash)
    if source.kind == "prompt":
        return _ResolvedSource(kind="prompt", prompt=redact(source.prompt))
    return _ResolvedSource(kind=source.kind)


def _clean_label(label: str) -> str:
    cleaned = " ".join((redact(label) or "").split())
    if not cleaned:
        raise InputError("a fact needs a label (what it is about, e.g. 'test command')")
    if len(cleaned) > MAX_LABEL_CHARS:
        raise InputError(f"a fact label is at most {MAX_LABEL_CHARS} characters; put the detail in the value")
    return cleaned


def _clean_value(value: str) -> str:
    cleaned = (redact(value) or "").strip()
    if not cleaned:
        raise InputError("a fact needs a value (what is known, e.g. 'make test')")
    if len(cleaned) > MAX_VALUE_CHARS:
        raise InputError(
            f"a fact value is at most {MAX_VALUE_CHARS} characters ({len(cleaned)} given); "
            "state the fact briefly and cite the file it comes from"
        )
    return cleaned


_WORD = re.compile(r"[^\W_]+(?:[_./:-][^\W_]+)*|_+[^\W_]+\w*")


def _words(text: str) -> list[str]:
    """The words of a statement, ignoring case, punctuation, quotes and backticks."""
    return [w.lower() for w in _WORD.findall(text)]


def _literals(text: str) -> set[str]:
    """Tokens whose exact spelling matters: numbers, paths, dotted names, identifiers, CamelCase."""
    found = set()
    for token in _WORD.findall(text):
        if any(c.isdigit() for c in token) or any(c in token for c in "_./:-") or re.search(r"[a-z][A-Z]", token):
            found.add(token.lower())
    return found


def _same_statement(old_value: str, new_value: str, old_vector: object, new_vector: np.ndarray) -> bool:
    """Whether ``new_value`` restates ``old_value`` (see the module docstring)."""
    if _words(old_value) == _words(new_value):
        return True
    if old_vector is None or _literals(old_value) != _literals(new_value):
        return False
    old = np.asarray(old_vector.to_numpy() if hasattr(old_vector, "to_numpy") else old_vector, dtype=np.float32)
    return float(old @ new_vector) >= RESTATEMENT_SIMILARITY
