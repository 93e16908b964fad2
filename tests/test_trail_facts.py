"""Facts learned from the trail, proposed not imposed: what a session's shell commands suggest, below the
context cutoff until a later session proposes the same or someone confirms it.

The bag-of-words embedder where nothing semantic is claimed; the real model and the real context assembly
where a test claims a fact does (not) reach the block for a prompt it answers."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from knowledgebase import store
from knowledgebase.cli import cli
from knowledgebase.config import Settings, get_settings
from knowledgebase.coordination import audit
from knowledgebase.db import Database
from knowledgebase.errors import NotFound
from knowledgebase.facts import (
    CONFIRMED_CONFIDENCE,
    PROPOSAL_STEP,
    PROPOSED_CEILING,
    PROPOSED_CONFIDENCE,
    Fact,
    add_fact,
    confirm_fact,
    forget_fact,
    list_facts,
)
from knowledgebase.gemini.hooks import handle_hook, session_digest
from knowledgebase.gemini.serve import WarmStore
from knowledgebase.ranking import DEFAULT_WEIGHTS
from knowledgebase.search.context import build_context
from knowledgebase.search.trail_facts import command_kind, propose_session_facts
from tests.support import HashingEmbedder, as_agent
from tests.test_hooks import TASK, call, project_dir, services  # noqa: F401  (fixtures)

PROJECT = "shop"


@pytest.fixture
def db_url(db_url: str) -> str:
    """As the hooks reach the store: the least-privilege agent login."""
    return as_agent(db_url)


@pytest.fixture
def shop(db: Database, tmp_path: Path) -> int:
    with db.connection() as conn:
        return store.ensure_project(conn, PROJECT, str(tmp_path / "shop")).id


def session(db: Database, project_id: int, task_id: str, runs: list[tuple[str, int] | tuple[str, int, str]]) -> None:
    """Log ``runs`` (command, exit code[, stderr]) as the shell commands of session task ``task_id``."""
    with db.connection() as conn:
        store.ensure_task(conn, task_id, project_id=project_id)
    for command, code, *stderr in runs:
        audit.log_command(
            db, command=command, task_id=task_id, project_id=project_id, return_code=code, stderr=(stderr or [""])[0]
        )


def proposed(db: Database) -> list[Fact]:
    return list_facts(db, project=PROJECT, proposed_only=True)


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("pytest -q", "test command"),
        ("cd app && uv run pytest tests/", "test command"),
        ("python -m pytest", "test command"),
        ("make test", "test command"),
        ("CI=1 npm test", "test command"),
        ("cargo test --all", "test command"),
        ("go test ./...", "test command"),
        ("tox -e py311", "test command"),
        ("ruff check .", "lint command"),
        (".venv/bin/ruff check src", "lint command"),
        ("npx eslint src", "lint command"),
        ("mypy knowledgebase", "type check command"),
        ("make", "build command"),
        ("npm run build", "build command"),
        ("cargo build --release", "build command"),
        ("make clean", None),
        ("ls -la", None),
        ("python script.py", None),
        ("git status", None),
        ("echo pytest", None),
    ],
)
def test_the_recogniser_reads_the_kind_from_the_command_text(command: str, kind: str | None) -> None:
    assert command_kind(command) == kind


def test_commands_that_worked_are_proposed_below_the_context_cutoff(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    session(
        db,
        shop,
        "gemini-a",
        [("ls", 0), ("pytest -q", 1, "E   AssertionError"), ("pytest -q", 0), ("ruff check .", 0), ("mypy src", 2)],
    )
    learned = propose_session_facts(db, fake_embedder, "gemini-a")
    assert sorted((f.fact_label, f.fact_value) for f in learned) == [
        ("lint command", "ruff check ."),
        ("test command", "pytest -q"),
    ]  # the failed mypy and the look around are not proposed
    for fact in learned:
        assert fact.proposed and fact.proposed_in == ("gemini-a",) and fact.source_kind == "command"
        assert fact.confidence_score == PROPOSED_CONFIDENCE < DEFAULT_WEIGHTS.min_fact_confidence
        assert fact.extracted_from is not None and fact.extracted_from.startswith("trail of gemini-a: ")
    assert {f.id for f in proposed(db)} == {f.id for f in learned}


def test_a_failure_then_another_command_then_success_is_paired_with_its_error(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    session(
        db,
        shop,
        "gemini-a",
        [
            ("npm test", 1, "Error: Cannot find module 'jest'\n    at Module._resolveFilename"),
            ("cat package.json", 0),
            ("npm ci", 0),
            ("git status", 0),
            ("npm test", 0),
            ("make deploy", 2, "make: *** No rule to make target 'deploy'."),  # worked once later: flaky, no pair
            ("make deploy", 0),
        ],
    )
    learned = {f.fact_label: f for f in propose_session_facts(db, fake_embedder, "gemini-a")}
    pair = learned["before `npm test`"]
    assert pair.fact_value == "`npm test` needs `npm ci` first"
    assert pair.extracted_from is not None and "Cannot find module 'jest'" in pair.extracted_from
    assert not any(label.startswith("before `make") for label in learned)


def test_a_command_that_failed_the_same_way_twice_is_a_known_failure(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    error = "ModuleNotFoundError: No module named 'httpx'"
    session(
        db,
        shop,
        "gemini-a",
        [("python -m app", 1, error), ("python -m app", 1, error), ("python -m tool", 1, error)],
    )
    learned = propose_session_facts(db, fake_embedder, "gemini-a")
    assert [(f.fact_label, f.fact_value) for f in learned] == [
        ("known failure of `python -m app`", f"`python -m app` fails with: {error}")
    ]  # the command that failed once is not one


def test_later_sessions_reinforce_a_proposal_once_each_up_to_a_ceiling(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    confidences = []
    for name in ("a", "b", "c", "d", "e"):
        session(db, shop, f"gemini-{name}", [("make test", 0)])
        for _ in range(2):  # SessionEnd twice counts once
            (fact,) = propose_session_facts(db, fake_embedder, f"gemini-{name}")
        confidences.append(fact.confidence_score)
    assert confidences == [
        PROPOSED_CONFIDENCE,
        pytest.approx(PROPOSED_CONFIDENCE + PROPOSAL_STEP),
        pytest.approx(PROPOSED_CONFIDENCE + 2 * PROPOSAL_STEP),
        PROPOSED_CEILING,
        PROPOSED_CEILING,
    ]
    assert confidences[0] < DEFAULT_WEIGHTS.min_fact_confidence <= confidences[1]
    (only,) = proposed(db)
    assert only.proposed_in == ("gemini-a", "gemini-b", "gemini-c", "gemini-d", "gemini-e")
    assert only.confirmations == 1  # proposing is not confirming
    assert "make test" not in session_digest(db, PROJECT)  # however often proposed: not "established"
    confirm_fact(db, only.id)
    assert "make test" in session_digest(db, PROJECT)


def test_a_confirmed_or_forgotten_proposal_is_not_proposed_again(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    session(db, shop, "gemini-a", [("make test", 0), ("ruff check .", 0)])
    test_cmd, lint = sorted(propose_session_facts(db, fake_embedder, "gemini-a"), key=lambda f: f.fact_label)[::-1]
    confirmed = confirm_fact(db, test_cmd.id)
    forget_fact(db, lint.id)
    session(db, shop, "gemini-b", [("make test", 0), ("ruff check .", 0)])
    assert propose_session_facts(db, fake_embedder, "gemini-b") == []
    assert list_facts(db, project=PROJECT) == [confirmed]  # unchanged by session b
    assert proposed(db) == []


def test_a_secret_in_a_command_written_by_plain_sql_is_redacted_before_it_is_stored(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    token = "ghp_" + "a1B2c3D4e5" * 3 + "abcdef"
    with db.connection() as conn:
        store.ensure_task(conn, "gemini-a", project_id=shop)
        (log_id,) = conn.execute(
            "INSERT INTO command_log (task_id, project_id, kind, command) VALUES (%s, %s, 'shell', %s) RETURNING id",
            ("gemini-a", shop, f"GITHUB_TOKEN={token} pytest -q"),
        ).fetchone()
        conn.execute(
            "INSERT INTO command_output (command_log_id, return_code, success) VALUES (%s, 0, true)", (log_id,)
        )
    (fact,) = propose_session_facts(db, fake_embedder, "gemini-a")
    assert fact.fact_label == "test command" and fact.fact_value.endswith(" pytest -q")
    assert "[REDACTED" in fact.fact_value
    with db.connection() as conn:
        row = conn.execute("SELECT fact_value, extracted_from FROM knowledge WHERE id = %s", (fact.id,)).fetchone()
    assert row is not None and token not in row[0] and token not in (row[1] or "")


def test_confirming_a_proposal_makes_it_an_ordinary_confident_fact(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    session(db, shop, "gemini-a", [("make test", 0)])
    (fact,) = propose_session_facts(db, fake_embedder, "gemini-a")
    confirmed = confirm_fact(db, fact.id)
    assert not confirmed.proposed and confirmed.confidence_score >= CONFIRMED_CONFIDENCE
    assert confirmed.confirmations == 2 and proposed(db) == []
    with pytest.raises(NotFound, match=r"fact #987654 does not exist \(list facts with `kb fact list`\)"):
        confirm_fact(db, 987654)


def test_stating_a_proposed_fact_makes_it_an_ordinary_one(
    db: Database, fake_embedder: HashingEmbedder, shop: int
) -> None:
    session(db, shop, "gemini-a", [("make test", 0)])
    (fact,) = propose_session_facts(db, fake_embedder, "gemini-a")
    stated = add_fact(db, fake_embedder, label="Test command", value="make test", project=PROJECT)
    assert (
        stated.id == fact.id and not stated.proposed and stated.confidence_score > DEFAULT_WEIGHTS.min_fact_confidence
    )


def test_kb_fact_list_proposed_and_confirm(
    db: Database, db_url: str, fake_embedder: HashingEmbedder, shop: int
) -> None:
    add_fact(db, fake_embedder, label="deploy", value="make release", project=PROJECT)
    session(db, shop, "gemini-a", [("make test", 0)])
    (fact,) = propose_session_facts(db, fake_embedder, "gemini-a")
    runner = CliRunner()

    def kb(*args: str) -> Any:
        return runner.invoke(cli, [*args, "--database-url", db_url], catch_exceptions=True)

    listed = kb("fact", "list", "--project", PROJECT, "--proposed", "--json")
    assert listed.exit_code == 0, listed.output
    assert [(f["id"], f["proposed"], f["proposed_in"]) for f in json.loads(listed.output)] == [
        (fact.id, True, ["gemini-a"])
    ]
    text = kb("fact", "list", "--project", PROJECT, "--proposed")
    assert "make test" in text.output and "[proposed]" in text.output and "make release" not in text.output
    assert kb("fact", "confirm", str(fact.id)).exit_code == 0
    assert json.loads(kb("fact", "list", "--project", PROJECT, "--proposed", "--json").output) == []
    unknown = kb("fact", "confirm", "987654")
    assert isinstance(unknown.exception, NotFound) and "fact #987654 does not exist" in str(unknown.exception)


def test_a_proposal_reaches_the_context_only_once_reinforced_or_confirmed(
    db: Database,
    real_embedder: Any,
    shop: int,
) -> None:
    def facts_in_context() -> list[int]:
        pack = build_context(db, real_embedder, "how do I run the tests", project=PROJECT, record=False)
        return [item.id for item in pack.items if item.kind == "fact"]

    session(db, shop, "gemini-a", [("tox -e py311", 0), ("ruff check .", 0)])
    learned = {f.fact_label: f for f in propose_session_facts(db, real_embedder, "gemini-a")}
    tox = learned["test command"]
    assert facts_in_context() == []  # proposed: below the cutoff
    session(db, shop, "gemini-b", [("tox -e py311", 0)])
    propose_session_facts(db, real_embedder, "gemini-b")
    assert facts_in_context() == [tox.id]  # a second session proposed it
    # and the same for a confirmation, of a fact only one session proposed
    forget_fact(db, tox.id)
    session(db, shop, "gemini-c", [("nox -s tests", 0)])
    (nox,) = propose_session_facts(db, real_embedder, "gemini-c")
    assert facts_in_context() == []
    confirm_fact(db, nox.id)
    assert facts_in_context() == [nox.id]


def test_session_end_proposes_once_however_often_it_runs(
    services: WarmStore,  # noqa: F811
    db: Database,
    project_dir: Path,  # noqa: F811
) -> None:
    with db.connection() as conn:
        store.ensure_project(conn, PROJECT, str(project_dir))
    handle_hook(services, call("SessionStart", project_dir))
    for command, output in [("make test", "Output: ok\nExit Code: 0"), ("ls", "Output: a\nExit Code: 0")]:
        handle_hook(
            services,
            call(
                "AfterTool",
                project_dir,
                tool_name="run_shell_command",
                tool_input={"command": command},
                tool_response={"llmContent": output},
            ),
        )
    first = handle_hook(services, call("SessionEnd", project_dir, reason="exit"))
    again = handle_hook(services, call("SessionEnd", project_dir, reason="exit"))
    assert "proposed=1" in first.note and "proposed=1" in again.note
    (fact,) = proposed(db)
    assert (fact.fact_label, fact.fact_value, fact.proposed_in) == ("test command", "make test", (TASK,))
    assert fact.confidence_score == PROPOSED_CONFIDENCE
    with db.connection() as conn:
        assert store.get_task(conn, TASK).status == "done"


def test_session_end_during_an_outage_is_spooled_and_its_facts_proposed_when_the_database_is_back(
    settings: Settings,
    db: Database,
    fake_embedder: HashingEmbedder,
    project_dir: Path,  # noqa: F811
) -> None:
    with db.connection() as conn:
        store.ensure_project(conn, PROJECT, str(project_dir))
    down = WarmStore(
        dataclasses.replace(settings, database_url="postgresql://nobody@127.0.0.1:1/none"), embedder=fake_embedder
    )
    try:
        for event in [
            call("SessionStart", project_dir),
            call("AfterTool", project_dir, tool_name="run_shell_command", tool_input={"command": "make test"},
                 tool_response={"llmContent": "Output: ok\nExit Code: 0"}),
            call("SessionEnd", project_dir, reason="exit"),
        ]:  # fmt: skip
            result = handle_hook(down, event)
            assert result.output == {} and "spooled" in result.note, result.note
    finally:
        down.close()
    assert proposed(db) == []
    up = WarmStore(settings, embedder=fake_embedder)
    try:
        up.database()  # reconnecting writes the spool in the background, then proposes
        deadline = time.monotonic() + 30
        while not proposed(db) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        up.close()
    (fact,) = proposed(db)
    assert (fact.fact_label, fact.fact_value, fact.proposed_in) == ("test command", "make test", (TASK,))
    with db.connection() as conn:
        task = store.get_task(conn, TASK)
    assert task.status == "done" and task.result == "Gemini CLI session ended (exit)"
    assert list(settings.spool_dir.glob("*.json")) == []


def test_revision_0007_adds_the_proposal_columns_and_takes_them_away(fresh_database_url: str) -> None:
    import psycopg

    from knowledgebase.db.schema import downgrade, upgrade

    def columns() -> set[str]:
        with psycopg.connect(fresh_database_url) as conn:
            rows = conn.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'knowledge'")
            return {r[0] for r in rows}

    upgrade(fresh_database_url, "0006")
    assert not {"proposed", "proposed_in"} & columns()
    upgrade(fresh_database_url)
    assert {"proposed", "proposed_in", "fact_label", "fact_value", "extracted_from", "confidence_score"} <= columns()
    downgrade(fresh_database_url, "0006")
    assert not {"proposed", "proposed_in"} & columns()


def test_kb_exec_leaves_a_spooled_closing_to_kb_audit_flush_which_proposes_the_sessions_facts(
    settings: Settings,
    db: Database,
    db_url: str,
    fake_embedder: HashingEmbedder,
    shop: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import knowledgebase.gemini.warm_embedder
    from knowledgebase.coordination import taskqueue
    from knowledgebase.coordination.spool import SessionClosing, flush_spool, pending_files, spool_entry

    taskqueue.open_task(db, "gemini-a", owner="gemini-session:a", project_id=shop)
    session(db, shop, "gemini-a", [("make test", 0)])
    spool_entry(settings.spool_dir, SessionClosing("gemini-a", "gemini-session:a", "Gemini CLI session ended (exit)"))
    report = flush_spool(db, settings.spool_dir, closings=False)  # as kb exec flushes: it cannot propose
    assert (report.flushed, report.remaining, report.closed) == (0, 1, ())
    monkeypatch.setattr(knowledgebase.gemini.warm_embedder, "query_embedder", lambda settings: fake_embedder)
    get_settings.cache_clear()  # the CLI reads the environment once per process
    try:
        result = CliRunner().invoke(
            cli, ["audit", "flush", "--json", "--database-url", db_url], env={"KB_HOME": str(settings.home)}
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) | {"error": None} == {
        "flushed": 1, "rejected": 0, "remaining": 0, "error": None, "closed": ["gemini-a"], "proposed_facts": 1
    }  # fmt: skip
    assert pending_files(settings.spool_dir) == []
    (fact,) = proposed(db)
    assert (fact.fact_value, fact.proposed_in) == ("make test", ("gemini-a",))
    with db.connection() as conn:
        assert store.get_task(conn, "gemini-a").status == "done"
