"""The warm process's socket protocol: where it listens, how to reach (or start) it, one request.

A request is one JSON header line (``{"op": ..., "protocol": PROTOCOL, ...}``) and a body; the answer
is one JSON object. The hook entry (``hook_client``), the MCP server's embedder (``warm_embedder``)
and the warm process itself (``serve``) share this module, which imports only the standard library.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import sys
import time
import zlib
from collections.abc import Mapping

from knowledgebase.errors import UnsafeSocket
from knowledgebase.util.private_files import make_private_dir, open_private_log

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

    Processes configured for different stores or models never share a warm process. The socket lies in
    a directory only this user may enter (see ``private_socket_dir``): ``KB_HOME/run``, or, when that
    path would overflow ``sun_path``, ``$XDG_RUNTIME_DIR/kb`` or ``/tmp/kb-<uid>``.
    """
    from knowledgebase import __version__

    home = home_dir(env)
    model = env.get("KB_EMBED_MODEL") or DEFAULT_EMBED_MODEL
    key = "|".join((env.get("KB_DATABASE_URL") or "", model, __version__, str(PROTOCOL)))
    name = f"serve-{zlib.crc32(key.encode()):08x}.sock"
    path = os.path.join(home, "run", name)
    if len(path.encode()) <= _MAX_SOCKET_PATH:
        return path
    # a deep KB_HOME would overflow sun_path: a per-user directory elsewhere, named by home and store
    name = f"kb-{zlib.crc32(f'{home}|{key}'.encode()):08x}.sock"
    runtime = env.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        path = os.path.join(runtime, "kb", name)
        if len(path.encode()) <= _MAX_SOCKET_PATH:
            return path
    return os.path.join("/tmp", f"kb-{os.getuid()}", name)


def private_socket_dir(path: str, *, create: bool) -> None:
    """Make sure ``path`` is a directory only this user can enter before a socket in it is trusted.

    Created with mode 0700 when missing (``create``). A directory owned by another user, a symlink,
    or one that others may write into (where someone else could have put a socket) is refused with
    ``UnsafeSocket``; one of ours that others may only read or enter is tightened to 0700.
    """
    if create:
        make_private_dir(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return  # nothing listens there yet
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeSocket(f"{path} is not a plain directory: remove it (the warm process's socket lives there)")
    if info.st_uid != os.getuid():
        raise UnsafeSocket(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.getuid()}): another user may be "
            "impersonating the warm process; remove it or set KB_HOME to a shorter private path"
        )
    if info.st_mode & 0o022:
        raise UnsafeSocket(
            f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):03o}), so its socket cannot be "
            f"trusted: remove it, or stop anything using it and run chmod 700 {path}"
        )
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket; None where the platform cannot say."""
    option = getattr(socket, "SO_PEERCRED", None)
    if option is None:  # not Linux: the private directory is the only check
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, option, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


def check_peer(sock: socket.socket, expected_uid: int | None = None) -> None:
    """Raise ``UnsafeSocket`` unless the peer of ``sock`` runs as ``expected_uid`` (default: this user)."""
    expected = os.getuid() if expected_uid is None else expected_uid
    uid = peer_uid(sock)
    if uid is not None and uid != expected:
        raise UnsafeSocket(f"the process on the other end of the socket runs as uid {uid}, not {expected}: refused")


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
    """A connection to ``address`` after checking its directory and who listens; None if nothing listens.

    Nothing is sent to a socket that is not provably this user's: ``HookFailure`` instead."""
    try:
        private_socket_dir(os.path.dirname(address), create=False)
    except UnsafeSocket as exc:
        raise HookFailure(str(exc)) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except OSError:
        sock.close()
        return None
    try:
        check_peer(sock)
    except UnsafeSocket as exc:
        sock.close()
        raise HookFailure(str(exc)) from None
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
    with open_private_log(os.path.join(logs, "serve.log")) as log:
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
