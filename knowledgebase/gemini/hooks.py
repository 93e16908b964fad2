"""Gemini CLI hook handlers: log every turn, tool call and shell command, and hand the model context.

``handle_hook(services, call)`` runs one event inside the warm process (``knowledgebase.gemini.serve``); the
hook process itself (``knowledgebase.gemini.hook_client``) only relays. Every handler returns the JSON object
Gemini CLI reads from the hook's stdout:

- SessionStart: opens (or, on resume, reopens) the session's task ``gemini-<session id>`` and returns
  a short digest of the project: pinned and well-established facts, recent decisions, and the other
  agents at work (running tasks, files changed in the last ``KB_ACTIVE_MINUTES``).
- BeforeAgent: logs the prompt (without a leading ``<hook_context>`` block) and returns the ranked
  context for it (``knowledgebase.search.context``: code, facts, past commands, and the other agents'
  changes to the files shown) within ``KB_CONTEXT_BUDGET`` tokens.
- AfterTool: ``run_shell_command`` is logged as a shell command with its output and exit code; other
  tools as a tool call with a summary of their result (``write_file`` and ``replace`` with the file
  they wrote, in ``command_output.file_written``); those files are queued for a background re-index
  in the warm process (``knowledgebase.gemini.freshness``), and SessionStart queues an incremental
  populate of the session's project, so the index keeps up with the agents' edits.
- AfterAgent: logs the turn's response and the token usage of each model call in the turn (read from
  the session transcript).
- SessionEnd: closes the session's task and proposes facts its commands showed (``search.trail_facts``).

Everything stored goes through ``knowledgebase.coordination.audit``, which redacts and clips it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from knowledgebase.coordination import audit, spool, taskqueue
from knowledgebase.errors import DatabaseError, InputError, LeaseError, NotFound, first_line
from knowledgebase.gemini import events as gemini_events
from knowledgebase.gemini import session as gemini_session
from knowledgebase.util.redact import redact_value
from knowledgebase.util.text import storable_text

if TYPE_CHECKING:
    from knowledgebase.config import Settings
    from knowledgebase.db import Database
    from knowledgebase.embedding import Embedder

AGENT_MODE = "gemini-cli"
SHELL_TOOL = "run_shell_command"
WRITE_TOOLS = ("write_file", "replace")  # their tool_input["file_path"] is the file they wrote
MAX_SUMMARY_CHARS = 4000  # result summary kept for tools other than the shell
MAX_INPUT_STRING_CHARS = 8000  # per string inside a tool's input (write_file content and the like)
# what of a prompt retrieval reads: the model embeds about 1000 characters anyway, and a pasted
# megabyte must not become a megabyte full-text query
MAX_QUERY_CHARS = 4000
DIGEST_FACTS = 8
DIGEST_SCAN = 200  # newest facts looked at for the digest
DIGEST_DECISIONS = 5
DIGEST_MIN_CONFIDENCE = 0.7
USAGE_REQUEST_TYPE = "gemini-cli"


class HookServices(Protocol):
    """What handlers need: settings, the database pool, the model (loaded on demand), trail facts' proposer."""

    settings: Settings

    def database(self) -> Database: ...

    def embedder(self) -> Embedder: ...
    def propose_trail_facts(self, task_id: str) -> str: ...


@dataclass(frozen=True)
class HookCall:
    """One hook invocation: the event, Gemini CLI's JSON input, and where it came from."""

    event: str
    payload: dict[str, Any]
    gemini_pid: int | None = None
    project: str | None = None  # KB_PROJECT, when set
    project_dir: str | None = None  # GEMINI_PROJECT_DIR
    agent_id: str | None = None  # KB_AGENT_ID, when set: who the log rows name instead of the process


@dataclass(frozen=True)
class HookResult:
    """The JSON object to print, and a short note for the hook log."""

    output: dict[str, Any]
    note: str = ""


@dataclass(frozen=True)
class _Session:
    session_id: str
    task_id: str
    cwd: str | None
    project: str | None
    project_id: int | None
    agent_id: str  # who wrote a log row: this Gemini CLI process
    owner: str  # who holds the session's task: the session, whichever process resumes it


def handle_hook(services: HookServices, call: HookCall) -> HookResult:
    """Run the handler of ``call.event``; InputError for an unknown event or unusable input."""
    handler = HANDLERS.get(call.event)
    if handler is None:
        raise InputError(f"unknown hook event {call.event!r}; known: {', '.join(HANDLERS)}")
    if not isinstance(call.payload, dict):
        raise InputError("the hook input must be a JSON object")
    return handler(services, call)


def _offline_session(call: HookCall) -> _Session:
    """The session of ``call`` as far as it is known without the database (no project)."""
    try:
        task_id = gemini_events.session_task_id(str(call.payload.get("session_id") or ""))
    except ValueError as exc:
        raise InputError(str(exc)) from None
    cwd = call.payload.get("cwd") or call.project_dir
    session_id = task_id.removeprefix(gemini_events.SESSION_TASK_PREFIX)
    return _Session(
        session_id=session_id,
        task_id=task_id,
        cwd=cwd if isinstance(cwd, str) and cwd else None,
        project=None,
        project_id=None,
        agent_id=call.agent_id or f"gemini-cli@{socket.gethostname()}:{call.gemini_pid or '?'}",
        owner=gemini_session.session_owner(session_id),
    )


def _session(db: Database, call: HookCall, *, open_task: bool = True) -> _Session:
    """The session of ``call``: its task (opened under the session's owner if missing) and project."""
    session = _offline_session(call)
    with db.connection() as conn:
        project = gemini_session.resolve_project(conn, session.cwd, call.project)
        project_id = project.id if project else None
        if open_task:
            taskqueue.open_task_if_missing(conn, session.task_id, project_id=project_id, owner=session.owner)
    return dataclasses.replace(session, project=project.name if project else None, project_id=project_id)


def _register(services: HookServices, call: HookCall, session: _Session) -> None:
    gemini_session.register_session(
        services.settings.home,
        gemini_session.SessionInfo(
            session_id=session.session_id,
            task_id=session.task_id,
            project=session.project,
            cwd=session.cwd or "",
            gemini_pid=call.gemini_pid,
        ),
    )


def _additional_context(event: str, text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    return {"hookSpecificOutput": {"hookEventName": event, "additionalContext": text}}


# --------------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Logged:
    """Where an event's log entry went: the database (``db`` set) or, during an outage, the spool."""

    session: _Session
    db: Database | None
    entry_id: int | None
    note: str


def _log_or_spool(services: HookServices, call: HookCall, prepare: Callable[[_Session], spool.SpoolEntry]) -> _Logged:
    """Store the entry ``prepare`` makes for the call's session; with the database unreachable (or not
    migrated), spool it with the time it happened, to be written when the database is back."""
    try:
        db = services.database()
        session = _session(db, call)
        entry_id = spool.store_entry(db, prepare(session))
    except DatabaseError as exc:
        session = _offline_session(call)
        path = spool.spool_entry(services.settings.spool_dir, prepare(session))
        return _Logged(session, None, None, f"database unavailable, spooled to {path.name}: {first_line(exc)}")
    return _Logged(session, db, entry_id, f"log={entry_id}")


def session_start(services: HookServices, call: HookCall) -> HookResult:
    """Open or resume the session's task; return the project digest as additional context."""
    source = str(call.payload.get("source") or "startup")
    held = ""

    def opening(session: _Session) -> spool.SessionOpening:
        title = f"Gemini CLI session {session.session_id[:8]}" + (f" in {session.cwd}" if session.cwd else "")
        context = {"cwd": session.cwd, "transcript_path": call.payload.get("transcript_path"), "source": source}
        return spool.SessionOpening(session.task_id, session.owner, title, context)

    try:
        db = services.database()
        session = _session(db, call)
        opened = opening(session)
        with db.connection() as conn:
            taskqueue.open_task(
                conn, session.task_id, owner=session.owner, project_id=session.project_id, title=opened.title
            )
            taskqueue.update_context(conn, session.task_id, opened.context, owner=session.owner)
    except LeaseError as exc:  # another holder (an operator, a queue worker): log under it all the same
        held = f" not-reopened({exc})"
    except DatabaseError as exc:  # down: the opening is written when the database is back
        session = _offline_session(call)
        path = spool.spool_entry(services.settings.spool_dir, opening(session))
        _register(services, call, session)
        return HookResult({}, note=f"database unavailable, session spooled to {path.name}: {first_line(exc)}")
    _register(services, call, session)
    if (freshener := getattr(services, "freshener", None)) and session.project:  # populate in the background
        freshener.queue_populate(session.project)
    digest = session_digest(db, session.project)
    others = _active_work(services, db, session)
    if others:
        digest = (digest or f"# Knowledgebase digest for project {session.project}\n") + "\n" + others + "\n"
    return HookResult(
        _additional_context("SessionStart", digest),
        note=f"task={session.task_id} project={session.project or '-'} source={source} digest={len(digest)}c{held}",
    )


def before_agent(services: HookServices, call: HookCall) -> HookResult:
    """Log the prompt and return the ranked context for it."""
    from knowledgebase.search.context import build_context

    raw = call.payload.get("prompt")
    prompt = storable_text(gemini_events.strip_hook_context(raw if isinstance(raw, str) else ""))
    logged = _log_or_spool(
        services,
        call,
        lambda session: audit.ExchangeRecord(
            audit.prepare_exchange(prompt=prompt, kind="prompt", **_session_fields(session))
        ),
    )
    _register(services, call, logged.session)
    if logged.db is None:
        return HookResult({}, note=f"{logged.note}; no context")
    if not prompt.strip():
        return HookResult({}, note=f"{logged.note} empty prompt")
    embedder = services.embedder()
    started = time.perf_counter()
    pack = build_context(
        logged.db,
        embedder,
        prompt[:MAX_QUERY_CHARS],
        project=logged.session.project,
        task_id=logged.session.task_id,
        budget=services.settings.context_budget,
        activity=_others(services, logged.db, logged.session),
    )
    context_ms = (time.perf_counter() - started) * 1000
    return HookResult(
        _additional_context("BeforeAgent", pack.text),
        note=f"{logged.note} context={len(pack.items)} items/{pack.token_count} tokens in {context_ms:.0f}ms",
    )


def after_tool(services: HookServices, call: HookCall) -> HookResult:
    """Log a tool call: a shell command with its output and exit code, other tools with a result summary."""
    tool_name = str(call.payload.get("tool_name") or "unknown")
    tool_input = call.payload.get("tool_input")
    tool_input = tool_input if isinstance(tool_input, dict) else {"value": tool_input}
    response = call.payload.get("tool_response")
    written: list[str] = []  # files the call wrote (the shell's are not known)
    if tool_name == SHELL_TOOL:
        outcome = gemini_events.parse_shell_outcome(response)
        output = audit.prepare_output(
            stdout=outcome.output,
            return_code=outcome.exit_code,
            success=outcome.success,
            error=_join(outcome.error, f"signal {outcome.signal}" if outcome.signal else None),
        )
        command: str | None = str(tool_input.get("command") or "")
        summary: str | None = None
        note = f" exit={outcome.exit_code} truncated={output.truncated}"
    else:
        summary, error = _tool_summary(response)
        path = tool_input.get("file_path") if tool_name in WRITE_TOOLS and error is None else None
        written = [path] if isinstance(path, str) and path.strip() else []
        output = audit.prepare_output(success=error is None, error=error, files_written=written)
        command = None
        note = f" tool={tool_name}"

    def record(session: _Session) -> audit.CommandRecord:
        exchange = audit.prepare_exchange(
            prompt=None,
            response=summary if command is None else None,
            command=command,
            kind="tool" if command is None else "shell",
            **_tool_fields(session, call, tool_input),
        )
        return audit.CommandRecord(exchange, output)

    logged = _log_or_spool(services, call, record)
    if logged.db is not None:
        note += _queue_refresh(services, logged.session, written)
    return HookResult({}, note=logged.note + ("" if logged.db is None else note))


def _queue_refresh(services: HookServices, session: _Session, written: list[str]) -> str:
    """Queue the files a tool wrote for a background re-index in the warm process (returns at once)."""
    freshener = getattr(services, "freshener", None)  # gemini.freshness.Freshener; None outside kb serve
    if freshener is None or session.project is None or not written:
        return ""
    freshener.queue_files(session.project, [os.path.join(session.cwd or "", path) for path in written])
    return f" refresh-queued={len(written)}"


def _session_fields(session: _Session) -> dict[str, Any]:
    return {
        "task_id": session.task_id,
        "session_id": session.session_id,
        "project_id": session.project_id,
        "agent_id": session.agent_id,
        "agent_mode": AGENT_MODE,
    }


def _tool_fields(session: _Session, call: HookCall, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {
        **_session_fields(session),
        "tool_name": str(call.payload.get("tool_name") or "unknown"),
        "tool_input": _shrink(tool_input),
    }


def after_agent(services: HookServices, call: HookCall) -> HookResult:
    """Log the turn's response and the token usage of its model calls (from the transcript)."""
    raw = call.payload.get("prompt_response")
    response = raw if isinstance(raw, str) else gemini_events.text_of(raw)
    calls, problem = _turn_usage(call.payload.get("transcript_path"))

    def record(session: _Session) -> audit.ExchangeRecord:
        usage = tuple(
            audit.prepare_usage(
                request_type=USAGE_REQUEST_TYPE,
                model=model_call.model,
                prompt_tokens=model_call.input_tokens,
                response_tokens=model_call.output_tokens + model_call.thoughts_tokens,
                total_tokens=model_call.total_tokens,
                task_id=session.task_id,
            )
            for model_call in calls
        )
        exchange = audit.prepare_exchange(prompt=None, response=response, kind="prompt", **_session_fields(session))
        return audit.ExchangeRecord(exchange, usage)

    logged = _log_or_spool(services, call, record)
    tokens = sum(c.total_tokens for c in calls)
    return HookResult({}, note=f"{logged.note} model_calls={len(calls)} tokens={tokens}{problem}")


def session_end(services: HookServices, call: HookCall) -> HookResult:
    """Close the session's task (a resume reopens it), propose its trail's facts; spool it if the database is down."""
    reason = str(call.payload.get("reason") or "exit")

    def closing(session: _Session) -> spool.SessionClosing:
        return spool.SessionClosing(session.task_id, session.owner, f"Gemini CLI session ended ({reason})")

    try:
        db = services.database()
        session = _session(db, call, open_task=False)
        spool.store_entry(db, closing(session))
        note = f"task={session.task_id} reason={reason} {services.propose_trail_facts(session.task_id)}"
    except DatabaseError as exc:
        session = _offline_session(call)
        path = spool.spool_entry(services.settings.spool_dir, closing(session))
        note = f"database unavailable, closing spooled to {path.name}: {first_line(exc)}"
    gemini_session.forget_session(services.settings.home, call.gemini_pid, session.session_id)
    return HookResult({}, note=note)


HANDLERS: dict[str, Callable[[HookServices, HookCall], HookResult]] = {
    "SessionStart": session_start,
    "BeforeAgent": before_agent,
    "AfterTool": after_tool,
    "AfterAgent": after_agent,
    "SessionEnd": session_end,
}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def session_digest(db: Database, project: str | None) -> str:
    """A short Markdown digest for a new session: pinned / well-established facts and recent decisions,
    of ``project`` and of the whole store (facts recorded without a project); newest first."""
    from knowledgebase.facts import list_facts

    facts = [f for f in list_facts(db, limit=DIGEST_SCAN) if f.project_id is None]
    if project is not None:
        with contextlib.suppress(NotFound):
            facts = list_facts(db, project=project, limit=DIGEST_SCAN) + facts
    facts.sort(key=lambda f: f.id, reverse=True)
    decisions = [f for f in facts if "decision" in f.fact_label.lower()][:DIGEST_DECISIONS]
    chosen = {f.id for f in decisions}
    established = sorted(
        (f for f in facts if f.id not in chosen and (f.pinned or f.effective_confidence >= DIGEST_MIN_CONFIDENCE)),
        key=lambda f: (not f.pinned, -f.effective_confidence),
    )[:DIGEST_FACTS]
    if not established and not decisions:
        return ""
    scope = f"project {project}" if project else "this store"
    lines = [
        f"# Knowledgebase digest for {scope}",
        "",
        "Shared memory from earlier sessions and other agents. Search it with the knowledgebase MCP tools; "
        "record what you learn with remember.",
    ]
    if established:
        lines += ["", "## Established facts", ""]
        lines += [_fact_line(f) for f in established]
    if decisions:
        lines += ["", "## Recent decisions", ""]
        lines += [_fact_line(f) for f in decisions]
    return "\n".join(lines) + "\n"


def _others(services: HookServices, db: Database, session: _Session) -> Any:
    """What the other agents do on the session's project (None without a project)."""
    from knowledgebase.search.activity import active_work

    if session.project is None:
        return None
    minutes = services.settings.active_minutes
    return active_work(db, session.project, exclude_task_id=session.task_id, minutes=minutes)


def _active_work(services: HookServices, db: Database, session: _Session) -> str:
    from knowledgebase.search.activity import render_active_work

    work = _others(services, db, session)
    return render_active_work(work) if work is not None else ""


def _fact_line(fact: Any) -> str:
    pinned = "pinned, " if fact.pinned else ""
    value = " ".join(str(fact.fact_value).split())
    if len(value) > 300:
        value = value[:297] + "..."
    return f"- **{' '.join(fact.fact_label.split())}**: {value} ({pinned}{fact.citation()})"


def _turn_usage(transcript_path: Any) -> tuple[list[gemini_events.ModelCall], str]:
    """The model calls of the turn, and a note when the transcript could not be read."""
    if not isinstance(transcript_path, str) or not transcript_path:
        return [], " transcript=missing"
    try:
        return gemini_events.turn_model_calls(transcript_path), ""
    except FileNotFoundError:
        return [], " transcript=not-found"
    except OSError as exc:
        return [], f" transcript=unreadable({exc.strerror})"


def _tool_summary(response: Any) -> tuple[str, str | None]:
    """A tool's result as a short text, and its error message if it failed."""
    if not isinstance(response, dict):
        return audit.redact_and_clip(gemini_events.text_of(response), MAX_SUMMARY_CHARS)[0], None
    error = response.get("error")
    error_text = gemini_events.text_of(error.get("message") if isinstance(error, dict) else error) or None
    content = response.get("llmContent")
    if content is None:
        content = response.get("returnDisplay")
    text = gemini_events.unwrap_untrusted(gemini_events.text_of(content))
    return audit.redact_and_clip(text, MAX_SUMMARY_CHARS)[0], error_text


def _shrink(value: Any) -> Any:
    """A tool input redacted as a whole (secret-named keys, argv flags), with long strings (file contents
    to write, say) then cut to MAX_INPUT_STRING_CHARS."""
    # first cut to 4x the limit (bounding the work; those cuts fall in the part the final cut drops)
    return _clip_strings(redact_value(_clip_strings(value, 4 * MAX_INPUT_STRING_CHARS)), MAX_INPUT_STRING_CHARS)


def _clip_strings(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return audit.clip_text(value, limit)[0]
    if isinstance(value, dict):
        return {k: _clip_strings(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip_strings(v, limit) for v in value]
    return value


def _join(*parts: str | None) -> str | None:
    text = "; ".join(p for p in parts if p)
    return text or None
