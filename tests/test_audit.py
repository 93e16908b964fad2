"""The audit trail: redacted writes, a task's history in order, append-only tables, the outage spool."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from knowledgebase import store
from knowledgebase.coordination import audit, taskqueue
from knowledgebase.coordination.spool import flush_spool, load_spooled, pending_files, spool_command
from knowledgebase.db import Database
from knowledgebase.errors import InputError, NotFound
from tests.support import as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)

GOOGLE_KEY = "AIza" + "SyA1234567890abcdefghijklmnopqrstuv"
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
    assert row is not None
    return int(row[0])


def test_task_history_is_the_log_in_order_with_outcomes_and_usage(db: Database) -> None:
    taskqueue.create_task(db, "T-1", title="fix the build")
    prompt = audit.log_exchange(
        db,
        task_id="T-1",
        prompt="why does the build fail?",
        response="a missing import",
        agent_mode="yolo",
        session_id="s-1",
        agent_id="agent-a",
    )
    audit.log_usage(
        db,
        request_type="generate",
        model="gemini-2.5-flash",
        prompt_tokens=12,
        response_tokens=4,
        task_id="T-1",
        command_log_id=prompt.id,
    )
    shell, output = audit.log_command(
        db,
        command="make build",
        task_id="T-1",
        stdout="ok\n",
        stderr="",
        return_code=0,
        files_written=["build/app"],
        duration_ms=1200,
        user_confirmation=True,
    )
    tool = audit.log_exchange(
        db, task_id="T-1", prompt=None, kind="tool", tool_name="read_file", tool_input={"path": "src/app.py"}
    )
    audit.log_exchange(db, task_id="other", prompt="not this task")

    history = audit.task_history(db, "T-1")
    assert [h["id"] for h in history] == [prompt.id, shell.id, tool.id]
    first, second, third = history
    assert first["kind"] == "prompt" and first["prompt"] == "why does the build fail?"
    assert first["response"] == "a missing import" and first["agent_mode"] == "yolo" and first["agent_id"] == "agent-a"
    assert first["usage"] == {
        "prompt_tokens": 12,
        "response_tokens": 4,
        "total_tokens": 16,
        "models": ["gemini-2.5-flash"],
    }
    assert first["output"] is None
    assert second["command"] == "make build" and second["user_confirmation"] is True
    assert second["output"] is not None and second["output"]["files_written"] == ["build/app"]
    assert second["output"]["success"] is True and second["output"]["return_code"] == 0
    assert output.duration_ms == 1200
    assert third["tool_name"] == "read_file" and third["tool_input"] == {"path": "src/app.py"}
    json.dumps(history)  # the shape an agent keeps in context['history'] is plain JSON
    assert [h["id"] for h in audit.task_history(db, "T-1", limit=2)] == [shell.id, tool.id]


def test_secrets_are_redacted_everywhere_before_they_are_stored(db: Database, conn: psycopg.Connection) -> None:
    entry, _ = audit.log_command(
        db,
        command=f"curl -H 'Authorization: Bearer {GITHUB_TOKEN}' https://x",
        task_id="T-9",
        stdout=f"GOOGLE_API_KEY={GOOGLE_KEY}\n",
        stderr=f"token {GITHUB_TOKEN}",
        return_code=0,
        tool_input={"env": {"API_KEY": GOOGLE_KEY}},
        error=f"failed with {GOOGLE_KEY}",
    )
    audit.log_exchange(db, task_id="T-9", prompt=f"use {GOOGLE_KEY}", response=f"ok, {GITHUB_TOKEN}")
    dump = json.dumps(audit.task_history(db, "T-9"))
    assert GOOGLE_KEY not in dump and GITHUB_TOKEN not in dump
    assert "[REDACTED:" in dump
    rows = conn.execute(
        "SELECT command_log::text FROM command_log UNION ALL SELECT command_output::text FROM command_output"
    ).fetchall()
    assert rows and all(GOOGLE_KEY not in r[0] and GITHUB_TOKEN not in r[0] for r in rows)
    assert entry.tool_input == {"env": {"API_KEY": "[REDACTED:google-api-key]"}}


def test_huge_and_binary_like_text_is_clipped_and_storable(db: Database) -> None:
    stdout = "HEAD-" + "x" * 5_000_000 + "-TAIL"
    _, output = audit.log_command(db, command="cat big", stdout=stdout, stderr="a\x00b", return_code=0)
    assert output.truncated is True
    assert output.stdout is not None and len(output.stdout) < audit.MAX_OUTPUT_CHARS + 200
    assert output.stdout.startswith("HEAD-") and output.stdout.endswith("-TAIL")
    assert "characters omitted" in output.stdout
    assert output.stdout_bytes == len(stdout)
    assert output.stderr == "a\ufffdb"  # PostgreSQL text cannot hold NUL


def test_logging_under_an_unknown_task_opens_it_outside_the_queue(db: Database) -> None:
    audit.log_exchange(db, task_id="session-42", prompt="hello", agent_id="agent-z")
    task = taskqueue.get_task(db, "session-42")
    assert task.status == "running" and task.owner == "agent-z" and task.lease_expires_at is None
    assert taskqueue.claim_next_task(db, owner="worker", lease_seconds=60) is None


def test_bad_input_is_refused_and_nothing_is_written(db: Database, conn: psycopg.Connection) -> None:
    with pytest.raises(InputError, match="unknown log kind"):
        audit.log_exchange(db, task_id="T-1", prompt="x", kind="chat")
    with pytest.raises(InputError, match="task id must not be empty"):
        audit.log_exchange(db, task_id="  ", prompt="x")
    with pytest.raises(InputError, match="negative"):
        audit.log_usage(db, request_type="generate", prompt_tokens=-1)
    with pytest.raises(NotFound, match="kb tasks list"):
        audit.task_history(db, "nope")
    with pytest.raises(InputError):
        audit.task_history(db, "nope", limit=0)
    assert _count(conn, "command_log") == _count(conn, "usage_log") == _count(conn, "tasks") == 0


def test_the_audit_tables_are_append_only(db: Database, migrated_url: str) -> None:
    """Even for the tables' owner, outside maintenance mode (the agent role has no UPDATE or DELETE at all)."""
    owner = Database(migrated_url, max_size=1)
    project_id = None
    with db.connection() as conn:
        project_id = store.ensure_project(conn, "alpha").id
    entry, _ = audit.log_command(db, command="ls", task_id="T-1", project_id=project_id, stdout="a", return_code=0)
    audit.log_usage(db, request_type="generate", task_id="T-1", command_log_id=entry.id)
    refusals = [
        "UPDATE command_log SET prompt = 'rewritten'",
        "DELETE FROM command_log",
        "UPDATE command_output SET stdout = 'rewritten'",
        "DELETE FROM command_output",
        "UPDATE usage_log SET total_tokens = 99",
        "UPDATE command_log SET task_id = 'T-2'",  # re-pointing a reference is a change too
    ]
    for statement in refusals:
        with owner.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
            pytest.fail(f"not refused: {statement}")
    # deleting what an entry refers to clears the reference (ON DELETE SET NULL), the entry stays
    with db.connection() as conn:
        store.delete_project(conn, "alpha")
    with owner.connection() as conn:  # agents do not delete tasks; the owner may
        conn.execute("DELETE FROM tasks WHERE id = 'T-1'")
    owner.close()
    with db.connection() as conn:
        row = conn.execute("SELECT task_id, project_id, command FROM command_log").fetchone()
        assert row == (None, None, "ls")
        assert _count(conn, "command_output") == _count(conn, "usage_log") == 1


def test_only_the_tables_owner_can_prune_in_maintenance_mode(migrated_url: str, db_url: str) -> None:
    db = Database(migrated_url, max_size=2)  # the owner (here a superuser)
    audit.log_command(db, command="ls", stdout="a", return_code=0)
    role = "kb_test_agent_role"
    with psycopg.connect(db.url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        admin.execute(
            sql.SQL("GRANT SELECT, UPDATE, DELETE ON command_log, command_output TO {}").format(sql.Identifier(role))
        )
    try:
        with db.connection() as conn, pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
            conn.execute("SET kb.audit_maintenance = 'on'")
            conn.execute("DELETE FROM command_log")
        with db.connection() as conn:  # the owner (here a superuser) may prune
            conn.execute("SET LOCAL kb.audit_maintenance = 'on'")
            conn.execute("DELETE FROM command_log")
        with db.connection() as conn:
            assert _count(conn, "command_log") == _count(conn, "command_output") == 0
    finally:
        with psycopg.connect(db.url, autocommit=True) as admin:
            admin.execute(sql.SQL("REVOKE ALL ON command_log, command_output FROM {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
        db.close()


def test_spooled_entries_keep_their_time_and_are_flushed_once(db: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    record = audit.CommandRecord(
        audit.prepare_exchange(task_id="T-7", prompt=None, command=f"deploy --token {GITHUB_TOKEN}", kind="shell"),
        audit.prepare_output(stdout="deployed", return_code=0),
    )
    first = spool_command(spool, record)
    second = spool_command(spool, record)
    assert GITHUB_TOKEN not in first.read_text()  # redacted before it touches the disk
    assert oct(first.stat().st_mode & 0o777) == oct(0o600)
    written_at = load_spooled(first).exchange.executed_at
    (spool / "20000101T000000000000Z-1-garbage.json").write_text("{not json")

    report = flush_spool(db, spool)
    assert (report.flushed, report.rejected, report.remaining) == (2, 1, 0)
    assert pending_files(spool) == [] and len(list(spool.glob("*.bad"))) == 1
    history = audit.task_history(db, "T-7")
    assert len(history) == 2 and history[0]["executed_at"] == written_at.isoformat()  # type: ignore[union-attr]
    assert history[0]["output"] is not None and history[0]["output"]["stdout"] == "deployed"
    assert flush_spool(db, spool).flushed == 0
    assert not second.exists()


def test_a_spool_file_from_before_the_design_names_is_still_flushed(db: Database, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    old = {  # version 1, as written before schema revision 0003
        "version": 1,
        "type": "command",
        "exchange": {
            "kind": "shell",
            "task_id": "T-old",
            "proposed_command": "make",
            "created_at": "2026-01-02T03:04:05+00:00",
        },
        "outcome": {"command_log_id": 0, "success": True, "file_written": ["a.txt", "b.txt"], "created_at": None},
    }
    (spool / "20260102T030405000000Z-1-abcd.json").write_text(json.dumps(old))
    assert flush_spool(db, spool).flushed == 1
    (item,) = audit.task_history(db, "T-old")
    assert item["command"] == "make" and item["executed_at"] == "2026-01-02T03:04:05+00:00"
    assert item["output"] is not None and item["output"]["files_written"] == ["a.txt", "b.txt"]


def test_flushing_into_an_unreachable_database_keeps_the_spool(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    record = audit.CommandRecord(audit.prepare_exchange(task_id=None, prompt="p"), audit.prepare_output(return_code=1))
    path = spool_command(spool, record)
    with Database("postgresql://kb@127.0.0.1:1/kb", max_size=1, timeout=2) as unreachable:
        report = flush_spool(unreachable, spool)
    assert report.flushed == 0 and report.remaining == 1 and report.error
    assert path.exists()
