"""The hook fast path: ``kb-hook EVENT`` (also ``kb hook EVENT``), run by Gemini CLI on every event.

Gemini CLI waits for a hook, so this process imports only the standard library: it validates the
JSON on stdin, hands it to the warm process (``kb serve``, on a Unix socket under ``KB_HOME/run``)
and prints that process's answer. With nothing warm it starts ``kb serve`` detached and waits for
it, within the hook's time budget; the log line then says ``cold``.

It never blocks the agent because of its own failure: bad or truncated JSON, an unknown event, a
database that is down or a timeout all print ``{}`` and exit 0, with the reason on stderr and in
``KB_HOME/logs/hooks.log``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping

from knowledgebase.gemini.warm_protocol import PROTOCOL, HookFailure, connect_warm_process, exchange, log_path
from knowledgebase.util.private_files import open_private_log

HOOK_EVENTS = ("SessionStart", "BeforeAgent", "AfterTool", "AfterAgent", "SessionEnd")
# The timeout `kb gemini install` writes for each hook (ms). Events that need the embedding model
# get room for a cold start (importing torch and loading the model takes seconds).
HOOK_TIMEOUTS_MS = {
    "SessionStart": 30_000,
    "BeforeAgent": 30_000,
    "AfterTool": 15_000,
    "AfterAgent": 15_000,
    "SessionEnd": 15_000,
}
MARGIN_MS = 1_500  # answer this long before Gemini CLI's own timeout would kill us


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``kb-hook EVENT``: prints one JSON object and always exits 0."""
    args = sys.argv[1:] if argv is None else argv
    event = args[0] if args else ""
    output = run_hook(event, sys.stdin.buffer.read(), os.environ)
    sys.stdout.write(json.dumps(output) + "\n")
    sys.stdout.flush()
    sys.exit(0)


def run_hook(event: str, raw: bytes, env: Mapping[str, str]) -> dict:
    """The JSON object to print for hook ``event`` with stdin ``raw``; ``{}`` on any failure."""
    started = time.monotonic()
    state = "warm"
    session = "-"
    try:
        if event not in HOOK_EVENTS:
            raise HookFailure(f"unknown hook event {event!r}; known: {', '.join(HOOK_EVENTS)}")
        payload = _parse_payload(raw)
        session = str(payload.get("session_id") or "-")[:8]
        budget_s = _budget_ms(event, env) / 1000
        deadline = started + budget_s
        header = {
            "op": "hook",
            "protocol": PROTOCOL,
            "event": event,
            "gemini_pid": os.getppid(),
            "project": env.get("KB_PROJECT") or None,
            "project_dir": env.get("GEMINI_PROJECT_DIR") or None,
            "agent_id": env.get("KB_AGENT_ID") or None,
        }
        sock, cold = connect_warm_process(env, deadline)
        state = "cold" if cold else "warm"
        answer = exchange(sock, header, raw, deadline)
        if not answer.get("ok"):
            raise HookFailure(str(answer.get("error") or "the warm process reported a failure"))
        output = answer.get("output")
        if not isinstance(output, dict):
            raise HookFailure("the warm process answered without an output object")
        _log(env, event, session, state, "ok", started, str(answer.get("note") or ""))
        return output
    except Exception as exc:  # fail open: whatever went wrong, the agent carries on
        state = "cold" if getattr(exc, "cold", False) else state
        reason = str(exc) or type(exc).__name__
        sys.stderr.write(f"kb-hook {event or '?'}: {reason} (answered {{}})\n")
        _log(env, event or "?", session, state, "fail-open", started, reason)
        return {}


def _parse_payload(raw: bytes) -> dict:
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HookFailure(f"stdin is not valid JSON ({exc}); {len(raw)} bytes received") from None
    if not isinstance(payload, dict):
        raise HookFailure(f"stdin holds a JSON {type(payload).__name__}, not an object")
    return payload


def _budget_ms(event: str, env: Mapping[str, str]) -> float:
    raw = env.get("KB_HOOK_TIMEOUT_MS")
    try:
        timeout = float(raw) if raw else HOOK_TIMEOUTS_MS[event]
    except ValueError:
        timeout = HOOK_TIMEOUTS_MS[event]
    return max(timeout - MARGIN_MS, timeout / 2)


def _log(env: Mapping[str, str], event: str, session: str, state: str, status: str, started: float, note: str) -> None:
    """One line per hook call in KB_HOME/logs/hooks.log; a log that cannot be written is skipped."""
    elapsed_ms = (time.monotonic() - started) * 1000
    event = "".join(event.split())[:40] or "?"  # an event name from argv: keep the line one line
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    note = " ".join(note.split())
    line = f"{stamp} {event} session={session} {state} {status} {elapsed_ms:.0f}ms {note}".rstrip() + "\n"
    try:
        with open_private_log(log_path(env)) as handle:
            handle.write(line.encode("utf-8", "backslashreplace"))
    except Exception as exc:
        sys.stderr.write(f"kb-hook: cannot write the hook log: {exc}\n")


if __name__ == "__main__":
    main()
