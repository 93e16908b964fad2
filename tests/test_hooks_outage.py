"""Hook events that must not be lost: during a database outage, with text PostgreSQL cannot hold,
and with a transcript that is not a regular file."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.facts import add_fact
from knowledgebase.gemini.hooks import handle_hook
from knowledgebase.gemini.serve import WarmStore
from tests.support import HashingEmbedder
from tests.test_hooks import TASK, _transcript, call, log_rows, project_dir, services  # noqa: F401  (fixtures)


def wait_for_rows(db: Database, count: int) -> None:
    deadline = time.monotonic() + 30
    while len(log_rows(db)) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_every_event_is_spooled_during_an_outage_and_written_in_order_with_its_time(
    settings: Settings,
    db: Database,
    fake_embedder: HashingEmbedder,
    project_dir: Path,  # noqa: F811
) -> None:
    down = WarmStore(
        dataclasses.replace(settings, database_url="postgresql://nobody@127.0.0.1:1/none"), embedder=fake_embedder
    )
    transcript = _transcript(project_dir / "transcript.jsonl")
    events = [
        call("SessionStart", project_dir, source="startup"),
        call("BeforeAgent", project_dir, prompt="deploy the shop"),
        call("AfterTool", project_dir, tool_name="read_file", tool_input={"path": "Makefile"},
             tool_response={"llmContent": "deploy: build"}),
        call("AfterTool", project_dir, tool_name="run_shell_command", tool_input={"command": "make deploy"},
             tool_response={"llmContent": "Output: deployed\nExit Code: 3"}),
        call("AfterAgent", project_dir, prompt="deploy the shop", prompt_response="Deployed, with exit code 3.",
             transcript_path=str(transcript)),
    ]  # fmt: skip
    started = datetime.now(UTC)
    try:
        for event in events:
            result = handle_hook(down, event)
            assert result.output == {} and "spooled" in result.note, result.note
            time.sleep(0.01)
    finally:
        down.close()
    assert len(list(settings.spool_dir.glob("*.json"))) == len(events)
    assert log_rows(db) == []
    time.sleep(0.2)  # the rows must carry the times of the events, not of the flush
    flushed_after = datetime.now(UTC)

    up = WarmStore(settings, embedder=fake_embedder)
    try:
        up.database()  # reconnecting writes the spool in the background
        wait_for_rows(db, 4)
    finally:
        up.close()
    rows = log_rows(db)
    assert [(r.kind, r.tool_name) for r in rows] == [
        ("prompt", None), ("tool", "read_file"), ("shell", "run_shell_command"), ("prompt", None)
    ]  # fmt: skip
    assert rows[0].prompt == "deploy the shop" and rows[1].response == "deploy: build"
    assert rows[2].command == "make deploy" and rows[3].response == "Deployed, with exit code 3."
    times = [r.executed_at for r in rows]
    assert times == sorted(times) and started <= times[0] and times[-1] < flushed_after
    with db.connection() as conn:
        task = store.get_task(conn, TASK)
        (output,) = store.list_command_output(conn, rows[2].id)
        usage = store.list_usage(conn, task_id=TASK)
    assert task.status == "running" and task.context["source"] == "startup" and "opened_at" in task.context
    assert datetime.fromisoformat(task.context["opened_at"]) < flushed_after
    assert output.stdout == "deployed" and output.return_code == 3
    assert [(u.total_tokens, u.command_log_id) for u in usage] == [(120, rows[3].id), (162, rows[3].id)]
    assert all(u.created_at < flushed_after for u in usage)
    assert list(settings.spool_dir.glob("*.json")) == []


@pytest.mark.parametrize(
    ("prompt", "stored"),
    [
        ("how do I deploy \ud800 the shop", "how do I deploy \ufffd the shop"),
        ("how do I deploy\x00 the shop", "how do I deploy\ufffd the shop"),
    ],
    ids=["lone-surrogate", "nul"],
)
def test_a_prompt_with_a_lone_surrogate_or_nul_is_stored_and_gets_its_context(
    services: WarmStore,  # noqa: F811
    db: Database,
    fake_embedder: HashingEmbedder,
    project_dir: Path,  # noqa: F811
    prompt: str,
    stored: str,
) -> None:
    add_fact(db, fake_embedder, label="deploy command", value="make deploy ships the shop")
    result = handle_hook(services, call("BeforeAgent", project_dir, prompt=prompt))
    assert "make deploy ships the shop" in result.output["hookSpecificOutput"]["additionalContext"]
    assert [r.prompt for r in log_rows(db)] == [stored]
    with db.connection() as conn:
        (record,) = store.list_context_records(conn, task_id=TASK)
    assert record.prompt == stored


def test_a_transcript_that_is_a_fifo_is_skipped_and_the_response_logged(
    services: WarmStore,  # noqa: F811
    db: Database,
    project_dir: Path,  # noqa: F811
) -> None:
    fifo = project_dir / "transcript.fifo"
    os.mkfifo(fifo)
    done: list[object] = []
    worker = threading.Thread(
        target=lambda: done.append(
            handle_hook(services, call("AfterAgent", project_dir, prompt_response="answer", transcript_path=str(fifo)))
        ),
        daemon=True,
    )
    worker.start()
    worker.join(timeout=60)  # a guard only: a blocking open would hang here until a writer came
    if not done:  # a writer unblocks the hook's open, so the test ends (and fails)
        with open(fifo, "wb"):
            pass
        worker.join(timeout=60)
        raise AssertionError("AfterAgent blocked on a FIFO transcript")
    result = done[0]
    assert "transcript=unreadable(not a regular file)" in result.note  # type: ignore[attr-defined]
    assert [r.response for r in log_rows(db)] == ["answer"]
