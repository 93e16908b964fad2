"""Hook handlers against the real database: what each Gemini CLI event logs and returns."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.coordination import audit
from knowledgebase.db import Database
from knowledgebase.errors import InputError
from knowledgebase.facts import add_fact, list_facts
from knowledgebase.gemini import session as gemini_session
from knowledgebase.gemini.hooks import HookCall, handle_hook
from knowledgebase.gemini.serve import WarmStore
from tests.support import HashingEmbedder, as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)

SESSION = "0ba55aab-067b-41ab-8c43-e6ef7fee655e"
TASK = f"gemini-{SESSION}"
GEMINI_PID = os.getpid()  # a live process: the registry sweeps entries of dead ones


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / ".git").mkdir(parents=True)
    (root / "src").mkdir()
    return root


@pytest.fixture
def services(settings: Settings, fake_embedder: HashingEmbedder) -> Iterator[WarmStore]:
    warm = WarmStore(settings, embedder=fake_embedder)
    yield warm
    warm.close()


def call(event: str, project_dir: Path, **payload: Any) -> HookCall:
    base = {
        "session_id": SESSION,
        "transcript_path": str(project_dir / "transcript.jsonl"),
        "cwd": str(project_dir / "src"),
        "hook_event_name": event,
        "timestamp": "2026-11-27T07:58:35.029Z",
    }
    return HookCall(event=event, payload={**base, **payload}, gemini_pid=GEMINI_PID)


def log_rows(db: Database) -> list[store.CommandLogEntry]:
    with db.connection() as conn:
        return store.list_command_log(conn, task_id=TASK)


def test_session_start_opens_the_task_and_returns_a_digest(
    services: WarmStore, db: Database, fake_embedder: HashingEmbedder, project_dir: Path
) -> None:
    with db.connection() as conn:
        store.ensure_project(conn, "shop", str(project_dir))
    add_fact(db, fake_embedder, label="test command", value="make test", project="shop", confidence=0.95)
    add_fact(db, fake_embedder, label="decision: http client", value="use httpx, not requests", project="shop")
    add_fact(db, fake_embedder, label="hunch", value="the cache is flaky", project="shop", confidence=0.2)
    add_fact(db, fake_embedder, label="other", value="not this project", project="elsewhere", confidence=0.99)
    add_fact(db, fake_embedder, label="house rule", value="every project uses UTC", confidence=0.9)

    result = handle_hook(services, call("SessionStart", project_dir, source="startup"))

    digest = result.output["hookSpecificOutput"]["additionalContext"]
    assert result.output["hookSpecificOutput"]["hookEventName"] == "SessionStart"
    assert "make test" in digest and "use httpx" in digest and "every project uses UTC" in digest
    assert "flaky" not in digest and "not this project" not in digest
    assert "<" not in digest  # Markdown only: Gemini CLI escapes tags inside hook_context
    with db.connection() as conn:
        task = store.get_task(conn, TASK)
    assert task.status == "running" and task.project_id is not None
    assert task.context["cwd"] == str(project_dir / "src")
    info = gemini_session.session_for_process(services.settings.home, GEMINI_PID)
    assert info is not None and info.task_id == TASK and info.project == "shop"


def test_session_end_closes_and_resume_reopens_the_task(services: WarmStore, db: Database, project_dir: Path) -> None:
    handle_hook(services, call("SessionStart", project_dir))
    end = handle_hook(services, call("SessionEnd", project_dir, reason="exit"))
    assert end.output == {}
    with db.connection() as conn:
        assert store.get_task(conn, TASK).status == "done"
    assert gemini_session.session_for_process(services.settings.home, GEMINI_PID) is None
    handle_hook(services, call("SessionStart", project_dir, source="resume"))
    with db.connection() as conn:
        task = store.get_task(conn, TASK)
    assert task.status == "running" and task.context["source"] == "resume"


def test_log_rows_name_the_agent_kb_agent_id_names(services: WarmStore, db: Database, project_dir: Path) -> None:
    shell = call("AfterTool", project_dir, tool_name="run_shell_command", tool_input={"command": "make test"},
                 tool_response={"llmContent": "Output: ok\nExit Code: 0"})  # fmt: skip
    handle_hook(services, shell)
    handle_hook(services, dataclasses.replace(shell, agent_id="agent-one"))
    assert [r.agent_id for r in log_rows(db)] == [f"gemini-cli@{os.uname().nodename}:{GEMINI_PID}", "agent-one"]


def test_before_agent_strips_hook_context_logs_the_prompt_and_returns_ranked_context(
    services: WarmStore, db: Database, fake_embedder: HashingEmbedder, project_dir: Path
) -> None:
    with db.connection() as conn:
        store.ensure_project(conn, "shop", str(project_dir))
    add_fact(
        db,
        fake_embedder,
        label="payment retries",
        value="payments retry three times with backoff",
        project="shop",
        confidence=0.9,
    )
    prompt = "<hook_context>digest from SessionStart</hook_context>\n\nhow do payment retries work?"

    result = handle_hook(services, call("BeforeAgent", project_dir, prompt=prompt))

    context = result.output["hookSpecificOutput"]["additionalContext"]
    assert result.output["hookSpecificOutput"]["hookEventName"] == "BeforeAgent"
    assert "payments retry three times" in context
    (row,) = log_rows(db)
    assert row.kind == "prompt" and row.prompt == "how do payment retries work?" and row.response is None
    assert row.session_id == SESSION and row.agent_mode == "gemini-cli"
    with db.connection() as conn:
        (record,) = store.list_context_records(conn, task_id=TASK)
    assert record.prompt == "how do payment retries work?" and "payments retry" in record.text


def test_before_agent_with_an_empty_store_returns_nothing_but_logs(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    result = handle_hook(services, call("BeforeAgent", project_dir, prompt="hello there"))
    assert result.output == {}
    assert [r.prompt for r in log_rows(db)] == ["hello there"]


def test_prompts_and_commands_are_redacted_before_storing(services: WarmStore, db: Database, project_dir: Path) -> None:
    key = "AIza" + "B" * 35
    handle_hook(services, call("BeforeAgent", project_dir, prompt=f"use key {key} please"))
    handle_hook(
        services,
        call(
            "AfterTool",
            project_dir,
            tool_name="run_shell_command",
            tool_input={"command": f"curl -H 'x-goog-api-key: {key}' example"},
            tool_response={"llmContent": f"Output: echo {key}"},
        ),
    )
    rows = log_rows(db)
    stored = json.dumps([r.__dict__ for r in rows], default=str)
    with db.connection() as conn:
        stored += json.dumps([o.__dict__ for r in rows for o in store.list_command_output(conn, r.id)], default=str)
    assert key not in stored and "[REDACTED:google-api-key]" in stored


def test_tool_input_argv_flags_and_secret_keys_are_redacted_before_storing(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    password, token = "hunter2-" "EXAMPLE", "tok-" "0123456789"
    handle_hook(
        services,
        call(
            "AfterTool",
            project_dir,
            tool_name="run_script",
            tool_input={"argv": ["deploy", "--password", password, f"--api-key={token}"], "env": {"NPM_TOKEN": token}},
            tool_response={"llmContent": "done"},
        ),
    )
    handle_hook(
        services,
        call(
            "AfterTool",
            project_dir,
            tool_name="run_shell_command",
            tool_input={"command": f"API_TOKEN={token} ./deploy --password '{password}'"},
            tool_response={"llmContent": f"Output: {'x' * 9000} aws_secret_access_key = {token}"},
        ),
    )
    rows = log_rows(db)
    stored = json.dumps([r.__dict__ for r in rows], default=str)
    with db.connection() as conn:
        stored += json.dumps([o.__dict__ for r in rows for o in store.list_command_output(conn, r.id)], default=str)
    assert password not in stored and token not in stored
    assert rows[0].tool_input["argv"][:3] == ["deploy", "--password", "[REDACTED:secret]"]


def test_after_tool_logs_a_shell_command_with_output_and_exit_code(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    content = "<untrusted_context>\nOutput: hello\nerr\nExit Code: 3\nProcess Group PGID: 7762\n</untrusted_context>"
    result = handle_hook(
        services,
        call(
            "AfterTool",
            project_dir,
            tool_name="run_shell_command",
            tool_input={"command": "echo hello; echo err >&2; exit 3", "description": "try"},
            tool_response={"llmContent": content, "returnDisplay": "hello\nerr"},
        ),
    )
    assert result.output == {}
    (row,) = log_rows(db)
    assert row.kind == "shell" and row.command == "echo hello; echo err >&2; exit 3"
    assert row.tool_name == "run_shell_command" and row.tool_input["description"] == "try"
    with db.connection() as conn:
        (output,) = store.list_command_output(conn, row.id)
    assert output.stdout == "hello\nerr" and output.return_code == 3 and not output.success


def test_after_tool_success_and_huge_output_is_clipped_with_its_size(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    huge = "".join(f"line {i}\n" for i in range(400_000))  # about 4.5 MB
    handle_hook(
        services,
        call(
            "AfterTool",
            project_dir,
            tool_name="run_shell_command",
            tool_input={"command": "seq"},
            tool_response={"llmContent": f"Output: {huge}FINAL LINE\nProcess Group PGID: 1"},
        ),
    )
    (row,) = log_rows(db)
    with db.connection() as conn:
        (output,) = store.list_command_output(conn, row.id)
    assert output.success and output.return_code == 0 and output.truncated
    assert output.stdout is not None and len(output.stdout) < 100_000
    assert output.stdout.startswith("line 0\n") and output.stdout.endswith("FINAL LINE")
    assert output.stdout_bytes == len((huge + "FINAL LINE").encode())


def test_after_tool_logs_other_tools_with_a_result_summary(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    handle_hook(
        services,
        call(
            "AfterTool",
            project_dir,
            tool_name="write_file",
            tool_input={"file_path": "/x/big.txt", "content": "x" * 100_000},
            tool_response={"llmContent": "Successfully created and wrote to new file: /x/big.txt."},
        ),
    )
    handle_hook(
        services,
        call(
            "AfterTool",
            project_dir,
            tool_name="read_file",
            tool_input={"file_path": "/nope"},
            tool_response={"llmContent": "File not found.", "error": {"message": "File not found: /nope"}},
        ),
    )
    wrote, failed = log_rows(db)
    assert wrote.kind == "tool" and wrote.tool_name == "write_file"
    assert wrote.response == "Successfully created and wrote to new file: /x/big.txt."
    assert len(wrote.tool_input["content"]) < 10_000
    with db.connection() as conn:
        assert store.list_command_output(conn, wrote.id)[0].success
        bad = store.list_command_output(conn, failed.id)[0]
    assert not bad.success and bad.error == "File not found: /nope"


def _transcript(path: Path) -> Path:
    records = [
        {"sessionId": SESSION, "kind": "main"},
        {"$set": {"messages": [{"id": "ctx", "type": "user", "content": [{"text": "<session_context>"}]}]}},
        {"id": "u1", "type": "user", "content": [{"text": "first prompt"}]},
        {
            "id": "g1",
            "type": "gemini",
            "content": "old",
            "tokens": {"input": 9, "output": 9, "total": 18},
            "model": "gemini-2.5-flash",
        },
        {"id": "u2", "type": "user", "content": [{"text": "list files"}]},
        {
            "id": "g2",
            "type": "gemini",
            "content": "",
            "tokens": {"input": 100, "output": 20, "total": 120},
            "model": "gemini-2.5-flash",
        },
        {"$set": {"lastUpdated": "now"}},
        {
            "id": "g2",
            "type": "gemini",
            "content": "",
            "tokens": {"input": 100, "output": 20, "total": 120},
            "model": "gemini-2.5-flash",
            "toolCalls": [{"name": "run_shell_command"}],
        },
        {"id": "u3", "type": "user", "content": [{"functionResponse": {"name": "run_shell_command"}}]},
        {
            "id": "g3",
            "type": "gemini",
            "content": "Done.",
            "tokens": {"input": 150, "output": 5, "thoughts": 7, "total": 162},
            "model": "gemini-2.5-flash",
        },
    ]
    path.write_text("\n".join(json.dumps(r) for r in records) + '\n{"id": "partial", "ty')
    return path


def test_after_agent_logs_the_response_and_the_turns_token_usage(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    transcript = _transcript(project_dir / "transcript.jsonl")
    handle_hook(services, call("BeforeAgent", project_dir, prompt="list files"))
    result = handle_hook(
        services,
        call("AfterAgent", project_dir, prompt="list files", prompt_response="Done.", transcript_path=str(transcript)),
    )
    assert result.output == {}
    prompt_row, response_row = log_rows(db)
    assert prompt_row.prompt == "list files" and response_row.response == "Done."
    with db.connection() as conn:
        usage = store.list_usage(conn, task_id=TASK)
    assert [(u.prompt_tokens, u.response_tokens, u.total_tokens) for u in usage] == [(100, 20, 120), (150, 12, 162)]
    assert {u.command_log_id for u in usage} == {response_row.id}
    assert {u.model for u in usage} == {"gemini-2.5-flash"}
    history = audit.task_history(db, TASK)
    assert history[-1]["usage"] is not None and history[-1]["usage"]["total_tokens"] == 282


def test_after_agent_without_a_transcript_still_logs_the_response(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    result = handle_hook(
        services,
        call(
            "AfterAgent",
            project_dir,
            prompt="p",
            prompt_response="answer",
            transcript_path=str(project_dir / "missing.jsonl"),
        ),
    )
    assert "transcript=not-found" in result.note
    assert [r.response for r in log_rows(db)] == ["answer"]
    with db.connection() as conn:
        assert store.list_usage(conn, task_id=TASK) == []


def test_unknown_event_and_missing_session_id_are_input_errors(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    with pytest.raises(InputError, match="unknown hook event"):
        handle_hook(services, call("PreCompress", project_dir))
    with pytest.raises(InputError, match="session_id"):
        handle_hook(services, HookCall(event="BeforeAgent", payload={"prompt": "hi"}))
    assert log_rows(db) == []


def test_project_resolution_by_root_then_repository_name(db: Database, project_dir: Path, tmp_path: Path) -> None:
    with db.connection() as conn:
        assert gemini_session.resolve_project(conn, str(project_dir / "src")) is None
        store.ensure_project(conn, "shop")  # indexed elsewhere (another clone): found by the repository's name
        found = gemini_session.resolve_project(conn, str(project_dir / "src"))
        assert found is not None and found.name == "shop"
        store.ensure_project(conn, "inner", str(project_dir / "src"))
        found = gemini_session.resolve_project(conn, str(project_dir / "src" / "deep"))
        assert found is not None and found.name == "inner"
        explicit = gemini_session.resolve_project(conn, str(tmp_path), "named")
        assert explicit is not None and explicit.name == "named"
    assert [f.fact_label for f in list_facts(db)] == []


def test_a_shell_command_is_spooled_while_the_database_is_down_and_written_when_it_is_back(
    settings: Settings, db: Database, fake_embedder: HashingEmbedder, project_dir: Path
) -> None:
    down = WarmStore(
        dataclasses.replace(settings, database_url="postgresql://nobody@127.0.0.1:1/none"), embedder=fake_embedder
    )
    result = handle_hook(
        down,
        call(
            "AfterTool",
            project_dir,
            tool_name="run_shell_command",
            tool_input={"command": "make deploy"},
            tool_response={"llmContent": "Output: deployed\nExit Code: 3"},
        ),
    )
    assert result.output == {} and "spooled" in result.note
    assert len(list(settings.spool_dir.glob("*.json"))) == 1
    assert log_rows(db) == []

    up = WarmStore(settings, embedder=fake_embedder)
    try:
        up.database()  # reconnecting writes the spool in the background
        deadline = time.monotonic() + 30
        while not log_rows(db) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        up.close()
    (row,) = log_rows(db)
    assert row.kind == "shell" and row.command == "make deploy" and row.session_id == SESSION
    with db.connection() as conn:
        (output,) = store.list_command_output(conn, row.id)
    assert output.stdout == "deployed" and output.return_code == 3
    assert list(settings.spool_dir.glob("*.json")) == []


def test_a_huge_prompt_is_logged_clipped_and_searched_by_its_head(
    services: WarmStore, db: Database, project_dir: Path
) -> None:
    prompt = "explain the payment retries " + "and more words " * 200_000  # about 3 MB
    result = handle_hook(services, call("BeforeAgent", project_dir, prompt=prompt))
    assert result.output == {}
    (row,) = log_rows(db)
    assert row.prompt is not None and row.prompt.startswith("explain the payment retries")
    assert len(row.prompt) < 300_000
    with db.connection() as conn:
        (record,) = store.list_context_records(conn, task_id=TASK)
    assert len(record.prompt) <= 4000
