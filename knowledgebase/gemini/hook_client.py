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
import socket
import sys
import time
import zlib
from collections.abc import Mapping

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
POLL_S = 0.02
PROTOCOL = 1
# knowledgebase.config.DEFAULT_EMBED_MODEL, repeated so this module imports only the standard library
DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
_MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def home_dir(env: Mapping[str, str]) -> str:
    """KB_HOME as an absolute path (the platform default only when unset, which `kb gemini install` avoids)."""
    raw = env.get("KB_HOME")
    if raw:
        return os.path.realpath(os.path.expanduser(raw))
    from knowledgebase.config import Settings

    return str(Settings.from_env(env).home)


def server_address(env: Mapping[str, str]) -> str:
    """The Unix socket of the warm process for this store (home, database and model) and code version.

    Processes configured for different stores or models never share a warm process.
    """
    from knowledgebase import __version__

    home = home_dir(env)
    model = env.get("KB_EMBED_MODEL") or DEFAULT_EMBED_MODEL
    key = "|".join((env.get("KB_DATABASE_URL") or "", model, __version__, str(PROTOCOL)))
    name = f"serve-{zlib.crc32(key.encode()):08x}.sock"
    path = os.path.join(home, "run", name)
    if len(path.encode()) <= _MAX_SOCKET_PATH:
        return path
    # a deep KB_HOME would overflow sun_path: fall back to a per-user name in the temp dir
    tag = zlib.crc32(f"{home}|{key}".encode())
    return os.path.join("/tmp", f"kb-{os.getuid()}-{tag:08x}.sock")


def log_path(env: Mapping[str, str]) -> str:
    return os.path.join(home_dir(env), "logs", "hooks.log")


class HookFailure(Exception):
    """Why a hook answered ``{}`` (logged, never raised to Gemini CLI); ``cold`` if it had to start the warm process."""

    def __init__(self, message: str, *, cold: bool = False) -> None:
        super().__init__(message)
        self.cold = cold


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


def _try_connect(address: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    return sock


def connect_warm_process(env: Mapping[str, str], deadline: float) -> tuple[socket.socket, bool]:
    """A connection to the warm process of this store, and whether it had to be started first (cold).

    Raises HookFailure when it does not listen by ``deadline`` (a ``time.monotonic()`` value).
    """
    address = server_address(env)
    sock = _try_connect(address)
    if sock is not None:
        return sock, False
    start_server(env)
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        sock = _try_connect(address)
        if sock is not None:
            return sock, True
    logs = os.path.dirname(log_path(env))
    raise HookFailure(f"the warm process did not come up in time (see {logs}/serve.log)", cold=True)


def start_server(env: Mapping[str, str]) -> None:
    """Start ``kb serve`` detached, logging to ``KB_HOME/logs/serve.log``; it exits when idle."""
    import subprocess

    logs = os.path.dirname(log_path(env))
    os.makedirs(logs, exist_ok=True)
    with open(os.path.join(logs, "serve.log"), "ab") as log:
        subprocess.Popen(
            # -P: the hook runs in the user's project, whose files must not shadow modules
            [sys.executable, "-P", "-m", "knowledgebase", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=dict(env),
            cwd=home_dir(env),
            start_new_session=True,
            close_fds=True,
        )


def exchange(sock: socket.socket, header: dict, raw: bytes, deadline: float) -> dict:
    """Send the request (a JSON header line, then the hook's stdin verbatim) and read the JSON answer."""
    with sock:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HookFailure("timed out before the request was sent")
        sock.settimeout(remaining)
        try:
            sock.sendall(json.dumps(header).encode() + b"\n" + raw)
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                sock.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            raise HookFailure("timed out waiting for the warm process") from None
        except OSError as exc:
            raise HookFailure(f"lost the connection to the warm process: {exc}") from None
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise HookFailure("the warm process sent an answer that is not JSON") from None
    if not isinstance(answer, dict):
        raise HookFailure("the warm process sent an answer that is not an object")
    return answer


def _log(env: Mapping[str, str], event: str, session: str, state: str, status: str, started: float, note: str) -> None:
    """One line per hook call in KB_HOME/logs/hooks.log; a log that cannot be written is skipped."""
    elapsed_ms = (time.monotonic() - started) * 1000
    event = "".join(event.split())[:40] or "?"  # an event name from argv: keep the line one line
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    note = " ".join(note.split())
    line = f"{stamp} {event} session={session} {state} {status} {elapsed_ms:.0f}ms {note}".rstrip() + "\n"
    try:
        path = log_path(env)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(line)
    except Exception as exc:
        sys.stderr.write(f"kb-hook: cannot write the hook log: {exc}\n")


if __name__ == "__main__":
    main()
