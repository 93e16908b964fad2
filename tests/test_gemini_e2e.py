"""End to end with the real Gemini CLI (0.61.0 from npm), wired by `kb gemini install` into an isolated home.

The model is scripted: a loopback fake Gemini API (``GOOGLE_GEMINI_BASE_URL``), whose recorded requests
show what the model was sent, or the CLI's own ``--fake-responses``. The hooks and the MCP server are
the installed ones (real `kb-hook`, `kb serve`, `kb mcp`), talking to the real test database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.db.schema import upgrade
from knowledgebase.facts import add_fact, list_facts
from knowledgebase.gemini import serve
from knowledgebase.gemini.warm_embedder import WarmProcessEmbedder
from tests.gemini_harness import (
    DEFAULT_MODEL,
    FakeGeminiServer,
    fake_gemini_server,  # noqa: F401  (fixture)
    function_call_chunk,
    gemini_cli,  # noqa: F401  (fixture)
    gemini_env,
    text_chunk,
    write_fake_responses,
    write_gemini_home,
)

pytestmark = [pytest.mark.gemini, pytest.mark.slow]

KB = Path(sys.executable).parent / "kb"
PROJECT = "e2e-shop"
FACT = "releases are cut every second Thursday by the ops rotation"


@dataclass(frozen=True)
class Wired:
    """A Gemini CLI home with the knowledgebase installed, and a project directory to run it in."""

    gemini: Path
    home: Path
    project_dir: Path
    kb_home: Path

    def hook_env(self) -> dict[str, str]:
        """The environment the installed hooks get (as written into settings.json)."""
        settings = json.loads((self.home / ".gemini" / "settings.json").read_text())
        return dict(settings["hooks"]["BeforeAgent"][-1]["hooks"][0]["env"])

    def run(self, prompt: str, *, base_url: str | None = None, fake_responses: Path | None = None) -> dict[str, Any]:
        command = [str(self.gemini), "-p", prompt, "-m", DEFAULT_MODEL, "--yolo", "-o", "json"]
        if fake_responses is not None:
            command += ["--fake-responses", str(fake_responses)]
        env = gemini_env(self.home, base_url=base_url, extra={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        env = {k: v for k, v in env.items() if not k.startswith("KB_")}  # only what install wrote may reach kb
        proc = subprocess.run(command, cwd=self.project_dir, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"gemini exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def hook_log(self) -> list[str]:
        path = self.kb_home / "logs" / "hooks.log"
        return path.read_text().splitlines() if path.exists() else []


def wire(gemini: Path, tmp_path: Path, database_url: str, kb_home: Path) -> Wired:
    """`kb gemini install` into a fresh isolated home, for a project at tmp_path/shop."""
    home = write_gemini_home(tmp_path / "gemini-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "GEMINI_"))}
    env.update({"GEMINI_CLI_HOME": str(home), "KB_HOME": str(kb_home), "KB_DATABASE_URL": database_url})
    subprocess.run([str(KB), "gemini", "install"], env=env, check=True, capture_output=True)
    project_dir = tmp_path / "shop"
    (project_dir / ".git").mkdir(parents=True)
    return Wired(gemini=gemini, home=home, project_dir=project_dir, kb_home=kb_home)


def kb_env(kb_home: Path, database_url: str) -> dict[str, str]:
    env = {"KB_HOME": str(kb_home), "KB_DATABASE_URL": database_url, "HF_HUB_OFFLINE": "1"}
    if os.environ.get("PYTHONPATH"):  # a checkout run with PYTHONPATH: the warm process started here runs it too
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@pytest.fixture(scope="module")
def kb_home(tmp_path_factory: pytest.TempPathFactory, migrated_url: str) -> Iterator[Path]:
    """One KB_HOME for the tests on the shared test database, so they share one warm process."""
    home = tmp_path_factory.mktemp("e2e-kb-home")
    yield home
    serve.stop_server(kb_env(home, migrated_url))


@pytest.fixture
def wired(gemini_cli: Path, db_url: str, db: Database, kb_home: Path, tmp_path: Path) -> Wired:  # noqa: F811
    setup = wire(gemini_cli, tmp_path, db_url, kb_home)
    with db.connection() as conn:
        store.ensure_project(conn, PROJECT, str(setup.project_dir))
    return setup


@pytest.fixture
def warm_embedder(kb_home: Path, db_url: str) -> WarmProcessEmbedder:
    """The model of the installed hooks' warm process (started here if needed), without torch in this process."""
    env = kb_env(kb_home, db_url)
    return WarmProcessEmbedder(Settings.from_env(env), env)


def session_rows(db: Database, session_id: str) -> list[store.CommandLogEntry]:
    with db.connection() as conn:
        return store.list_command_log(conn, task_id=f"gemini-{session_id}")


def test_turn_with_shell_command_and_mcp_tools_against_a_fake_gemini_api(
    wired: Wired,
    db: Database,
    warm_embedder: WarmProcessEmbedder,
    fake_gemini_server: FakeGeminiServer,  # noqa: F811
) -> None:
    add_fact(db, warm_embedder, label="release schedule", value=FACT, project=PROJECT, confidence=0.9)
    server = fake_gemini_server
    server.add_reply(
        [
            function_call_chunk(
                "run_shell_command", {"command": "echo kb-e2e-output; exit 4"}, prompt_tokens=100, output_tokens=10
            )
        ]
    )
    server.add_reply(
        [
            function_call_chunk(
                "mcp_knowledgebase_search", {"query": "when are releases cut"}, prompt_tokens=200, output_tokens=20
            )
        ]
    )
    server.add_reply(
        [
            function_call_chunk(
                "mcp_knowledgebase_remember",
                {"label": "release tag", "value": "release branches are tagged rel-YYYY-MM-DD", "confidence": 0.8},
                prompt_tokens=300,
                output_tokens=30,
            )
        ]
    )
    server.add_reply([text_chunk("Releases are cut every second Thursday.", prompt_tokens=400, output_tokens=40)])

    result = wired.run("When are releases cut?", base_url=server.url)

    assert result["response"] == "Releases are cut every second Thursday."
    session_id = result["session_id"]
    first, after_shell, after_search, after_remember = server.generate_requests()
    # BeforeAgent's context reached the model inside the user turn
    user_turn = first.body["contents"][-1]
    assert user_turn["role"] == "user"
    user_text = "\n".join(p.get("text", "") for p in user_turn["parts"])
    assert "hook_context" in user_text and FACT in user_text and "When are releases cut?" in user_text
    # the MCP tools worked: search found the fact, remember stored one
    search_answer = json.dumps(_function_responses(after_search, "mcp_knowledgebase_search"))
    assert "second Thursday" in search_answer
    remember_answer = json.dumps(_function_responses(after_remember, "mcp_knowledgebase_remember"))
    assert "rel-YYYY-MM-DD" in remember_answer and "error" not in remember_answer.lower()
    shell_answer = json.dumps(_function_responses(after_shell, "run_shell_command"))
    assert "kb-e2e-output" in shell_answer

    rows = session_rows(db, session_id)
    assert [(r.kind, r.tool_name) for r in rows] == [
        ("prompt", None),
        ("shell", "run_shell_command"),
        ("tool", "mcp_knowledgebase_search"),
        ("tool", "mcp_knowledgebase_remember"),
        ("prompt", None),
    ]
    prompt_row, shell_row, _, _, response_row = rows
    assert prompt_row.prompt == "When are releases cut?"
    assert shell_row.command == "echo kb-e2e-output; exit 4"
    assert response_row.response == "Releases are cut every second Thursday."
    with db.connection() as conn:
        (output,) = store.list_command_output(conn, shell_row.id)
        usage = store.list_usage(conn, task_id=f"gemini-{session_id}")
        task = store.get_task(conn, f"gemini-{session_id}")
    assert output.stdout == "kb-e2e-output" and output.return_code == 4 and not output.success
    assert sum(u.prompt_tokens for u in usage) == 1000 and sum(u.response_tokens for u in usage) == 100
    assert {u.command_log_id for u in usage} == {response_row.id}
    assert task.status == "done" and task.project_id is not None
    remembered = [f for f in list_facts(db, project=PROJECT) if f.fact_label == "release tag"]
    assert len(remembered) == 1 and remembered[0].task_id == f"gemini-{session_id}"
    assert remembered[0].confidence_score == pytest.approx(0.8)


def _function_responses(request: Any, name: str) -> list[Any]:
    return [
        part["functionResponse"]
        for content in request.body["contents"]
        for part in content.get("parts", [])
        if part.get("functionResponse", {}).get("name") == name
    ]


def test_scripted_model_turn_is_logged(wired: Wired, db: Database, tmp_path: Path) -> None:
    responses = write_fake_responses(
        tmp_path / "fake.jsonl",
        [
            [
                function_call_chunk(
                    "run_shell_command", {"command": "printf 'line1\\nline2\\n'"}, prompt_tokens=50, output_tokens=5
                )
            ],
            [text_chunk("Printed two lines.", prompt_tokens=70, output_tokens=7)],
        ],
    )
    result = wired.run("print two lines", fake_responses=responses)
    assert result["response"] == "Printed two lines."
    rows = session_rows(db, result["session_id"])
    assert [r.kind for r in rows] == ["prompt", "shell", "prompt"]
    assert rows[0].prompt == "print two lines" and rows[2].response == "Printed two lines."
    with db.connection() as conn:
        (output,) = store.list_command_output(conn, rows[1].id)
        usage = store.list_usage(conn, task_id=f"gemini-{result['session_id']}")
        contexts = store.list_context_records(conn, task_id=f"gemini-{result['session_id']}")
    assert output.stdout == "line1\nline2" and output.return_code == 0 and output.success
    assert [(u.prompt_tokens, u.response_tokens) for u in usage] == [(50, 5), (70, 7)]
    assert [c.prompt for c in contexts] == ["print two lines"]


def test_the_run_completes_with_the_database_stopped(gemini_cli: Path, tmp_path: Path) -> None:  # noqa: F811
    from knowledgebase.db.embedded import ensure_server, stop_server

    pgdata = tmp_path / "stopped-pg"
    url = ensure_server(pgdata).url()
    try:
        upgrade(url)
        setup = wire(gemini_cli, tmp_path, url, tmp_path / "kb-home")
    finally:
        stop_server(pgdata)
    responses = write_fake_responses(
        tmp_path / "fake.jsonl",
        [
            [function_call_chunk("run_shell_command", {"command": "echo still-running"})],
            [text_chunk("Finished without the database.")],
        ],
    )
    try:
        result = setup.run("run something", fake_responses=responses)
    finally:
        serve.stop_server(setup.hook_env())
    assert result["response"] == "Finished without the database."
    lines = setup.hook_log()
    events = [line.split()[1] for line in lines]
    assert events == ["SessionStart", "BeforeAgent", "AfterTool", "AfterAgent", "SessionEnd"]
    # every event waits in KB_HOME/spool, to be written with its time when the database is back (SessionEnd's
    # closing too: the warm process then proposes the facts of the session's trail)
    assert all(" ok " in line and "spooled to" in line for line in lines)
    assert len(list((setup.kb_home / "spool").glob("*.json"))) == 5
