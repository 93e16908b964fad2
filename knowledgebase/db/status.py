"""What ``kb status`` reports: where the store is, what it runs on, and what it holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from knowledgebase.config import Settings
from knowledgebase.db.connect import connect, database_errors, redact_url
from knowledgebase.db.pool import database_url
from knowledgebase.db.schema import SCHEMA_REVISION, TABLES, current_revision, pgvector_version

if TYPE_CHECKING:
    import psycopg


WAITING_FILES = "SELECT count(*) FROM project_files WHERE chunked_hash IS DISTINCT FROM content_hash"
# chunks stored before their definition summaries (migration 0009)
WAITING_SUMMARIES = """
SELECT count(*) FROM file_chunks c
 WHERE c.symbol IS NOT NULL AND NOT EXISTS (SELECT FROM chunk_summaries s WHERE s.chunk_id = c.id)
"""
WAITING_FACTS = """
SELECT count(*) FROM knowledge
 WHERE embedding IS NULL OR embedding_model_id IS DISTINCT FROM (SELECT id FROM embedding_models WHERE is_active)
"""


@dataclass(frozen=True)
class StoreStatus:
    database_url: str
    embedded: bool
    server_version: str
    pgvector_version: str | None
    schema_revision: str | None
    expected_revision: str
    schema_ok: bool
    embedding_model: str | None
    embedding_dimension: int | None
    configured_model: str
    row_counts: dict[str, int]
    # rows written without kb (plain SQL) that `kb reembed --missing` will chunk or embed
    waiting: dict[str, int]
    replicas: tuple[ReplicaState, ...] = ()  # KB_READ_DATABASE_URL


@dataclass(frozen=True)
class ReplicaState:
    """A read replica as ``kb status`` sees it: reachable, a standby, how far behind the primary."""

    url: str
    reachable: bool
    in_recovery: bool | None = None
    lag_bytes: int | None = None  # WAL the replica has still to replay, against the primary's position now
    error: str | None = None


def store_status(settings: Settings) -> StoreStatus:
    """Inspect the configured database without changing it."""
    from psycopg import sql

    url = database_url(settings)
    with connect(url) as conn, database_errors(url):
        server_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        revision = current_revision(conn)
        counts: dict[str, int] = {}
        waiting: dict[str, int] = {}
        model_name: str | None = None
        model_dim: int | None = None
        if revision is not None:
            for table in TABLES:
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
                if exists and exists[0]:
                    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
                    counts[table] = int(conn.execute(query).fetchone()[0])  # type: ignore[index]
            if {"project_files", "knowledge"} <= counts.keys():
                waiting = {
                    "files": _count(conn, WAITING_FILES),
                    "facts": _count(conn, WAITING_FACTS),
                }
                if "chunk_summaries" in counts:
                    waiting["summaries"] = _count(conn, WAITING_SUMMARIES)
            if "embedding_models" in counts:
                row = conn.execute("SELECT name, dimension FROM embedding_models WHERE is_active").fetchone()
                if row:
                    model_name, model_dim = row[0], int(row[1])
        vector = pgvector_version(conn)
        primary_lsn = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]  # type: ignore[index]
    replicas = tuple(_replica_state(u, url, str(primary_lsn)) for u in settings.read_database_urls)
    return StoreStatus(
        database_url=redact_url(url),
        embedded=settings.uses_embedded_db,
        server_version=str(server_version),
        pgvector_version=vector,
        schema_revision=revision,
        expected_revision=SCHEMA_REVISION,
        schema_ok=revision == SCHEMA_REVISION and vector is not None,
        embedding_model=model_name,
        embedding_dimension=model_dim,
        configured_model=settings.embed_model,
        row_counts=counts,
        waiting=waiting,
        replicas=replicas,
    )


def _replica_state(read_url: str, primary_url: str, primary_lsn: str) -> ReplicaState:
    from knowledgebase.db.routing import lsn_value, with_primary_password
    from knowledgebase.errors import DatabaseUnavailable, first_line

    shown = redact_url(read_url)
    try:
        with connect(with_primary_password(read_url, primary_url)) as conn:
            row = conn.execute("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text").fetchone()
    except DatabaseUnavailable as exc:
        return ReplicaState(url=shown, reachable=False, error=first_line(exc))
    assert row is not None
    lag = max(0, lsn_value(primary_lsn) - lsn_value(row[1])) if row[1] else None
    return ReplicaState(url=shown, reachable=True, in_recovery=bool(row[0]), lag_bytes=lag)


def _count(conn: psycopg.Connection, query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0
