"""`kb mcp`: the tools a model uses, in process against the real database, and over real stdio."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.coordination import audit
from knowledgebase.db import Database
from knowledgebase.facts import list_facts
from knowledgebase.gemini import session as gemini_session
from knowledgebase.gemini.mcp_server import McpServices, build_server
from tests.support import HashingEmbedder, as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)


TASK = "gemini-mcp-session"
TOOLS = {
    "search",
    "get_context",
    "remember",
    "confirm_fact",
    "forget_fact",
    "recent_commands",
    "active_work",
    "recent_failures",
}


@pytest.fixture
def services(settings: Settings, fake_embedder: HashingEmbedder, db: Database, tmp_path: Path) -> Iterator[McpServices]:
    """An MCP server's services whose parent (this process) runs session mcp-session in project `shop`."""
    project_dir = tmp_path / "shop"
    project_dir.mkdir()
    with db.connection() as conn:
        store.ensure_project(conn, "shop", str(project_dir))
    gemini_session.register_session(
        settings.home,
        gemini_session.SessionInfo("mcp-session", TASK, "shop", str(project_dir), gemini_pid=os.getpid()),
    )
    mcp_services = McpServices(settings, cwd=str(project_dir), parent_pid=os.getpid(), embedder=fake_embedder)
    yield mcp_services
    mcp_services.close()


def call(services: McpServices, tool: str, **arguments: Any) -> tuple[bool, Any]:
    """(is_error, result): the structured result, or the error text."""

    async def go() -> tuple[bool, Any]:
        async with Client(build_server(services)) as client:
            result = await client.call_tool(tool, arguments)
        if result.is_error:
            return True, " ".join(getattr(c, "text", "") for c in result.content)
        structured = result.structured_content
        if isinstance(structured, dict) and set(structured) == {"result"}:
            return False, structured["result"]
        return False, structured

    return anyio.run(go)


def test_tools_are_listed_with_descriptions_for_a_model(services: McpServices) -> None:
    async def go() -> Any:
        async with Client(build_server(services)) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in anyio.run(go)}
    assert set(tools) == TOOLS
    assert all(len(t.description or "") > 120 for t in tools.values())
    assert "confidence" in tools["remember"].input_schema["properties"]


def test_remember_stores_a_fact_in_the_sessions_project_and_task(services: McpServices, db: Database) -> None:
    error, fact = call(
        services,
        "remember",
        label="test command",
        value="run `make test` from the repo root",
        confidence=0.9,
        source="user",
        evidence="the user said: tests run with make test",
    )
    assert not error, fact
    assert fact["project"] == "shop" and fact["source"] == "prompt" and fact["confirmations"] == 1
    (stored,) = list_facts(db, project="shop")
    assert stored.task_id == TASK and stored.extracted_from == "the user said: tests run with make test"
    assert stored.confidence_score == pytest.approx(0.9)

    _, again = call(services, "remember", label="test command", value="run `make test` from the repo root")
    assert again["id"] == fact["id"] and again["confirmations"] == 2
    _, changed = call(services, "remember", label="test command", value="run `pytest -q`", confidence=0.7)
    assert changed["supersedes"] == [fact["id"]]


def test_search_get_context_confirm_and_forget(services: McpServices) -> None:
    _, fact = call(
        services, "remember", label="deploy", value="deploys go through the blue green pipeline", confidence=0.8
    )
    error, hits = call(services, "search", query="how do deploys work with the blue green pipeline")
    assert not error, hits
    assert hits[0]["kind"] == "fact" and hits[0]["id"] == fact["id"] and hits[0]["citation"].startswith("fact #")
    _, context = call(services, "get_context", question="blue green pipeline deploys")
    assert "blue green pipeline" in context and f"fact #{fact['id']}" in context
    _, confirmed = call(services, "confirm_fact", fact_id=fact["id"], confidence=0.95)
    assert confirmed["confirmations"] == 2
    _, forgotten = call(services, "forget_fact", fact_id=fact["id"])
    assert forgotten["status"] == "forgotten"
    _, hits = call(services, "search", query="blue green pipeline deploys", kinds=["fact"])
    assert hits == []


def test_confirm_fact_turns_a_proposal_from_the_trail_into_an_established_fact(
    services: McpServices, db: Database, fake_embedder: HashingEmbedder
) -> None:
    from knowledgebase.facts import CONFIRMED_CONFIDENCE
    from knowledgebase.search.trail_facts import propose_session_facts

    with db.connection() as conn:
        store.ensure_task(conn, TASK, project_id=store.get_project(conn, "shop").id)
    audit.log_command(db, command="make test", task_id=TASK, return_code=0)
    (fact,) = propose_session_facts(db, fake_embedder, TASK)
    _, hits = call(services, "search", query="make test", kinds=["fact"])
    assert [h["id"] for h in hits] == [fact.id]
    error, confirmed = call(services, "confirm_fact", fact_id=fact.id)
    assert not error, confirmed
    assert confirmed["proposed"] is False and confirmed["confidence_score"] >= CONFIRMED_CONFIDENCE
    assert list_facts(db, project="shop", proposed_only=True) == []
    error, message = call(services, "confirm_fact", fact_id=987654)
    assert error and "fact #987654 does not exist" in message


def test_recent_commands_of_the_session_task(services: McpServices, db: Database) -> None:
    for command, code in [("make lint", 0), ("make test", 2), ("git status", 0)]:
        audit.log_command(db, command=command, task_id=TASK, stdout=f"output of {command}", return_code=code)
    audit.log_exchange(db, task_id=TASK, prompt="not a command")
    error, commands = call(services, "recent_commands", limit=2)
    assert not error, commands
    assert [c["command"] for c in commands] == ["make test", "git status"]
    _, failed = call(services, "recent_commands", failed_only=True)
    assert [(c["command"], c["return_code"], c["success"]) for c in failed] == [("make test", 2, False)]
    assert failed[0]["output_tail"] == "output of make test"


def test_bad_requests_come_back_as_tool_errors_with_the_reason(services: McpServices, db: Database) -> None:
    error, message = call(services, "forget_fact", fact_id=987654)
    assert error and "does not exist" in message
    error, message = call(services, "remember", label="x", value="y", source="file")
    assert error and "source_file" in message
    error, message = call(services, "remember", label="x", value="y", confidence=3)
    assert error and "between 0 and 1" in message
    error, message = call(services, "search", query="   ")
    assert error
    assert list_facts(db) == []


def test_without_a_session_recent_commands_asks_for_a_task(
    settings: Settings, db: Database, fake_embedder: HashingEmbedder, tmp_path: Path
) -> None:
    lonely = McpServices(settings, cwd=str(tmp_path), parent_pid=1, embedder=fake_embedder)
    try:
        error, message = call(lonely, "recent_commands")
        assert error and "task_id" in message
        _, fact = call(lonely, "remember", label="store wide", value="applies to every project")
        assert fact["project"] is None
    finally:
        lonely.close()


def test_kb_mcp_speaks_json_rpc_on_stdout(settings: Settings, db_url: str) -> None:
    """The real `kb mcp` over stdio: tools listed, an error answered, nothing else on stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update({"KB_DATABASE_URL": db_url, "KB_HOME": str(settings.home), "HF_HUB_OFFLINE": "1"})
    params = StdioServerParameters(command=str(Path(sys.executable).parent / "kb"), args=["mcp"], env=env)

    async def go() -> tuple[set[str], Any]:
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("confirm_fact", {"fact_id": 424242})
        return names, result

    names, result = anyio.run(go)
    assert names == TOOLS
    assert result.is_error and "does not exist" in json.dumps([c.model_dump() for c in result.content])
