"""The warm process's socket protocol: where it listens, how to reach (or start) it, one request.

A request is one JSON header line (``{"op": ..., "protocol": PROTOCOL, ...}``) and a body; the answer
is one JSON object. The hook entry (``hook_client``), the MCP server's embedder (``warm_embedder``)
and the warm process itself (``serve``) share this module, which imports only the standard library.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import zlib
from collections.abc import Mapping

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


def warm_enabled(env: Mapping[str, str]) -> bool:
    """False when ``KB_WARM=off`` keeps command-line processes away from the warm process (hooks ignore it)."""
    return env.get("KB_WARM", "on").strip().lower() not in ("off", "0", "no", "false")


_STARTING: set[str] = set()


def start_server_at_exit(env: Mapping[str, str]) -> None:
    """Start the warm process when this process exits (once per address), for the next command."""
    import atexit

    address = server_address(env)
    if address not in _STARTING:
        _STARTING.add(address)
        atexit.register(start_server, dict(env))


def log_path(env: Mapping[str, str]) -> str:
    return os.path.join(home_dir(env), "logs", "hooks.log")


class HookFailure(Exception):
    """Why a request to the warm process failed (a hook then answers ``{}``, logged, never raised to Gemini CLI);
    ``cold`` if the warm process had to be started first."""

    def __init__(self, message: str, *, cold: bool = False) -> None:
        super().__init__(message)
        self.cold = cold


def try_connect(address: str) -> socket.socket | None:
    """A connection to the warm process at ``address``, or None when nothing listens there."""
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
    sock = try_connect(address)
    if sock is not None:
        return sock, False
    start_server(env)
    while time.monotonic() < deadline:
        time.sleep(POLL_S)
        sock = try_connect(address)
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
