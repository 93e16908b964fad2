"""``kb mcp``: the knowledgebase as MCP tools for the model (stdio; Gemini CLI starts it).

Tools (Gemini CLI shows them to the model as ``mcp_knowledgebase_<tool>``): ``search``,
``get_context``, ``remember``, ``confirm_fact``, ``forget_fact``, ``recent_commands``, ``active_work``,
``recent_failures``. Each is a thin
adapter over the library (retrieval, context, facts, audit). The session's project and task come
from the registry SessionStart writes (``knowledgebase.gemini.session``), found by this process's
parent, Gemini CLI; without one, the project is resolved from the working directory.

The database is opened on the first tool call that needs it, and vectors come from the hooks' warm
process (``knowledgebase.gemini.warm_embedder``, started on demand), so this process never imports torch and
Gemini CLI's start-up never waits for a model. stdout is the JSON-RPC channel: everything else goes to
stderr.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from knowledgebase.config import Settings
from knowledgebase.errors import InputError, KnowledgebaseError
from knowledgebase.gemini import session as gemini_session

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from knowledgebase.db import Database
    from knowledgebase.embedding import Embedder
    from knowledgebase.facts import Fact
    from knowledgebase.search.hits import Hit

log = logging.getLogger("knowledgebase.mcp")

SERVER_NAME = "knowledgebase"
MAX_HIT_CHARS = 1500
INSTRUCTIONS = """\
Shared memory of this project, kept by every agent that worked on it: indexed source code, facts
agents and people recorded (with a confidence that fades unless confirmed), and the log of commands
run with their outcome. Use `search` or `get_context` before exploring the code by hand, `remember`
when you learn something another agent would need (a command that works, a convention, a decision and
its reason), `confirm_fact` when you checked a fact and it holds, `forget_fact` when it is wrong.
Other agents may work on the same project: `active_work` names their tasks and the files they changed
lately, `recent_failures` the commands that failed here (and what worked instead).
"""


@dataclass(frozen=True)
class Scope:
    """The project and task tool calls act on."""

    project: str | None
    task_id: str | None


class McpServices:
    """Lazily opened database and model, and the session this server belongs to."""

    def __init__(
        self,
        settings: Settings,
        *,
        cwd: str | None = None,
        parent_pid: int | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.settings = settings
        self.cwd = cwd or os.getcwd()
        self.parent_pid = os.getppid() if parent_pid is None else parent_pid
        self._db: Database | None = None
        self._embedder = embedder
        self._lock = threading.Lock()

    def database(self) -> Database:
        with self._lock:
            if self._db is None:
                from knowledgebase.db import open_database

                self._db = open_database(self.settings)
            return self._db

    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                from knowledgebase.gemini.warm_embedder import WarmProcessEmbedder

                self._embedder = WarmProcessEmbedder(self.settings, os.environ)
            return self._embedder

    def scope(self) -> Scope:
        """The session's project and task (registry first, then the working directory)."""
        session = gemini_session.session_for_process(self.settings.home, self.parent_pid, self.cwd)
        if session is not None:
            return Scope(project=session.project, task_id=session.task_id)
        with self.database().connection() as conn:
            project = gemini_session.resolve_project(conn, self.cwd, self.settings.project)
        return Scope(project=project.name if project else None, task_id=None)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


def build_server(services: McpServices) -> MCPServer:
    """The MCP server with the knowledgebase tools bound to ``services``."""
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError

    server: MCPServer = MCPServer(SERVER_NAME, instructions=INSTRUCTIONS, log_level="WARNING")

    def guarded(action: Any) -> Any:
        try:
            return action()
        except KnowledgebaseError as exc:
            raise ToolError(str(exc)) from None

    @server.tool()
    def search(
        query: str,
        kinds: list[Literal["chunk", "fact", "command"]] | None = None,
        path_glob: str | None = None,
        limit: int = 8,
    ) -> list[dict[str, Any]]:
        """Search the project's shared memory: indexed source code ("chunk"), recorded facts ("fact") and
        past shell commands with their outcome ("command"). Default kinds: chunk and fact.

        Write the query as a question or the words you would expect in the answer ("how are database
        migrations run", "retry backoff for the API client"); identifiers work too. `path_glob` limits
        code to matching files ("src/**/*.py"). Results are best first; each has a `citation`
        (path:start-end, fact #id, command #id) to quote, and a `score` between 0 and 1."""

        def run() -> list[dict[str, Any]]:
            from knowledgebase.search.retrieval import DEFAULT_KINDS
            from knowledgebase.search.retrieval import search as run_search

            scope = services.scope()
            hits = run_search(
                services.database(),
                services.embedder(),
                query,
                project=scope.project,
                kinds=tuple(kinds) if kinds else DEFAULT_KINDS,
                path_glob=path_glob,
                limit=max(1, min(limit, 50)),
            )
            return [_hit_json(hit) for hit in hits]

        return guarded(run)

    @server.tool()
    def get_context(question: str, budget_tokens: int | None = None) -> str:
        """The most relevant code and facts for a question or task, ranked and cut to a token budget,
        as Markdown with citations. Prefer this over several searches when you start a task or switch
        to another part of the code. `budget_tokens` defaults to the configured budget (about 1500)."""

        def run() -> str:
            from knowledgebase.search.context import build_context

            scope = services.scope()
            pack = build_context(
                services.database(),
                services.embedder(),
                question,
                project=scope.project,
                task_id=scope.task_id,
                budget=budget_tokens or services.settings.context_budget,
            )
            return pack.text or "Nothing in the knowledgebase matches this question yet."

        return guarded(run)

    @server.tool()
    def remember(
        label: str,
        value: str,
        confidence: float = 0.6,
        source: Literal["agent", "user", "command", "file"] = "agent",
        source_file: str | None = None,
        source_line: int | None = None,
        source_command_id: int | None = None,
        evidence: str | None = None,
    ) -> dict[str, Any]:
        """Record a fact for every later session and agent on this project.

        `label` names the slot, short and stable ("test command", "db port", "decision: http client");
        `value` states the fact in one or two sentences. A label holds one active value: the same value
        again confirms it, a different value replaces the old one (which stays on record).
        `confidence` (0-1): 0.9+ verified (you ran it, or read it in the code), 0.6 likely, 0.3 a guess.
        `source`: "agent" (your own conclusion), "user" (the user told you; put their words in
        `evidence`), "command" (give `source_command_id` from recent_commands), "file" (give
        `source_file`, relative to the project root, and `source_line`). Never store secrets."""

        def run() -> dict[str, Any]:
            from knowledgebase.facts import add_fact

            scope = services.scope()
            fact = add_fact(
                services.database(),
                services.embedder(),
                label=label,
                value=value,
                project=scope.project,
                task_id=scope.task_id,
                extracted_from=evidence,
                confidence=confidence,
                source=_fact_source(source, source_file, source_line, source_command_id, evidence),
            )
            return _fact_json(fact)

        return guarded(run)

    @server.tool()
    def confirm_fact(fact_id: int, confidence: float | None = None) -> dict[str, Any]:
        """Say that you checked fact #`fact_id` (from search, get_context or the session digest) and it
        still holds: its confidence goes up and its age resets; a fact proposed from the sessions' trail
        ("proposed": true) becomes an established one. Optionally state your own `confidence`."""

        def run() -> dict[str, Any]:
            from knowledgebase.facts import confirm_fact as confirm

            return _fact_json(confirm(services.database(), fact_id, confidence=confidence))

        return guarded(run)

    @server.tool()
    def forget_fact(fact_id: int) -> dict[str, Any]:
        """Retire fact #`fact_id` because it is wrong or no longer true; it is no longer shown to anyone
        (it stays on record). If you know the right value, `remember` it under the same label instead."""

        def run() -> dict[str, Any]:
            from knowledgebase.facts import forget_fact as forget

            return _fact_json(forget(services.database(), fact_id))

        return guarded(run)

    @server.tool()
    def recent_commands(limit: int = 10, failed_only: bool = False, task_id: str | None = None) -> list[dict[str, Any]]:
        """The latest shell commands of this session's task (or of `task_id`), newest last, each with its
        exit code, whether it succeeded, and the tail of its output. Use it to recall what was already
        tried, or to cite a command as the source of a fact (its `id`)."""

        def run() -> list[dict[str, Any]]:
            from knowledgebase.coordination.audit import task_history

            task = task_id or services.scope().task_id
            if task is None:
                raise InputError("no Gemini CLI session is known to this server: pass task_id")
            items = [i for i in task_history(services.database(), task, limit=500) if i["kind"] == "shell"]
            if failed_only:
                items = [i for i in items if i["output"] is not None and not i["output"]["success"]]
            return [_command_json(i) for i in items[-max(1, min(limit, 100)) :]]

        return guarded(run)

    @server.tool()
    def active_work(minutes: int | None = None) -> dict[str, Any]:
        """What the other agents on this project are doing: their running tasks (id, title, owner, since
        when, last active) and the files they changed in the last `minutes` (default KB_ACTIVE_MINUTES,
        30), newest first. Check it before editing a file another agent may be working on."""

        def run() -> dict[str, Any]:
            from knowledgebase.search.activity import active_work as work_of

            scope = services.scope()
            if scope.project is None:
                raise InputError("no project is known for this session: run it inside an indexed project")
            window = services.settings.active_minutes if minutes is None else minutes
            return work_of(services.database(), scope.project, exclude_task_id=scope.task_id, minutes=window).to_json()

        return guarded(run)

    @server.tool()
    def recent_failures(limit: int = 10) -> list[dict[str, Any]]:
        """Shell commands that failed lately on this project, by any agent, newest first: each with its
        exit code, first error line, who ran it and when, and `then_worked`, the similar command that
        succeeded after it in the same task (null: none did). Read it before running a build or test
        command, so a known failure is not repeated."""

        def run() -> list[dict[str, Any]]:
            from knowledgebase.search.commands import recent_failures as failures_of
            from knowledgebase.util.jsonable import to_jsonable

            scope = services.scope()
            found = failures_of(services.database(), services.embedder(), project=scope.project, limit=limit)
            return [to_jsonable(f) for f in found]

        return guarded(run)

    return server


def _fact_source(
    source: str, source_file: str | None, source_line: int | None, command_id: int | None, evidence: str | None
) -> Any:
    from knowledgebase.facts import AGENT, FactSource

    if source == "user":
        return FactSource.from_prompt(evidence or "")
    if source == "command":
        if command_id is None:
            raise InputError("source 'command' needs source_command_id (see recent_commands)")
        return FactSource.from_command(command_id)
    if source == "file":
        if not source_file:
            raise InputError("source 'file' needs source_file (a path relative to the project root)")
        return FactSource.from_chunk(source_file, line=source_line)
    return AGENT


def _clip(text: str | None, limit: int = MAX_HIT_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters]"


def _hit_json(hit: Hit) -> dict[str, Any]:
    """The hit as ``kb search --json`` prints it, with long texts clipped for the model."""
    data = hit.to_json()
    for key in ("text", "fact_value"):
        if key in data:
            data[key] = _clip(data[key])
    return data


def _fact_json(fact: Fact) -> dict[str, Any]:
    return {
        "id": fact.id,
        "fact_label": fact.fact_label,
        "fact_value": fact.fact_value,
        "project": fact.project,
        "status": fact.status,
        "confidence_score": fact.confidence_score,
        "effective_confidence": round(fact.effective_confidence, 3),
        "confirmations": fact.confirmations,
        "supersedes": list(fact.supersedes),
        "source": fact.source_kind,
        "proposed": fact.proposed,
        "citation": fact.citation(),
    }


def _command_json(item: Any) -> dict[str, Any]:
    output = item["output"] or {}
    return {
        "id": item["id"],
        "executed_at": item["executed_at"],
        "command": item["command"],
        "return_code": output.get("return_code"),
        "success": output.get("success"),
        "output_tail": _tail(output.get("stdout")),
        "error": output.get("error"),
    }


def _tail(text: str | None, limit: int = 800) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return f"[... {len(text) - limit} characters before]\n" + text[-limit:]


def run_stdio(settings: Settings) -> None:
    """Serve the tools on stdin/stdout until the client closes the connection."""
    logging.basicConfig(level=logging.WARNING, format="kb mcp: %(levelname)s %(message)s")
    services = McpServices(settings)
    try:
        build_server(services).run("stdio")
    finally:
        services.close()
