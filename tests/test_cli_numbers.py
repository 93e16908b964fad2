"""Numbers out of range and a server lost mid-command: one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from knowledgebase import store
from knowledgebase.config import MAX_DB_INT
from knowledgebase.coordination import keypool, taskqueue
from knowledgebase.db import Database
from knowledgebase.errors import InputError
from tests.test_cli_store import KB, _env
from tests.test_ingest import function


def run(db_url: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = _env(KB_HOME=str(home), KB_DATABASE_URL=db_url, GEMINI_API_KEY_9="x")
    return subprocess.run([*KB, *args], env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("tasks", "create", "--priority", "99999999999"), "--priority"),
        (("tasks", "create", "--priority", "-99999999999"), "--priority"),
        (("keys", "add", "team-1", "--env", "GEMINI_API_KEY_9", "--rpm", "99999999999"), "--rpm"),
        (("keys", "add", "team-1", "--env", "GEMINI_API_KEY_9", "--tpm", "99999999999"), "--tpm"),
        (("tasks", "claim", "--lease", "99999999999999"), "--lease"),
        (("tasks", "heartbeat", "T-1", "--owner", "me", "--lease", "99999999999999"), "--lease"),
        (("tasks", "list", "--limit", "99999999999999999999"), "--limit"),
    ],
)
def test_an_out_of_range_option_is_a_usage_error(
    db_url: str, tmp_path: Path, args: tuple[str, ...], option: str
) -> None:
    proc = run(db_url, tmp_path, *args)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("Error: Invalid value for ") and f"'{option}'" in last
    assert "is not in the range" in proc.stderr


def test_a_number_its_column_cannot_hold_is_an_input_error_from_the_database(db: Database) -> None:
    refused = pytest.raises(InputError, match="out of range for the database: integer out of range; give a smaller one")
    with refused, db.connection() as conn:  # past every check: the database refuses it, the message says what to do
        store.insert_task_if_missing(conn, "T-1", project_id=None, title="", context={}, priority=MAX_DB_INT + 1)


def test_the_library_refuses_numbers_its_columns_cannot_hold(db: Database) -> None:
    with pytest.raises(InputError, match="priority must lie between"):
        taskqueue.create_task(db, "T-1", priority=MAX_DB_INT + 1)
    with pytest.raises(InputError, match="more than 0 seconds and at most 31622400"):
        taskqueue.claim_next_task(db, owner="me", lease_seconds=99999999999999)
    with pytest.raises(InputError, match="rpm limit must be positive and at most"):
        keypool.add_key(db, "team-1", env_var="GEMINI_API_KEY_9", rpm=MAX_DB_INT + 1)
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM tasks").fetchone() == (0,)


def test_a_server_stopped_mid_populate_is_one_line(tmp_path: Path) -> None:
    from knowledgebase.db.embedded import ensure_server, stop_server

    root = tmp_path / "proj"
    root.mkdir()
    for i in range(40):
        (root / f"m{i}.py").write_text("\n\n".join(function(f"f{i}_{j}") for j in range(6)))
    home = tmp_path / "home"
    env = _env(KB_HOME=str(home), KB_INGEST_BATCH_CHUNKS="16")  # many batches: the server goes in the middle
    subprocess.run([*KB, "init"], env=env, check=True, capture_output=True, timeout=120)
    url = ensure_server(home / "pgdata").url("knowledgebase")
    proc = subprocess.Popen([*KB, "populate", str(root)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            deadline = time.monotonic() + 120
            while conn.execute("SELECT count(*) FROM file_chunks").fetchone() == (0,) and time.monotonic() < deadline:
                time.sleep(0.05)
        stop_server(home / "pgdata")  # a fast shutdown: every backend gets AdminShutdown
        _, stderr = proc.communicate(timeout=180)
    finally:
        proc.kill()
        stop_server(home / "pgdata")
    assert proc.returncode == 1 and "Traceback" not in stderr
    noise = ("discarding closed connection", "error connecting in", "Traceback")
    assert not any(part in stderr for part in noise), stderr
    messages = [line for line in stderr.splitlines() if "error" in line.lower()]  # not the progress lines
    assert len(messages) == 1 and messages[0].startswith("kb: error: cannot use the database at"), stderr
    assert "Check that the server is running" in messages[0]
