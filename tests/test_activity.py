"""Who is doing what: the other agents' running tasks and recently changed files, in the SessionStart
digest, in BeforeAgent's context (a note on a chunk of a file another agent changed), `kb status`,
`kb projects show` and the MCP tools `active_work` and `recent_failures` (bag-of-words embedder:
nothing here claims semantic behaviour)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from knowledgebase import store
from knowledgebase.cli import cli
from knowledgebase.config import Settings, get_settings
from knowledgebase.coordination import audit, taskqueue
from knowledgebase.db import Database
from knowledgebase.errors import ConfigError, InputError
from knowledgebase.gemini import session as gemini_session
from knowledgebase.gemini.hooks import HookCall, handle_hook
from knowledgebase.gemini.mcp_server import McpServices
from knowledgebase.gemini.serve import WarmStore
from knowledgebase.search.activity import HEADING, active_work, relative_path
from knowledgebase.search.context import build_context
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder
from tests.test_mcp_server import call as mcp_call

MINE = "gemini-mine"
THEIRS = "gemini-theirs"


@pytest.fixture
def shop(db: Database, fake_embedder: HashingEmbedder, tmp_path: Path) -> Path:
    """Project shop (SOURCES indexed) with a real folder as its root, holding the same files (the warm
    process's background populate at SessionStart keeps the index in line with that folder)."""
    root = (tmp_path / "shop").resolve()
    (root / ".git").mkdir(parents=True)
    (root / "src").mkdir()
    for rel, text in SOURCES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    with db.connection() as conn:
        index_files(conn, fake_embedder, "shop", SOURCES)
        store.ensure_project(conn, "shop", str(root))
    return root


def project_id(db: Database, name: str = "shop") -> int:
    with db.connection() as conn:
        return store.get_project(conn, name).id


def other_agent_writes(
    db: Database, root: Path, path: str, *, task: str = THEIRS, agent: str | None = "gemini-cli@host:42"
) -> int:
    """Another agent's session (task ``task``, running) wrote ``root/path`` with write_file."""
    with db.connection() as conn:
        taskqueue.open_task(conn, task, owner=f"gemini-cli:{task}", project_id=project_id(db), title="fix the mailer")
    entry, _ = audit.log_command(
        db,
        command="",
        kind="tool",
        tool_name="write_file",
        task_id=task,
        agent_id=agent,
        project_id=project_id(db),
        files_written=[str(root / path)],
        return_code=None,
        success=True,
    )
    return entry.id


def age(db: Database, minutes: int) -> None:
    """Make every logged row, output and task ``minutes`` older."""
    with db.connection() as conn:
        shift = {"m": minutes}
        conn.execute("SET LOCAL kb.audit_maintenance = on")  # the trail is append-only for everyone else
        conn.execute("UPDATE command_log SET executed_at = executed_at - make_interval(mins => %(m)s)", shift)
        conn.execute("UPDATE command_output SET created_at = created_at - make_interval(mins => %(m)s)", shift)
        conn.execute(
            "UPDATE tasks SET updated_at = updated_at - make_interval(mins => %(m)s),"
            " started_at = started_at - make_interval(mins => %(m)s)",
            shift,
        )


def test_nothing_going_on_is_empty_and_a_bad_window_is_refused(db: Database, shop: Path) -> None:
    work = active_work(db, "shop", exclude_task_id=MINE)
    assert work.empty and work.to_json()["tasks"] == [] and work.to_json()["changed_files"] == []
    for bad in (0, -5, True, "30"):
        with pytest.raises(InputError, match="positive number of minutes"):
            active_work(db, "shop", minutes=bad)  # type: ignore[arg-type]


def test_other_agents_running_tasks_and_changed_files_within_the_window(db: Database, shop: Path) -> None:
    other_agent_writes(db, shop, "src/mail.py")
    other_agent_writes(db, shop, "src/db.py", task=MINE)  # my own session: not "another agent"
    work = active_work(db, "shop", exclude_task_id=MINE, minutes=30)
    assert [t.id for t in work.tasks] == [THEIRS] and work.tasks[0].title == "fix the mailer"
    assert work.tasks[0].owner == f"gemini-cli:{THEIRS}" and work.tasks[0].started_at is not None
    assert [(c.path, c.agent_id, c.task_id) for c in work.changes] == [("src/mail.py", "gemini-cli@host:42", THEIRS)]
    everyone = active_work(db, "shop", minutes=30)  # no session to exclude: kb status, kb projects show
    assert {c.path for c in everyone.changes} == {"src/mail.py", "src/db.py"}
    age(db, 45)
    assert active_work(db, "shop", exclude_task_id=MINE, minutes=30).empty
    assert not active_work(db, "shop", exclude_task_id=MINE, minutes=60).empty


def test_a_finished_task_or_an_expired_lease_is_not_active(db: Database, shop: Path) -> None:
    other_agent_writes(db, shop, "src/mail.py")
    with db.connection() as conn:
        conn.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 minute' WHERE id = %s", (THEIRS,))
    assert active_work(db, "shop", exclude_task_id=MINE).tasks == ()
    with db.connection() as conn:
        conn.execute("UPDATE tasks SET lease_expires_at = NULL, status = 'done' WHERE id = %s", (THEIRS,))
    work = active_work(db, "shop", exclude_task_id=MINE)
    assert work.tasks == () and [c.path for c in work.changes] == ["src/mail.py"]  # the change stays recent


def test_a_missing_agent_id_and_paths_outside_the_root(db: Database, shop: Path) -> None:
    other_agent_writes(db, shop, "src/mail.py", agent=None)
    work = active_work(db, "shop", exclude_task_id=MINE)
    assert work.changes[0].agent_id is None
    from knowledgebase.search.activity import render_active_work

    assert "by an unknown agent" in render_active_work(work)
    assert relative_path("/elsewhere/x.py", str(shop)) == "/elsewhere/x.py"
    assert relative_path(f"{shop}/src/../src/a.py", str(shop)) == "src/a.py"
    assert relative_path(f"{shop}x/a.py", str(shop)) == f"{shop}x/a.py"  # a sibling folder, not under the root
    assert relative_path("src/a.py", None) == "src/a.py" and relative_path("  ", str(shop)) == ""


def test_context_flags_a_chunk_another_agent_changed_and_says_who(
    db: Database, fake_embedder: HashingEmbedder, shop: Path
) -> None:
    prompt = "send_invoice_email to the customer"
    before = build_context(db, fake_embedder, prompt, project="shop", activity=active_work(db, "shop"))
    assert "another agent" not in before.text and HEADING not in before.text
    other_agent_writes(db, shop, "src/mail.py")
    work = active_work(db, "shop", exclude_task_id=MINE)
    pack = build_context(db, fake_embedder, prompt, project="shop", activity=work)
    heading = pack.text.index("### src/mail.py:")
    note = pack.text[heading:].split("\n")[2]
    assert note.startswith("**Note:** `src/mail.py` changed") and "by gemini-cli@host:42" in note
    assert ">" not in note  # Gemini CLI escapes it inside hook_context: the model would read "&gt;"
    assert HEADING in pack.text and pack.token_count <= pack.budget
    assert any(i.kind == "activity" for i in pack.items)
    with db.connection() as conn:
        record = next(r for r in store.list_context_records(conn) if r.id == pack.record_id)
    assert any(i["kind"] == "activity" for i in record.items)
    unrelated = build_context(db, fake_embedder, "slugify a title", project="shop", activity=work)
    assert "src/mail.py" not in unrelated.text  # the change does not concern this prompt
    for budget in (30, 80, 200):
        small = build_context(db, fake_embedder, prompt, project="shop", activity=work, budget=budget, record=False)
        assert small.token_count <= budget and fake_embedder.count_tokens(small.text) == small.token_count


def test_context_names_a_running_task_only_when_its_title_is_close_to_the_prompt(
    db: Database, fake_embedder: HashingEmbedder, shop: Path
) -> None:
    with db.connection() as conn:
        taskqueue.open_task(conn, THEIRS, owner="agent-b", project_id=project_id(db), title="slugify a title for urls")
    work = active_work(db, "shop", exclude_task_id=MINE)
    assert [t.id for t in work.tasks] == [THEIRS] and work.changes == ()
    close = build_context(db, fake_embedder, "slugify a title", project="shop", activity=work, record=False)
    assert HEADING in close.text and f"task `{THEIRS}` (slugify a title for urls) held by agent-b" in close.text
    far = build_context(db, fake_embedder, "send_invoice_email customer", project="shop", activity=work, record=False)
    assert HEADING not in far.text and THEIRS not in far.text


# --------------------------------------------------------------------------------------------------
# Hooks: two Gemini CLI sessions on one project
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def services(settings: Settings, fake_embedder: HashingEmbedder) -> Iterator[WarmStore]:
    warm = WarmStore(settings, embedder=fake_embedder)
    yield warm
    warm.close()


def hook(event: str, root: Path, session: str, **payload: Any) -> HookCall:
    base = {"session_id": session, "cwd": str(root / "src"), "hook_event_name": event}
    return HookCall(event=event, payload={**base, **payload}, gemini_pid=os.getpid())


def test_two_sessions_see_each_other_in_digest_and_context(services: WarmStore, db: Database, shop: Path) -> None:
    first, second = "11111111-aaaa", "22222222-bbbb"
    handle_hook(services, hook("SessionStart", shop, first))
    write = hook(
        "AfterTool",
        shop,
        first,
        tool_name="write_file",
        tool_input={"file_path": str(shop / "src/mail.py"), "content": "def send_invoice_email(): ..."},
        tool_response={"llmContent": "Successfully overwrote file"},
    )
    handle_hook(services, write)
    with db.connection() as conn:
        (row,) = [r for r in store.list_command_log(conn, task_id=f"gemini-{first}") if r.tool_name == "write_file"]
        assert store.list_command_output(conn, row.id)[0].files_written == [str(shop / "src/mail.py")]

    digest = handle_hook(services, hook("SessionStart", shop, second)).output["hookSpecificOutput"]["additionalContext"]
    assert HEADING in digest and f"task `gemini-{first}`" in digest and "`src/mail.py` changed" in digest
    own = handle_hook(services, hook("SessionStart", shop, first, source="resume")).output
    own_text = own.get("hookSpecificOutput", {}).get("additionalContext", "")
    assert "src/mail.py" not in own_text  # the agent's own change is not "another agent"'s

    context = handle_hook(services, hook("BeforeAgent", shop, second, prompt="how is send_invoice_email sent?"))
    text = context.output["hookSpecificOutput"]["additionalContext"]
    assert "**Note:** `src/mail.py` changed" in text and "(another agent)" in text


def test_a_failed_write_records_no_file(services: WarmStore, db: Database, shop: Path) -> None:
    failed = hook(
        "AfterTool",
        shop,
        "33333333-cccc",
        tool_name="replace",
        tool_input={"file_path": str(shop / "src/mail.py"), "old_string": "a", "new_string": "b"},
        tool_response={"llmContent": "failed", "error": {"message": "0 occurrences found"}},
    )
    handle_hook(services, failed)
    assert active_work(db, "shop").changes == ()


# --------------------------------------------------------------------------------------------------
# kb status, kb projects show, MCP
# --------------------------------------------------------------------------------------------------


def test_kb_status_and_projects_show_name_the_agents_at_work(
    db_url: str, db: Database, shop: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    env = {"KB_HOME": str(tmp_path / "home"), "KB_DATABASE_URL": db_url}
    monkeypatch.chdir(shop / "src")
    quiet = runner.invoke(cli, ["projects", "show"], env=env, catch_exceptions=False).stdout
    assert "no other agent active in the last 30 min" in quiet
    other_agent_writes(db, shop, "src/mail.py")
    for args in (["projects", "show"], ["status"]):
        text = runner.invoke(cli, args, env=env, catch_exceptions=False).stdout
        heading = "Agents at work" if args == ["status"] else "Other agents at work"
        assert heading in text and f"task `{THEIRS}` (fix the mailer)" in text, text
        assert "`src/mail.py` changed" in text and "by gemini-cli@host:42" in text
        data = json.loads(runner.invoke(cli, [*args, "--json"], env=env, catch_exceptions=False).stdout)
        assert [t["id"] for t in data["active_work"]["tasks"]] == [THEIRS]
        assert data["active_work"]["changed_files"][0]["path"] == "src/mail.py"
    age(db, 5)
    get_settings.cache_clear()  # the CLI reads the environment once per process
    try:
        narrow = runner.invoke(cli, ["projects", "show"], env={**env, "KB_ACTIVE_MINUTES": "1"}, catch_exceptions=False)
        assert "no other agent active in the last 1 min" in narrow.stdout
        get_settings.cache_clear()
        wide = runner.invoke(cli, ["projects", "show"], env={**env, "KB_ACTIVE_MINUTES": "10"}, catch_exceptions=False)
        assert "fix the mailer" in wide.stdout
    finally:
        get_settings.cache_clear()


def test_the_activity_window_setting() -> None:
    assert Settings.from_env({"KB_HOME": "/tmp/x"}).active_minutes == 30
    assert Settings.from_env({"KB_HOME": "/tmp/x", "KB_ACTIVE_MINUTES": "5"}).active_minutes == 5
    for bad in ("0", "soon"):
        with pytest.raises(ConfigError, match="KB_ACTIVE_MINUTES"):
            Settings.from_env({"KB_HOME": "/tmp/x", "KB_ACTIVE_MINUTES": bad})


@pytest.fixture
def mcp(settings: Settings, fake_embedder: HashingEmbedder, db: Database, shop: Path) -> Iterator[McpServices]:
    gemini_session.register_session(
        settings.home, gemini_session.SessionInfo("mine", MINE, "shop", str(shop), gemini_pid=os.getpid())
    )
    services = McpServices(settings, cwd=str(shop), parent_pid=os.getpid(), embedder=fake_embedder)
    yield services
    services.close()


def test_mcp_active_work_and_recent_failures(mcp: McpServices, db: Database, shop: Path) -> None:
    error, empty = mcp_call(mcp, "active_work")
    assert not error and empty["tasks"] == [] and empty["changed_files"] == []
    assert mcp_call(mcp, "recent_failures") == (False, [])
    other_agent_writes(db, shop, "src/mail.py")
    error, work = mcp_call(mcp, "active_work", minutes=10)
    assert not error and [t["id"] for t in work["tasks"]] == [THEIRS]
    assert work["changed_files"][0]["path"] == "src/mail.py"
    error, message = mcp_call(mcp, "active_work", minutes=0)
    assert error and "positive number of minutes" in message
    pid = project_id(db)
    audit.log_command(db, command="npm test", task_id=THEIRS, project_id=pid, return_code=1, stderr="npm ERR! no ci")
    audit.log_command(db, command="npm ci && npm test", task_id=THEIRS, project_id=pid, return_code=0)
    error, failures = mcp_call(mcp, "recent_failures", limit=5)
    assert not error and [f["command"] for f in failures] == ["npm test"]
    assert (
        failures[0]["error_line"] == "npm ERR! no ci" and failures[0]["then_worked"]["command"] == "npm ci && npm test"
    )
