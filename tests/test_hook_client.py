"""The hook process (`kb-hook EVENT`, `kb hook EVENT`) and the warm process behind it, as Gemini CLI runs them.

Every test runs the real executables in subprocesses: bad input and a database that is down must give
`{}` and exit 0 (fail open); a cold start must answer and say so in the log.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.errors import UnsafeSocket
from knowledgebase.facts import add_fact
from knowledgebase.gemini import serve
from knowledgebase.gemini.warm_embedder import WarmProcessEmbedder
from knowledgebase.gemini.warm_protocol import check_peer, private_socket_dir, server_address

BIN = Path(sys.executable).parent
SESSION = "5e55-10n"
PAYLOAD = {"session_id": SESSION, "transcript_path": "/nonexistent/t.jsonl", "cwd": "/tmp", "hook_event_name": "x"}


def run_hook(
    env: dict[str, str], event: str, stdin: bytes | str, *, via_kb: bool = False
) -> subprocess.CompletedProcess:
    command = [str(BIN / "kb"), "hook", event] if via_kb else [str(BIN / "kb-hook"), event]
    data = stdin.encode() if isinstance(stdin, str) else stdin
    return subprocess.run(command, input=data, capture_output=True, env=env, timeout=60)


def hook_log(env: dict[str, str]) -> list[str]:
    path = Path(env["KB_HOME"]) / "logs" / "hooks.log"
    return path.read_text().splitlines() if path.exists() else []


def _stop(env: dict[str, str]) -> None:
    answer = serve.request(env, "status")
    if answer is None:
        return
    pid = answer["status"]["pid"]
    serve.stop_server(env)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def hook_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment like the one `kb gemini install` gives hooks (the database is set per test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "GEMINI_"))}
    env.update({"KB_HOME": str(tmp_path / "kbhome"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    yield env
    _stop(env)


@pytest.mark.parametrize(
    "stdin",
    [b"", b"{not json", json.dumps(PAYLOAD)[:25].encode(), b"[1, 2, 3]", b"\xff\xfe\x00", b'"a string"'],
    ids=["empty", "malformed", "truncated", "array", "binary", "string"],
)
def test_bad_input_prints_empty_object_and_exits_zero(hook_env: dict[str, str], stdin: bytes) -> None:
    hook_env["KB_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    result = run_hook(hook_env, "BeforeAgent", stdin)
    assert result.returncode == 0
    assert json.loads(result.stdout) == {}
    assert b"answered {}" in result.stderr
    (line,) = hook_log(hook_env)
    assert " BeforeAgent " in line and " fail-open " in line
    assert not os.path.exists(server_address(hook_env))  # nothing was started for input that cannot be used


@pytest.mark.parametrize("via_kb", [False, True], ids=["kb-hook", "kb hook"])
def test_unknown_event_fails_open(hook_env: dict[str, str], via_kb: bool) -> None:
    result = run_hook(hook_env, "PreCompress", json.dumps(PAYLOAD), via_kb=via_kb)
    assert result.returncode == 0 and json.loads(result.stdout) == {}
    assert b"unknown hook event 'PreCompress'" in result.stderr
    assert "unknown hook event" in hook_log(hook_env)[-1]


def test_database_down_spools_the_events_quickly_after_a_cold_start(hook_env: dict[str, str]) -> None:
    hook_env["KB_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    first = run_hook(hook_env, "BeforeAgent", json.dumps({**PAYLOAD, "prompt": "hello"}))
    assert first.returncode == 0 and json.loads(first.stdout) == {}
    second = run_hook(hook_env, "AfterTool", json.dumps({**PAYLOAD, "tool_name": "glob"}))
    assert second.returncode == 0 and json.loads(second.stdout) == {}
    cold, warm = hook_log(hook_env)
    assert " cold " in cold and " warm " in warm
    assert "database unavailable, spooled" in cold and "database unavailable, spooled" in warm
    assert len(list((Path(hook_env["KB_HOME"]) / "spool").glob("*.json"))) == 2  # written when it is back


def test_cold_start_then_warm_calls_log_and_inject_context(
    hook_env: dict[str, str], db_url: str, db: Database, tmp_path: Path
) -> None:
    project = tmp_path / "billing"
    project.mkdir()
    with db.connection() as conn:
        store.ensure_project(conn, "billing", str(project))
    hook_env.update({"KB_DATABASE_URL": db_url, "KB_SERVE_IDLE_TIMEOUT": "600"})
    payload = {**PAYLOAD, "cwd": str(project)}

    start = run_hook(hook_env, "SessionStart", json.dumps({**payload, "source": "startup"}))
    assert start.returncode == 0 and json.loads(start.stdout) == {}, start.stderr  # nothing known yet
    # a fact recorded with the warm process's model, as the MCP server records them
    embedder = WarmProcessEmbedder(Settings.from_env(hook_env), hook_env)
    add_fact(
        db,
        embedder,
        label="invoice numbering",
        value="invoice numbers come from the ledger sequence",
        project="billing",
        confidence=0.9,
        pinned=True,
    )
    before = run_hook(hook_env, "BeforeAgent", json.dumps({**payload, "prompt": "how are invoices numbered?"}))
    context = json.loads(before.stdout)["hookSpecificOutput"]["additionalContext"]
    assert "ledger sequence" in context
    tool = run_hook(
        hook_env,
        "AfterTool",
        json.dumps(
            {
                **payload,
                "tool_name": "run_shell_command",
                "tool_input": {"command": "false"},
                "tool_response": {"llmContent": "Output: (empty)\nExit Code: 1"},
            }
        ),
    )
    assert json.loads(tool.stdout) == {}
    resumed = run_hook(hook_env, "SessionStart", json.dumps({**payload, "source": "resume"}), via_kb=True)
    assert "ledger sequence" in json.loads(resumed.stdout)["hookSpecificOutput"]["additionalContext"]
    end = run_hook(hook_env, "SessionEnd", json.dumps({**payload, "reason": "exit"}), via_kb=True)
    assert json.loads(end.stdout) == {}

    lines = hook_log(hook_env)
    events = ["SessionStart", "BeforeAgent", "AfterTool", "SessionStart", "SessionEnd"]
    assert [line.split()[1] for line in lines] == events
    assert " cold ok " in lines[0] and all(" warm ok " in line for line in lines[1:])
    with db.connection() as conn:
        rows = store.list_command_log(conn, task_id=f"gemini-{SESSION}")
        assert [r.kind for r in rows] == ["prompt", "shell"]
        assert store.list_command_output(conn, rows[1].id)[0].return_code == 1
        assert store.get_task(conn, f"gemini-{SESSION}").status == "done"
    status = serve.request(hook_env, "status")
    assert status is not None and status["status"]["requests"] == 6 and status["status"]["model_ready"]


def test_concurrent_cold_hooks_share_one_warm_process_which_exits_when_idle(
    hook_env: dict[str, str], db_url: str
) -> None:
    hook_env.update({"KB_DATABASE_URL": db_url, "KB_SERVE_IDLE_TIMEOUT": "3"})
    body = json.dumps({**PAYLOAD, "tool_name": "glob", "tool_response": {"llmContent": "3 files"}}).encode()
    procs = [
        subprocess.Popen(
            [str(BIN / "kb-hook"), "AfterTool"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=hook_env,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(body, timeout=60) for p in procs]
    assert all(json.loads(out) == {} and p.returncode == 0 for p, (out, _) in zip(procs, outputs, strict=True))
    assert all(" ok " in line for line in hook_log(hook_env)), hook_log(hook_env)
    serve_log = (Path(hook_env["KB_HOME"]) / "logs" / "serve.log").read_text()
    assert serve_log.count("listening on") == 1
    address = server_address(hook_env)
    deadline = time.monotonic() + 60
    while os.path.exists(address) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not os.path.exists(address), "the warm process did not exit after its idle timeout"
    assert "idle for" in (Path(hook_env["KB_HOME"]) / "logs" / "serve.log").read_text()


def test_the_warm_process_address_depends_on_the_store_not_on_spelling(tmp_path: Path) -> None:
    from knowledgebase.config import DEFAULT_EMBED_MODEL
    from knowledgebase.gemini.warm_protocol import DEFAULT_EMBED_MODEL as HOOK_DEFAULT

    assert HOOK_DEFAULT == DEFAULT_EMBED_MODEL
    home = {"KB_HOME": str(tmp_path)}
    assert server_address(home) == server_address({**home, "KB_EMBED_MODEL": DEFAULT_EMBED_MODEL})
    assert server_address(home) != server_address({**home, "KB_DATABASE_URL": "postgresql://h/db"})
    assert server_address(home) != server_address({"KB_HOME": str(tmp_path / "other")})
    deep = {"KB_HOME": str(tmp_path / ("d" * 120))}
    assert len(server_address(deep).encode()) <= 100


def test_the_hook_entry_imports_only_the_standard_library() -> None:
    """Gemini CLI waits for every hook: its process must never pay for psycopg, numpy or torch."""
    package_root = Path(__file__).resolve().parents[1]
    probe = (
        "import sys, knowledgebase.gemini.hook_client, knowledgebase.hook_client\n"
        "top = {m.split('.')[0] for m in sys.modules}\n"
        "third_party = top - set(sys.stdlib_module_names) - {'knowledgebase', '__main__'}\n"
        "print(sorted(third_party))"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-P", "-c", probe],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(package_root), "PATH": os.environ.get("PATH", "")},
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "[]"


def test_settings_written_before_the_layout_change_still_run_the_hook(hook_env: dict[str, str]) -> None:
    """`python -S -P -m knowledgebase.hook_client EVENT` was the command `kb gemini install` wrote."""
    package_root = Path(__file__).resolve().parents[1]
    env = {**hook_env, "PYTHONPATH": str(package_root)}
    done = subprocess.run(
        [sys.executable, "-S", "-P", "-m", "knowledgebase.hook_client", "NoSuchEvent"],
        input=json.dumps(PAYLOAD).encode(),
        capture_output=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0 and json.loads(done.stdout) == {}
    assert b"unknown hook event 'NoSuchEvent'" in done.stderr


# --- the socket belongs to this user: its directory, and the process on the other end ---

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="another uid can only be taken by root")

# listens on argv[1] as another user (bound as root, then setuid before listen: SO_PEERCRED reports the
# listener's uid at listen()), and prints how many bytes a client sent it
IMPOSTOR = """
import os, socket, sys
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
os.setgid(65534); os.setuid(65534)
sock.listen(1)
print("listening", flush=True)
sock.settimeout(30)
conn, _ = sock.accept()
conn.settimeout(5)
received = b""
try:
    while chunk := conn.recv(65536):
        received += chunk
except OSError:
    pass
print(len(received), flush=True)
try:
    conn.sendall(b'{"ok": true, "output": {"hookSpecificOutput": {"additionalContext": "injected"}}}')
except OSError:
    pass
"""


@as_root
def test_the_hook_sends_nothing_to_a_warm_process_of_another_user(hook_env: dict[str, str]) -> None:
    address = server_address(hook_env)
    os.makedirs(os.path.dirname(address), mode=0o700)
    impostor = subprocess.Popen([sys.executable, "-c", IMPOSTOR, address], stdout=subprocess.PIPE, text=True)
    try:
        assert impostor.stdout is not None and impostor.stdout.readline().strip() == "listening"
        result = run_hook(hook_env, "BeforeAgent", json.dumps({**PAYLOAD, "prompt": "my secret prompt"}))
        assert result.returncode == 0 and json.loads(result.stdout) == {}  # no injected context
        assert f"runs as uid {NOBODY}, not {os.getuid()}".encode() in result.stderr
        out, _ = impostor.communicate(timeout=30)
        assert out.strip() == "0"  # not one byte of the prompt
    finally:
        impostor.kill()
        impostor.wait()


@as_root
def test_a_socket_directory_of_another_user_is_refused(hook_env: dict[str, str]) -> None:
    address = server_address(hook_env)
    run_dir = os.path.dirname(address)
    os.makedirs(run_dir, mode=0o700)
    os.chown(run_dir, NOBODY, NOBODY)
    try:
        result = run_hook(hook_env, "BeforeAgent", json.dumps({**PAYLOAD, "prompt": "hello"}))
        assert result.returncode == 0 and json.loads(result.stdout) == {}
        assert f"belongs to uid {NOBODY}, not to you".encode() in result.stderr
        assert os.listdir(run_dir) == []  # no warm process was started there either
        with pytest.raises(UnsafeSocket, match="belongs to uid"):
            serve.serve(Settings.from_env(hook_env), hook_env, idle_timeout_s=1)
        with pytest.raises(UnsafeSocket, match="belongs to uid"):
            serve.request(hook_env, "status")
    finally:
        os.chown(run_dir, 0, 0)


def test_a_socket_directory_others_may_write_into_is_refused_and_a_readable_one_tightened(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    with pytest.raises(UnsafeSocket, match="writable by other users"):
        private_socket_dir(str(loose), create=True)
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    with pytest.raises(UnsafeSocket, match="not a plain directory"):
        private_socket_dir(str(link), create=False)
    readable = tmp_path / "readable"
    readable.mkdir()
    readable.chmod(0o755)  # a KB_HOME/run made before the check: nobody else could have written there
    private_socket_dir(str(readable), create=True)
    assert readable.stat().st_mode & 0o777 == 0o700
    fresh = tmp_path / "a" / "fresh"
    private_socket_dir(str(fresh), create=True)
    assert fresh.stat().st_mode & 0o777 == 0o700 and fresh.stat().st_uid == os.getuid()


def test_a_deep_kb_home_puts_the_socket_in_a_private_directory(
    hook_env: dict[str, str], tmp_path: Path
) -> None:
    hook_env["KB_HOME"] = str(tmp_path / ("d" * 120))
    hook_env.pop("XDG_RUNTIME_DIR", None)
    address = server_address(hook_env)
    assert os.path.dirname(address) == f"/tmp/kb-{os.getuid()}"
    hook_env["XDG_RUNTIME_DIR"] = str(tmp_path / "xdg")
    assert server_address(hook_env) == str(tmp_path / "xdg" / "kb" / os.path.basename(address))


def test_the_peer_check_names_the_other_uid() -> None:
    left, right = socket.socketpair()
    with left, right:
        check_peer(left)  # this process on both ends
        with pytest.raises(UnsafeSocket, match=f"runs as uid {os.getuid()}, not {os.getuid() + 1}"):
            check_peer(left, expected_uid=os.getuid() + 1)


@as_root
def test_the_warm_process_answers_nothing_to_a_client_of_another_user(tmp_path: Path) -> None:
    import tempfile

    from tests.support import HashingEmbedder

    # opened up for this test only (tmp_path is private), so that another uid can reach the socket
    run_dir = Path(tempfile.mkdtemp(prefix="kb-peer-", dir="/tmp"))
    run_dir.chmod(0o711)
    address = str(run_dir / "serve.sock")
    server = serve.WarmServer(address, serve.WarmStore(Settings(home=tmp_path), HashingEmbedder()), 600)
    os.chmod(address, 0o666)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    client = (
        "import os, socket, sys\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
        "data = b''\n"
        "try:\n"  # refused at once: the send may already find the socket closed
        '    s.sendall(b\'{"op": "status"}\\n\'); s.shutdown(socket.SHUT_WR)\n'
        "    while chunk := s.recv(65536): data += chunk\n"
        "except (ConnectionResetError, BrokenPipeError): pass\n"
        "print(repr(data))\n"
    )
    try:
        other = subprocess.run([sys.executable, "-c", client, address], capture_output=True, text=True, timeout=30)
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "b''"
        as_me = client.replace("os.setgid(65534); os.setuid(65534)\n", "")
        mine = subprocess.run([sys.executable, "-c", as_me, address], capture_output=True, text=True, timeout=30)
        assert '"ok": true' in mine.stdout and '"pid"' in mine.stdout
    finally:
        server.shutdown()
        server.server_close()
        os.unlink(address)
        run_dir.rmdir()
