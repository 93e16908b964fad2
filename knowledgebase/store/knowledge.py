"""Facts (``knowledge``): ``fact_label``, ``fact_value``, where they came from, and how far to trust them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import numpy as np
import psycopg
from pgvector import Vector

from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required
from knowledgebase.util.lexical import search_text


@dataclass(frozen=True)
class KnowledgeRecord:
    id: int
    project_id: int | None
    task_id: str | None
    fact_label: str
    fact_value: str
    extracted_from: str | None
    confidence_score: Decimal
    source_kind: str
    source_command_id: int | None
    source_file_id: int | None
    source_chunk_hash: str | None
    status: str
    superseded_by: int | None
    is_stale: bool
    stale_since: datetime | None
    pinned: bool
    confirmations: int
    embedding_model_id: int | None
    inserted_at: datetime
    updated_at: datetime
    last_confirmed_at: datetime
    proposed: bool
    proposed_in: list[str]


@dataclass(frozen=True)
class NewKnowledge:
    """A fact to insert; ``fact_label``, ``fact_value`` and ``extracted_from`` are already redacted."""

    fact_label: str
    fact_value: str
    project_id: int | None = None
    task_id: str | None = None
    extracted_from: str | None = None
    confidence_score: float = 0.5
    source_kind: str = "manual"
    source_command_id: int | None = None
    source_file_id: int | None = None
    source_chunk_hash: str | None = None
    pinned: bool = False
    embedding: np.ndarray | None = None
    embedding_model_id: int | None = None
    proposed: bool = False
    # the session tasks that proposed it (``proposed`` facts)
    proposed_in: tuple[str, ...] = ()


_COLS = columns(KnowledgeRecord)
INSERT_KNOWLEDGE = f"""
INSERT INTO knowledge (project_id, task_id, fact_label, fact_value, extracted_from, confidence_score, source_kind,
                       source_command_id, source_file_id, source_chunk_hash, pinned, embedding,
                       embedding_model_id, proposed, proposed_in, tsv)
VALUES (%(project_id)s, %(task_id)s, %(fact_label)s, %(fact_value)s, %(extracted_from)s, %(confidence_score)s,
        %(source_kind)s, %(source_command_id)s, %(source_file_id)s, %(source_chunk_hash)s, %(pinned)s,
        %(embedding)s, %(embedding_model_id)s, %(proposed)s, %(proposed_in)s::text[],
        to_tsvector('simple', %(search_text)s))
RETURNING {_COLS}
"""
GET_KNOWLEDGE = f"SELECT {_COLS} FROM knowledge WHERE id = %s"
LIST_KNOWLEDGE = f"""
SELECT {_COLS} FROM knowledge
 WHERE (%(project_id)s::bigint IS NULL OR project_id = %(project_id)s)
   AND (%(fact_label)s::text IS NULL OR fact_label = %(fact_label)s)
   AND (%(include_inactive)s OR status = 'active')
 ORDER BY id DESC
 LIMIT %(limit)s
"""


def insert_knowledge(conn: psycopg.Connection, new: NewKnowledge) -> KnowledgeRecord:
    params = {
        **new.__dict__,
        "proposed_in": list(new.proposed_in),
        "search_text": search_text(f"{new.fact_label}\n{new.fact_value}"),
    }
    row = fetch_one(conn, KnowledgeRecord, INSERT_KNOWLEDGE, params)
    assert row is not None
    return row


def get_knowledge(conn: psycopg.Connection, fact_id: int) -> KnowledgeRecord:
    return fetch_required(conn, KnowledgeRecord, GET_KNOWLEDGE, (fact_id,), f"fact #{fact_id}")


def list_knowledge(
    conn: psycopg.Connection,
    *,
    project_id: int | None = None,
    fact_label: str | None = None,
    include_inactive: bool = False,
    limit: int = 100,
) -> list[KnowledgeRecord]:
    """Facts, newest first; superseded and forgotten ones only with ``include_inactive``."""
    return fetch_all(
        conn,
        KnowledgeRecord,
        LIST_KNOWLEDGE,
        {"project_id": project_id, "fact_label": fact_label, "include_inactive": include_inactive, "limit": limit},
    )


@dataclass(frozen=True)
class KnowledgeView:
    """A fact as read back: its row with the project's name, the source file's path and the ids of
    the facts it superseded."""

    id: int
    project_id: int | None
    project: str | None
    task_id: str | None
    fact_label: str
    fact_value: str
    extracted_from: str | None
    confidence_score: Decimal
    status: str
    superseded_by: int | None
    supersedes: list[int]
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
    proposed: bool
    proposed_in: list[str]


@dataclass(frozen=True)
class ActiveKnowledge:
    """An active fact's value, vector and stored confidence, compared with a new statement of the same label."""

    id: int
    fact_value: str
    embedding: Vector | None
    confidence_score: Decimal


@dataclass(frozen=True)
class KnowledgeStanding:
    """How far a fact is trusted and whether it is still the current one."""

    confidence_score: Decimal
    status: str
    superseded_by: int | None


@dataclass(frozen=True)
class KnowledgeText:
    """What a fact's embedding text is rebuilt from (``facts.fact_embedding_text``)."""

    id: int
    fact_label: str
    fact_value: str


_VIEW_SELECT = """
SELECT k.id, k.project_id, p.name AS project, k.task_id, k.fact_label, k.fact_value, k.extracted_from,
       k.confidence_score, k.status, k.superseded_by,
       ARRAY(SELECT s.id FROM knowledge s WHERE s.superseded_by = k.id ORDER BY s.id) AS supersedes,
       k.is_stale, k.stale_since, k.pinned, k.confirmations, k.source_kind, k.source_command_id,
       f.path AS source_file_path, k.source_chunk_hash, k.inserted_at, k.updated_at, k.last_confirmed_at,
       k.proposed, k.proposed_in
  FROM knowledge k
  LEFT JOIN projects p ON p.id = k.project_id
  LEFT JOIN project_files f ON f.id = k.source_file_id
"""
GET_KNOWLEDGE_VIEW = _VIEW_SELECT + " WHERE k.id = %s"
LIST_KNOWLEDGE_VIEWS = (
    _VIEW_SELECT
    + """
 WHERE (%(project_id)s::bigint IS NULL OR k.project_id = %(project_id)s)
   AND (%(fact_label)s::text IS NULL OR lower(k.fact_label) = lower(%(fact_label)s))
   AND (%(task_id)s::text IS NULL OR k.task_id = %(task_id)s)
   AND (%(include_inactive)s OR k.status = 'active')
   AND (NOT %(stale_only)s OR k.is_stale)
   AND (NOT %(proposed_only)s OR k.proposed)
 ORDER BY k.id DESC
 LIMIT %(limit)s
"""
)
# one writer per (project, label) at a time, so two agents stating the same fact do not both insert it
LOCK_LABEL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 4))"
ACTIVE_WITH_LABEL = """
SELECT id, fact_value, embedding, confidence_score FROM knowledge
 WHERE project_id IS NOT DISTINCT FROM %(project_id)s AND status = 'active'
   AND lower(fact_label) = lower(%(fact_label)s)
 ORDER BY id DESC
"""
REINFORCE = """
UPDATE knowledge
   SET confidence_score = %(confidence)s, confirmations = confirmations + 1, last_confirmed_at = now(),
       updated_at = now(), is_stale = false, stale_since = NULL, proposed = false,
       source_kind = COALESCE(%(source_kind)s, source_kind),
       source_command_id = CASE WHEN %(source_kind)s IS NULL THEN source_command_id ELSE %(source_command_id)s END,
       source_file_id = CASE WHEN %(source_kind)s IS NULL THEN source_file_id ELSE %(source_file_id)s END,
       source_chunk_hash = CASE WHEN %(source_kind)s IS NULL THEN source_chunk_hash ELSE %(source_chunk_hash)s END,
       task_id = COALESCE(%(task_id)s, task_id)
 WHERE id = %(id)s
"""
SUPERSEDE = """
UPDATE knowledge SET status = 'superseded', superseded_by = %(new_id)s, updated_at = now()
 WHERE id = ANY(%(old_ids)s)
"""
FORGET = "UPDATE knowledge SET status = 'forgotten', updated_at = now() WHERE id = %s"
STANDING_FOR_UPDATE = "SELECT confidence_score, status, superseded_by FROM knowledge WHERE id = %s FOR UPDATE"
# The contract with populate (knowledgebase.index.ingest): a fact read from a chunk goes stale once no
# chunk of its file has that content hash any more, or its file leaves the index.
MARK_CHANGED_FILE_FACTS_STALE = """
UPDATE knowledge SET is_stale = true, stale_since = now()
 WHERE source_file_id = %(file_id)s AND source_chunk_hash IS NOT NULL
   AND NOT (source_chunk_hash = ANY(%(chunk_hashes)s::text[])) AND NOT is_stale
"""
MARK_DELETED_FILES_FACTS_STALE = """
UPDATE knowledge SET is_stale = true, stale_since = now()
 WHERE source_file_id = ANY(%(file_ids)s::bigint[]) AND NOT is_stale
"""
KNOWLEDGE_TO_EMBED = """
SELECT id, fact_label, fact_value FROM knowledge
 WHERE id > %(after)s AND (embedding IS NULL OR embedding_model_id IS DISTINCT FROM %(model_id)s)
 ORDER BY id
 LIMIT %(limit)s
"""
SET_KNOWLEDGE_EMBEDDING = "UPDATE knowledge SET embedding = %s, embedding_model_id = %s WHERE id = %s"


def find_knowledge_view(conn: psycopg.Connection, fact_id: int) -> KnowledgeView | None:
    """One fact with its project name, source path and superseded ids, whatever its status."""
    return fetch_one(conn, KnowledgeView, GET_KNOWLEDGE_VIEW, (fact_id,))


def list_knowledge_views(
    conn: psycopg.Connection,
    *,
    project_id: int | None,
    fact_label: str | None,
    task_id: str | None,
    include_inactive: bool,
    stale_only: bool,
    limit: int,
    proposed_only: bool = False,
) -> list[KnowledgeView]:
    """Facts newest first (labels compared without case); superseded and forgotten ones only with
    ``include_inactive``, stale ones only with ``stale_only``, proposed ones only with ``proposed_only``."""
    params = {
        "project_id": project_id,
        "fact_label": fact_label,
        "task_id": task_id,
        "include_inactive": include_inactive,
        "stale_only": stale_only,
        "proposed_only": proposed_only,
        "limit": limit,
    }
    return fetch_all(conn, KnowledgeView, LIST_KNOWLEDGE_VIEWS, params)


def lock_knowledge_label(conn: psycopg.Connection, project_id: int | None, fact_label: str) -> None:
    """Serialise writers of one (project, label) slot until the transaction ends."""
    conn.execute(LOCK_LABEL, (f"{project_id}:{fact_label.lower()}",))


def active_knowledge_with_label(
    conn: psycopg.Connection, project_id: int | None, fact_label: str
) -> list[ActiveKnowledge]:
    """The active facts of a project (None: of no project) with this label (any case), newest first."""
    return fetch_all(conn, ActiveKnowledge, ACTIVE_WITH_LABEL, {"project_id": project_id, "fact_label": fact_label})


def knowledge_standing_for_update(conn: psycopg.Connection, fact_id: int) -> KnowledgeStanding | None:
    """A fact's confidence and status, locking its row until the transaction ends; None if no such fact."""
    return fetch_one(conn, KnowledgeStanding, STANDING_FOR_UPDATE, (fact_id,))


def reinforce_knowledge(
    conn: psycopg.Connection,
    fact_id: int,
    *,
    confidence: float,
    source_kind: str | None,
    source_command_id: int | None,
    source_file_id: int | None,
    source_chunk_hash: str | None,
    task_id: str | None,
) -> None:
    """One more confirmation at ``confidence``, clearing the stale flag and the proposed mark (someone
    stated or confirmed it); a ``source_kind`` replaces the recorded source, a ``task_id`` the recorded task."""
    conn.execute(
        REINFORCE,
        {
            "id": fact_id,
            "confidence": confidence,
            "source_kind": source_kind,
            "source_command_id": source_command_id,
            "source_file_id": source_file_id,
            "source_chunk_hash": source_chunk_hash,
            "task_id": task_id,
        },
    )


def supersede_knowledge(conn: psycopg.Connection, old_ids: Sequence[int], new_id: int) -> None:
    """Mark the facts ``old_ids`` superseded by fact ``new_id``."""
    conn.execute(SUPERSEDE, {"new_id": new_id, "old_ids": list(old_ids)})


def forget_knowledge(conn: psycopg.Connection, fact_id: int) -> bool:
    """Give a fact the status ``forgotten``; False if there is no such fact."""
    return conn.execute(FORGET, (fact_id,)).rowcount > 0


def mark_changed_file_facts_stale(conn: psycopg.Connection, file_id: int, chunk_hashes: Sequence[str]) -> int:
    """Mark stale the facts read from a chunk of ``file_id`` whose hash is not among ``chunk_hashes``."""
    return conn.execute(
        MARK_CHANGED_FILE_FACTS_STALE, {"file_id": file_id, "chunk_hashes": list(chunk_hashes)}
    ).rowcount


def mark_deleted_files_facts_stale(conn: psycopg.Connection, file_ids: Sequence[int]) -> int:
    """Mark stale the facts read from any of these files (about to leave the index)."""
    return conn.execute(MARK_DELETED_FILES_FACTS_STALE, {"file_ids": list(file_ids)}).rowcount


def knowledge_to_embed(conn: psycopg.Connection, model_id: int, *, after: int, limit: int) -> list[KnowledgeText]:
    """Up to ``limit`` facts with an id above ``after`` that hold no vector of ``model_id``, by id."""
    return fetch_all(conn, KnowledgeText, KNOWLEDGE_TO_EMBED, {"after": after, "model_id": model_id, "limit": limit})


def set_knowledge_embeddings(
    conn: psycopg.Connection, model_id: int, vectors: Sequence[tuple[int, np.ndarray]]
) -> None:
    """Store ``(fact_id, vector)`` pairs as vectors of ``model_id``, in one batched round trip."""
    with conn.cursor() as cur:
        cur.executemany(SET_KNOWLEDGE_EMBEDDING, [(vector, model_id, fact_id) for fact_id, vector in vectors])


SET_FACT_TEXT_AND_VECTOR = """
UPDATE knowledge
   SET fact_label = %(fact_label)s, fact_value = %(fact_value)s, tsv = to_tsvector('simple', %(search_text)s),
       embedding = %(embedding)s, embedding_model_id = %(model_id)s
 WHERE id = %(id)s
"""


def set_fact_text_and_vector(
    conn: psycopg.Connection, fact_id: int, fact_label: str, fact_value: str, vector: np.ndarray, model_id: int
) -> None:
    """Store a fact's (redacted) text, its full-text vector and its embedding, as ``insert_knowledge`` would."""
    params = {
        "id": fact_id,
        "fact_label": fact_label,
        "fact_value": fact_value,
        "search_text": search_text(f"{fact_label}\n{fact_value}"),
        "embedding": vector,
        "model_id": model_id,
    }
    conn.execute(SET_FACT_TEXT_AND_VECTOR, params)


@dataclass(frozen=True)
class LabelledKnowledge:
    """A fact of some label, whatever its status: what a new proposal of that label is compared with."""

    id: int
    fact_value: str
    status: str
    proposed: bool
    proposed_in: list[str]
    confidence_score: Decimal


WITH_LABEL = """
SELECT id, fact_value, status, proposed, proposed_in, confidence_score FROM knowledge
 WHERE project_id IS NOT DISTINCT FROM %(project_id)s AND lower(fact_label) = lower(%(fact_label)s)
 ORDER BY id DESC
"""
# a proposal made again by another session: trusted a little more, and its age starts again
REINFORCE_PROPOSAL = """
UPDATE knowledge
   SET confidence_score = GREATEST(confidence_score, %(confidence)s), proposed_in = proposed_in || %(task_id)s::text,
       last_confirmed_at = now(), updated_at = now()
 WHERE id = %(id)s AND proposed AND NOT (%(task_id)s::text = ANY(proposed_in))
"""


def knowledge_with_label(conn: psycopg.Connection, project_id: int | None, fact_label: str) -> list[LabelledKnowledge]:
    """Every fact of a project (None: of no project) with this label (any case, any status), newest first."""
    return fetch_all(conn, LabelledKnowledge, WITH_LABEL, {"project_id": project_id, "fact_label": fact_label})


def reinforce_proposal(conn: psycopg.Connection, fact_id: int, *, task_id: str, confidence: float) -> bool:
    """Record that ``task_id`` proposed the still-proposed fact ``fact_id`` too, raising its confidence to
    ``confidence``; False (and nothing changed) if that task had proposed it already or it is not proposed."""
    params = {"id": fact_id, "task_id": task_id, "confidence": confidence}
    return conn.execute(REINFORCE_PROPOSAL, params).rowcount > 0
