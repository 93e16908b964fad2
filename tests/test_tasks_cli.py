"""`kb tasks` as a user or a shell-script agent runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def kb(db_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(KB_HOME=str(tmp_path), KB_DATABASE_URL=db_url)

    def run(*args: str, agent: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"KB_AGENT_ID": agent} if agent else {}
        return subprocess.run(
            [sys.executable, "-m", "knowledgebase", "tasks", *args],
            env={**env, **extra},
            capture_output=True,
            text=True,
            timeout=60,
        )

    return run


def test_a_task_from_creation_to_done_with_its_history(kb, conn) -> None:  # type: ignore[no-untyped-def]
    from knowledgebase import store

    store.ensure_project(conn, "alpha")
    conn.commit()
    created = kb("create", "T-1", "--title", "fix CI", "--context", '{"goal": "green"}', "--project", "alpha")
    assert created.returncode == 0 and created.stdout.strip() == "T-1"
    generated = kb("create", "--priority", "-1").stdout.strip()
    assert generated.startswith("task-")
    listed = json.loads(kb("list", "--status", "pending", "--project", "alpha", "--json").stdout)
    assert [t["id"] for t in listed] == ["T-1"]

    claimed = json.loads(kb("claim", "--json", agent="agent-7").stdout)
    assert claimed["id"] == "T-1" and claimed["owner"] == "agent-7" and claimed["status"] == "running"
    beat = kb("heartbeat", "T-1", "--lease", "900", agent="agent-7")
    assert beat.returncode == 0 and "owner agent-7" in beat.stdout
    stolen = kb("done", "T-1", agent="agent-8")
    assert stolen.returncode == 1 and "held by 'agent-7'" in stolen.stderr

    done = kb("done", "T-1", "--result", "merged", "--context", '{"pr": 12}', "--json", agent="agent-7")
    task = json.loads(done.stdout)
    assert task["status"] == "done" and task["result"] == "merged" and task["context"] == {"goal": "green", "pr": 12}
    shown = kb("show", "T-1")
    assert "[done]" in shown.stdout and "merged" in shown.stdout
    changes = [line.split()[1:] for line in shown.stdout.splitlines() if "(attempt" in line]
    assert changes == [
        ["pending", "(attempt", "0)"],
        ["running", "by", "agent-7", "(attempt", "1)"],
        ["done", "by", "agent-7", "(attempt", "1):", "merged"],
    ]
    assert [c["status"] for c in task["history"]] == ["pending", "running", "done"]

    claimed = kb("claim", agent="agent-9")
    assert claimed.returncode == 0 and claimed.stdout.startswith(generated)
    assert kb("release", generated, agent="agent-9").returncode == 0
    kb("claim", agent="agent-9")
    failed = json.loads(kb("fail", generated, "--reason", "cannot reproduce", "--json").stdout)
    assert failed["status"] == "failed" and failed["result"] == "cannot reproduce"

    kb("create", "T-2")
    cancelled = json.loads(kb("cancel", "T-2", "--reason", "superseded by T-1", "--json").stdout)
    assert cancelled["status"] == "cancelled" and cancelled["history"][-1]["note"] == "superseded by T-1"
    assert "cancelled already" in kb("cancel", "T-2").stderr

    nothing = kb("claim")
    assert nothing.returncode == 3 and "no task is ready" in nothing.stderr
    assert json.loads(kb("claim", "--json").stdout) is None


def test_history_of_a_task_in_text_and_json(kb, db_url: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(KB_HOME=str(tmp_path), KB_DATABASE_URL=db_url)
    subprocess.run(
        [sys.executable, "-m", "knowledgebase", "exec", "--task", "T-h", "--", "sh", "-c", "echo compiled; exit 2"],
        env=env,
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    text = kb("history", "T-h")
    assert text.returncode == 0
    assert "shell" in text.stdout and "failed (return code 2)" in text.stdout and "stdout: compiled" in text.stdout
    (item,) = json.loads(kb("history", "T-h", "--json").stdout)
    assert item["output"]["stdout"] == "compiled\n"


def test_bad_input_gives_one_clear_line(kb) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (("create", "T-1", "--context", "{not json"), "not valid JSON"),
        (("create", "T-1", "--context", "[1, 2]"), "JSON object"),
        (("show", "missing"), "kb tasks list"),
        (("history", "missing"), "does not exist"),
        (("list", "--status", "weird"), "unknown task status"),
        (("list", "--project", "nope"), "project 'nope'"),
        (("heartbeat", "T-1"), "needs --owner"),
    ]
    for args, message in cases:
        proc = kb(*args)
        assert proc.returncode == 1 and message in proc.stderr and len(proc.stderr.splitlines()) == 1, (args, proc)
    assert kb("list", "--json").stdout.strip() == "[]"  # nothing was created by the refused commands
