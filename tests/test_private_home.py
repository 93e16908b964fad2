"""KB_HOME and what the package writes there are its owner's alone: folders 0700, logs 0600, and an
embedded server started by root neither opens KB_HOME (or the folders above it) to other users nor
leaves its trusted socket where they can connect."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from knowledgebase.db.embedded import ensure_server, stop_server
from knowledgebase.util.private_files import open_private_log

BIN = Path(sys.executable).parent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_fresh_kb_home_and_the_hook_log_are_private(tmp_path: Path) -> None:
    home = tmp_path / "new" / "kbhome"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "GEMINI_"))}
    env["KB_HOME"] = str(home)
    done = subprocess.run([str(BIN / "kb-hook"), "NoSuchEvent"], input=b"{}", capture_output=True, env=env, timeout=60)
    assert done.returncode == 0 and json.loads(done.stdout) == {}
    assert _mode(home) == 0o700 and _mode(home / "logs") == 0o700
    assert _mode(home / "logs" / "hooks.log") == 0o600


def test_a_log_others_could_read_is_tightened_when_next_written(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "serve.log"
    log.parent.mkdir()
    log.write_text("an older line\n")
    log.chmod(0o644)
    with open_private_log(log) as handle:
        handle.write(b"a new line\n")
    assert _mode(log) == 0o600 and log.read_text() == "an older line\na new line\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root makes pgserver run PostgreSQL as another user")
def test_a_server_first_started_by_root_keeps_kb_home_closed_to_others(tmp_path: Path) -> None:
    top = tmp_path / "top"
    top.mkdir(mode=0o700)
    home = top / ("deep-" * 20)  # long enough that the socket cannot live in pgdata
    pgdata = home / "pgdata"
    server = ensure_server(pgdata)
    try:
        assert not str(server.socket_dir).startswith(str(pgdata))  # the socket is elsewhere
        assert _mode(home) & 0o007 == 0 and _mode(home) & 0o070 in (0o000, 0o010)  # nobody else may even list it
        assert home.stat().st_gid == os.getegid()  # the group PostgreSQL runs with (root's), only to pass
        assert _mode(top) & 0o004 == 0  # folders above gain at most the right to pass, never to read
        assert _mode(server.socket_dir / f".s.PGSQL.{server.port}") & 0o077 == 0  # the trusted socket is closed
        with psycopg.connect(server.agent_url()) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("kb_agent_login",)
        with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
            conn.execute("CHECKPOINT")  # the server still reaches its files with KB_HOME closed
    finally:
        stop_server(pgdata)
