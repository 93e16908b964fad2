"""Two agents on one project, end to end with the real Gemini CLI (0.61.0) against a scripted model.

Agent one and agent two are two Gemini CLI sessions with their own homes (HOME, GEMINI_CLI_HOME and
KB_AGENT_ID differ) sharing one store (KB_HOME, database) and one project folder, wired by `kb gemini
install` like a user's. Agent one runs a command that fails, one that works, rewrites a function and
runs the tests (`make check`, which its SessionEnd proposes as the test command); the context BeforeAgent
gives agent two for a prompt about the same things (read from the request the scripted model received)
holds the failure with its error line, the command that worked, the function's new text and the note
that the other agent changed that file, and not the proposed fact.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.facts import list_facts
from knowledgebase.gemini import serve
from knowledgebase.gemini.warm_embedder import WarmProcessEmbedder
from knowledgebase.index.ingest import populate_project
from tests.gemini_harness import (
    DEFAULT_MODEL,
    FakeGeminiServer,
    fake_gemini_server,  # noqa: F401  (fixture)
    function_call_chunk,
    gemini_cli,  # noqa: F401  (fixture)
    gemini_env,
    text_chunk,
    write_gemini_home,
)
from tests.test_gemini_e2e import KB, kb_env

pytestmark = [pytest.mark.gemini, pytest.mark.slow]

PROJECT = "two-agents-shop"
FAILING = 'python3 -c "import nonexistent_mod_xyz"'
ERROR = "ModuleNotFoundError: No module named 'nonexistent_mod_xyz'"
WORKING = "python3 -c \"import json; print('json imports fine')\""
OLD = '''"""Prices of the shop."""


def discount_price(total: float) -> float:
    """The price after the loyalty discount."""
    return round(total * 0.9, 2)
'''
NEW = '''"""Prices of the shop."""


def discount_price(total: float) -> float:
    """The price after the loyalty discount, which is a quarter off since the spring sale."""
    return round(total * 0.75, 2)
'''


@dataclass(frozen=True)
class Agent:
    """One agent: its own home with the knowledgebase installed, working in the shared project folder."""

    name: str
    gemini: Path
    home: Path
    project_dir: Path

    def run(self, prompt: str, base_url: str) -> dict[str, Any]:
        command = [str(self.gemini), "-p", prompt, "-m", DEFAULT_MODEL, "--yolo", "-o", "json"]
        env = gemini_env(self.home, base_url=base_url, extra={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        env = {k: v for k, v in env.items() if not k.startswith("KB_")}  # only what install wrote may reach kb
        env.update({"HOME": str(self.home), "KB_AGENT_ID": self.name})
        proc = subprocess.run(command, cwd=self.project_dir, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, f"gemini exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        result: dict[str, Any] = json.loads(proc.stdout)
        return result


def install(gemini: Path, root: Path, name: str, project_dir: Path, env: dict[str, str]) -> Agent:
    """`kb gemini install` into the home ``root`` of agent ``name``."""
    home = write_gemini_home(root)
    install_env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "GEMINI_"))}
    install_env.update({**env, "GEMINI_CLI_HOME": str(home), "HOME": str(home)})
    subprocess.run([str(KB), "gemini", "install"], env=install_env, check=True, capture_output=True)
    return Agent(name=name, gemini=gemini, home=home, project_dir=project_dir)


@pytest.fixture
def kb_home(tmp_path: Path, db_url: str) -> Iterator[Path]:
    home = tmp_path / "kb-home"
    yield home
    serve.stop_server(kb_env(home, db_url))


def wait_for_chunk(db: Database, text: str, timeout_s: float = 30.0) -> None:
    """Until the index holds ``text`` (the warm process re-indexes an edited file in the background)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with db.connection() as conn:
            row = conn.execute("SELECT count(*) FROM file_chunks WHERE content LIKE %s", (f"%{text}%",)).fetchone()
        if row and row[0]:
            return
        time.sleep(0.1)
    raise AssertionError(f"the edited file was not re-indexed within {timeout_s:.0f}s")


def test_the_second_agent_sees_the_first_agents_failure_fix_and_edit(
    gemini_cli: Path,  # noqa: F811
    db_url: str,
    db: Database,
    kb_home: Path,
    tmp_path: Path,
    fake_gemini_server: FakeGeminiServer,  # noqa: F811
) -> None:
    env = kb_env(kb_home, db_url)
    project_dir = tmp_path / "shop"
    (project_dir / ".git").mkdir(parents=True)
    (project_dir / "pricing.py").write_text(OLD)
    (project_dir / "Makefile").write_text("check:\n\tpython3 -c 'import pricing'\n")
    populate_project(db, WarmProcessEmbedder(Settings.from_env(env), env), project_dir, project=PROJECT,
                     settings=Settings.from_env(env))  # fmt: skip
    one = install(gemini_cli, tmp_path / "home-one", "agent-one", project_dir, env)
    two = install(gemini_cli, tmp_path / "home-two", "agent-two", project_dir, env)
    server = fake_gemini_server

    server.add_reply([function_call_chunk("run_shell_command", {"command": FAILING})])
    server.add_reply([function_call_chunk("run_shell_command", {"command": WORKING})])
    server.add_reply(
        [function_call_chunk("write_file", {"file_path": str(project_dir / "pricing.py"), "content": NEW})]
    )
    server.add_reply([function_call_chunk("run_shell_command", {"command": "make check"})])
    server.add_reply([text_chunk("The discount is now a quarter off.")])
    first = one.run("Make the loyalty discount a quarter off in pricing.py, and check the imports.", server.url)
    assert first["response"] == "The discount is now a quarter off."
    assert (project_dir / "pricing.py").read_text() == NEW
    wait_for_chunk(db, "total * 0.75")
    sent_to_one = len(server.generate_requests())

    server.add_reply([text_chunk("discount_price takes a quarter off.")])
    prompt = "Why did importing nonexistent_mod_xyz fail, and what does discount_price in pricing.py return now?"
    second = two.run(prompt, server.url)
    assert second["response"] == "discount_price takes a quarter off."
    assert second["session_id"] != first["session_id"]

    request = server.generate_requests()[sent_to_one]
    user_turn = request.body["contents"][-1]
    context = "\n".join(p.get("text", "") for p in user_turn["parts"])
    assert "hook_context" in context and prompt in context
    # the failure with its error line, and the command that worked after it
    assert "failed: `" + FAILING + "`" in context and ERROR in context, context
    assert WORKING in context, context
    # the function's new text, not the old
    assert "return round(total * 0.75, 2)" in context and "total * 0.9" not in context, context
    # the note that the other agent changed that file
    assert "**Note:** `pricing.py` changed" in context and "by agent-one" in context, context
    assert "(another agent)" in context and "&gt; Note" not in context, context

    # agent one's session proposed its test command at its end; proposed, not imposed: not in agent two's block
    (learned,) = list_facts(db, project=PROJECT, proposed_only=True)
    assert (learned.fact_label, learned.fact_value) == ("test command", "make check")
    assert learned.proposed_in == (f"gemini-{first['session_id']}",)
    assert "## Known facts" not in context and f"fact #{learned.id}" not in context

    with db.connection() as conn:
        rows = store.list_command_log(conn, task_id=f"gemini-{first['session_id']}")
    assert {r.agent_id for r in rows} == {"agent-one"}
