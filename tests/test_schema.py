"""Migrations on a real PostgreSQL: empty -> head -> base -> head, concurrency, and schema checks."""

from __future__ import annotations

import multiprocessing

import psycopg
import pytest

from knowledgebase.db.schema import (
    SCHEMA_REVISION,
    TABLES,
    current_revision,
    downgrade,
    head_revision,
    upgrade,
    verify_schema,
)
from knowledgebase.errors import ExtensionMissing, SchemaMismatch


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        ).fetchall()
    return {r[0] for r in rows}


def test_code_expects_the_shipped_head() -> None:
    assert head_revision() == SCHEMA_REVISION


def test_empty_to_head_to_base_to_head(fresh_database_url: str) -> None:
    assert _tables(fresh_database_url) == set()
    upgrade(fresh_database_url)
    assert _tables(fresh_database_url) == set(TABLES)
    downgrade(fresh_database_url, "base")
    assert _tables(fresh_database_url) == set()
    with psycopg.connect(fresh_database_url) as conn:
        assert current_revision(conn) is None
    upgrade(fresh_database_url)
    assert _tables(fresh_database_url) == set(TABLES)
    with psycopg.connect(fresh_database_url) as conn:
        verify_schema(conn)


def test_tasks_from_revision_0001_start_their_history_when_upgraded(fresh_database_url: str) -> None:
    upgrade(fresh_database_url, "0001")
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("INSERT INTO tasks (id, status, owner, attempts, result) VALUES ('old', 'failed', 'w', 2, 'gone')")
    upgrade(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        row = conn.execute("SELECT history FROM tasks WHERE id = 'old'").fetchone()
        assert row is not None
        (entry,) = row[0]
        assert {k: entry[k] for k in ("status", "owner", "attempt", "note")} == {
            "status": "failed",
            "owner": "w",
            "attempt": 2,
            "note": "gone",
        }
    downgrade(fresh_database_url, "0001")  # and back: the column and its trigger go
    with psycopg.connect(fresh_database_url) as conn:
        conn.execute("UPDATE tasks SET status = 'pending' WHERE id = 'old'")
        assert current_revision(conn) == "0001"
        columns = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'")
        assert "history" not in {r[0] for r in columns}


def test_upgrade_is_idempotent(fresh_database_url: str) -> None:
    upgrade(fresh_database_url)
    upgrade(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        assert current_revision(conn) == SCHEMA_REVISION


def _upgrade_in_process(url: str) -> None:
    upgrade(url)


def test_concurrent_upgrades_both_succeed(fresh_database_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_upgrade_in_process, args=(fresh_database_url,)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    with psycopg.connect(fresh_database_url) as conn:
        assert current_revision(conn) == SCHEMA_REVISION


def test_schema_matches_what_the_code_expects(migrated_url: str) -> None:
    """Every dataclass column of the data-access layer exists in its table, with the expected indexes."""
    from dataclasses import fields

    from knowledgebase import store

    expected = {
        "projects": store.Project,
        "embedding_models": store.EmbeddingModelRecord,
        "api_keys": store.ApiKey,
        "tasks": store.Task,
        "command_log": store.CommandLogEntry,
        "command_output": store.CommandOutput,
        "usage_log": store.UsageEntry,
        "project_files": store.ProjectFile,
        "file_chunks": store.StoredChunk,
        "knowledge": store.KnowledgeRecord,
        "context_log": store.ContextRecord,
    }
    with psycopg.connect(migrated_url) as conn:
        for table, cls in expected.items():
            cols = {
                r[0]
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = %s", (table,)
                )
            }
            missing = {f.name for f in fields(cls)} - cols
            assert not missing, f"{table} lacks {missing}"
        indexes = {r[0]: r[1] for r in conn.execute("SELECT indexname, indexdef FROM pg_indexes")}
        assert "USING hnsw (embedding vector_cosine_ops)" in indexes["file_chunks_embedding_hnsw"]
        assert "USING hnsw (embedding vector_cosine_ops)" in indexes["knowledge_embedding_hnsw"]
        assert "USING gin (tsv)" in indexes["file_chunks_tsv_idx"]
        # every foreign-key column is the leading column of some index
        fk_cols = conn.execute(
            """
            SELECT c.conrelid::regclass::text, a.attname
              FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
             WHERE c.contype = 'f'
            """
        ).fetchall()
        for table, column in fk_cols:
            covered = any(
                f"ON public.{table} USING btree ({column}" in d or f"ON public.{table} USING btree ({column})" in d
                for d in indexes.values()
            )
            assert covered, f"{table}.{column} has no index"


def test_verify_schema_reports_empty_behind_and_ahead(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        with pytest.raises(SchemaMismatch, match="run `kb init`"):
            verify_schema(conn)
        upgrade(fresh_database_url)
        conn.execute("UPDATE alembic_version SET version_num = '0000'")
        with pytest.raises(SchemaMismatch, match="behind this code"):
            verify_schema(conn)
        conn.execute("UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(SchemaMismatch, match="ahead of this code"):
            verify_schema(conn)


def test_verify_schema_reports_missing_pgvector(fresh_database_url: str) -> None:
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES (%s)", (SCHEMA_REVISION,))
        with pytest.raises(ExtensionMissing, match="kb init"):
            verify_schema(conn)
