"""`kb search` and `kb context` as new processes: answered by the warm process when it runs, else in the
process (which then starts one for the next command), with the same results either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from knowledgebase.db import Database
from knowledgebase.embedding import Embedder
from knowledgebase.gemini.warm_protocol import server_address
from knowledgebase.search.retrieval import search
from tests.retrieval_support import SOURCES, index_files

KB = [sys.executable, "-m", "knowledgebase"]
QUERY = "email the invoice to a customer"


@pytest.fixture
def warm_env(db: Database, db_url: str, real_embedder: Embedder, tmp_path: Path) -> Iterator[dict[str, str]]:
    with db.connection() as conn:
        index_files(conn, real_embedder, "alpha", SOURCES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env |= {"KB_HOME": str(tmp_path / "home"), "KB_DATABASE_URL": db_url, "KB_WARM": "on"}
    yield env
    subprocess.run([*KB, "serve", "--stop"], env=env, capture_output=True, timeout=60)


def _kb(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*KB, *args], env=env, capture_output=True, text=True, timeout=300, cwd="/")
    assert proc.returncode == 0, proc.stderr
    return proc


def _served_requests(env: dict[str, str]) -> int:
    status = json.loads(_kb(env, "serve", "--status", "--json").stdout)
    return int(status["requests"])


def _wait_for_socket(env: dict[str, str], timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(server_address(env)):
        assert time.monotonic() < deadline, "the warm process did not start"
        time.sleep(0.2)


@pytest.mark.slow
def test_a_cold_search_starts_the_warm_process_and_the_next_one_is_answered_by_it(
    db: Database, real_embedder: Embedder, warm_env: dict[str, str]
) -> None:
    expected = [hit.citation() for hit in search(db, real_embedder, QUERY, project="alpha", limit=3)]
    assert not os.path.exists(server_address(warm_env))

    cold = json.loads(_kb(warm_env, "search", QUERY, "--project", "alpha", "--json", "--limit", "3").stdout)
    assert [hit["citation"] for hit in cold] == expected  # searched in the process (fast-start backend)
    _wait_for_socket(warm_env)  # ... which started the warm process as it exited

    before = _served_requests(warm_env)
    warm = json.loads(_kb(warm_env, "search", QUERY, "--project", "alpha", "--json", "--limit", "3").stdout)
    assert [hit["citation"] for hit in warm] == expected
    assert warm[0].keys() == cold[0].keys() and warm[0]["text"] == cold[0]["text"]
    assert warm[0]["project_root"] == cold[0]["project_root"] == "/src/alpha"
    everywhere = _kb(warm_env, "search", QUERY, "--limit", "1")  # from /, in no project
    assert "is not inside an indexed project: searched all projects" in everywhere.stderr
    assert "[alpha] /src/alpha/src/mail.py:1-6" in everywhere.stdout
    explained = _kb(warm_env, "search", QUERY, "--project", "alpha", "--explain", "--limit", "1").stdout
    assert "similarity" in explained and expected[0] in explained
    pack = json.loads(_kb(warm_env, "context", "how are invoices emailed?", "--project", "alpha", "--json").stdout)
    assert "src/mail.py" in pack["text"] and pack["record_id"] is not None
    assert _served_requests(warm_env) == before + 4  # the four commands (status requests are not counted)


@pytest.mark.slow
def test_kb_warm_off_never_starts_a_warm_process(warm_env: dict[str, str]) -> None:
    env = warm_env | {"KB_WARM": "off"}
    hits = json.loads(_kb(env, "search", QUERY, "--project", "alpha", "--json", "--limit", "1").stdout)
    assert hits[0]["path"] == "src/mail.py"
    time.sleep(2)
    assert not os.path.exists(server_address(env))


def test_an_error_is_reported_by_the_command_itself_with_a_warm_process_running(warm_env: dict[str, str]) -> None:
    subprocess.Popen([*KB, "serve"], env=warm_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_socket(warm_env)
    proc = subprocess.run(
        [*KB, "search", QUERY, "--project", "ghost"], env=warm_env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1 and "project 'ghost'" in proc.stderr and "Traceback" not in proc.stderr
