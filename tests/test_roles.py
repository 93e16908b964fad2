"""The agents' least-privilege role: they add to the audit trail and cannot rewrite it, whatever they try.

`kb` and the agents reach the embedded server as ``kb_agent_login`` (a member of ``kb_agent``); the
tables' owner (the server's superuser here) runs the migrations and may prune in maintenance mode.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.coordination import audit, taskqueue
from knowledgebase.db import Database, database_url
from knowledgebase.db.embedded import AGENT_LOGIN, OWNER_ROLE

AUDIT_TABLES = ("command_log", "command_output", "usage_log")


@pytest.fixture
def agent(agent_db_url: str) -> Iterator[Database]:
    database = Database(agent_db_url, max_size=2)
    yield database
    database.close()


@pytest.fixture
def logged(agent: Database) -> int:
    """One task with a command, its output and a usage row, written by the agent role."""
    with agent.connection() as conn:
        project_id = store.ensure_project(conn, "alpha").id
    taskqueue.create_task(agent, "T-1", title="fix the build")
    entry, _ = audit.log_command(agent, command="ls", task_id="T-1", project_id=project_id, stdout="a", return_code=0)
    audit.log_usage(agent, request_type="generate", task_id="T-1", command_log_id=entry.id)
    return entry.id


def _refused(db: Database, *statements: str, match: str = "permission denied") -> None:
    for statement in statements:
        with db.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege, match=match):
            conn.execute(statement)
            pytest.fail(f"not refused: {statement}")


def test_kb_connects_as_the_agent_login_and_migrates_as_the_owner(test_home, admin_url: str) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(home=test_home)  # the session's embedded server
    with psycopg.connect(database_url(settings)) as conn:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolcreaterole, pg_has_role(current_user, 'kb_agent', 'MEMBER')"
            " FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (AGENT_LOGIN, False, False, True)
    with psycopg.connect(database_url(settings, owner=True)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (OWNER_ROLE,)


def test_the_agent_role_cannot_change_delete_or_truncate_the_audit_log(agent: Database, logged: int) -> None:
    _refused(
        agent,
        *(f"UPDATE {table} SET id = id" for table in AUDIT_TABLES),
        *(f"DELETE FROM {table}" for table in AUDIT_TABLES),
        *(f"TRUNCATE {table} CASCADE" for table in AUDIT_TABLES),
        "TRUNCATE tasks CASCADE",  # would empty the log through the cascade
        "DELETE FROM context_log",
        "UPDATE context_log SET text = ''",
        "DELETE FROM tasks",  # would detach the entries from their task (ON DELETE SET NULL)
        "DELETE FROM api_keys",
    )
    with agent.connection() as conn:
        assert [conn.execute(f"SELECT count(*) FROM {t}").fetchone() for t in AUDIT_TABLES] == [(1,)] * 3


def test_maintenance_mode_and_trigger_control_are_out_of_the_agents_reach(agent: Database, logged: int) -> None:
    with agent.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SET kb.audit_maintenance = 'on'")  # a custom setting anyone may set: it must not help
        conn.execute("UPDATE command_log SET prompt = 'rewritten'")
    _refused(
        agent,
        "ALTER TABLE command_log DISABLE TRIGGER command_log_append_only",
        "ALTER TABLE command_log DISABLE TRIGGER ALL",
        "DROP TRIGGER command_log_append_only ON command_log",
        "CREATE OR REPLACE FUNCTION kb_audit_append_only() RETURNS trigger LANGUAGE plpgsql"
        " AS $$ BEGIN RETURN NEW; END $$",
        "SET session_replication_role = replica",  # would skip every ordinary trigger
        f"SET ROLE {OWNER_ROLE}",
        "ALTER ROLE kb_agent_login SUPERUSER",
        match="must be owner|permission denied|must be superuser|member of role",
    )


def test_detaching_an_entry_from_its_task_is_refused_even_for_the_owner(
    agent: Database, logged: int, db: Database
) -> None:
    _refused(agent, "UPDATE command_log SET task_id = NULL")  # the agent has no UPDATE at all
    for statement in ("UPDATE command_log SET task_id = NULL", "UPDATE usage_log SET task_id = NULL"):
        with db.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)  # the owner, without maintenance mode: the trigger refuses
            pytest.fail(f"not refused: {statement}")
    with db.connection() as conn:
        assert conn.execute("SELECT task_id FROM command_log").fetchall() == [("T-1",)]


def test_deleting_what_entries_refer_to_still_clears_the_references(agent: Database, logged: int, db: Database) -> None:
    with agent.connection() as conn:  # the agent may remove a project: the cascade runs as the log's owner
        assert store.delete_project(conn, "alpha")
    with db.connection() as conn:  # the owner deletes the task (ON DELETE SET NULL)
        conn.execute("DELETE FROM tasks WHERE id = 'T-1'")
    with agent.connection() as conn:
        assert conn.execute("SELECT task_id, project_id, prompt IS NULL FROM command_log").fetchall() == [
            (None, None, True)
        ]
        assert conn.execute("SELECT task_id, command_log_id FROM usage_log").fetchall() == [(None, logged)]


def test_the_owner_may_still_prune_in_maintenance_mode(logged: int, db: Database) -> None:
    with db.connection() as conn:
        conn.execute("SET LOCAL kb.audit_maintenance = 'on'")
        conn.execute("DELETE FROM usage_log")
        conn.execute("DELETE FROM command_log")
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM command_output").fetchone() == (0,)


def test_an_agent_login_before_the_grants_is_told_to_run_kb_init(fresh_database_url: str) -> None:
    from knowledgebase.db.schema import upgrade, verify_schema
    from knowledgebase.errors import SchemaMismatch
    from tests.support import as_agent

    upgrade(fresh_database_url, "0003")
    with psycopg.connect(as_agent(fresh_database_url)) as conn, pytest.raises(SchemaMismatch, match="run `kb init`"):
        verify_schema(conn)
    upgrade(fresh_database_url)
    with psycopg.connect(as_agent(fresh_database_url)) as conn:
        verify_schema(conn)
        assert conn.execute("SELECT count(*) FROM command_log").fetchone() == (0,)


def test_the_embedded_server_gives_the_login_its_role_back_after_a_downgrade_dropped_it(
    test_home, admin_url: str
) -> None:  # type: ignore[no-untyped-def]
    from knowledgebase.db.embedded import AGENT_ROLE, ensure_server

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"REVOKE {AGENT_ROLE} FROM {AGENT_LOGIN}")  # as if kb_agent had been dropped and made again
    ensure_server(test_home / "pgdata")
    with psycopg.connect(admin_url) as conn:
        assert conn.execute("SELECT pg_has_role(%s, %s, 'MEMBER')", (AGENT_LOGIN, AGENT_ROLE)).fetchone() == (True,)


def test_a_table_a_later_migration_adds_is_readable_and_appendable_but_no_more(agent: Database, db: Database) -> None:
    with db.connection() as conn:  # the owner, as a migration would
        conn.execute("CREATE TABLE kb_test_later (id BIGSERIAL PRIMARY KEY, note TEXT)")
    try:
        with agent.connection() as conn:
            conn.execute("INSERT INTO kb_test_later (note) VALUES ('x')")
            assert conn.execute("SELECT note FROM kb_test_later").fetchall() == [("x",)]
        _refused(agent, "UPDATE kb_test_later SET note = 'y'", "DELETE FROM kb_test_later")
    finally:
        with db.connection() as conn:
            conn.execute("DROP TABLE kb_test_later")
