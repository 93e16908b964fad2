"""The small ones of the first hour: `kb db stop` and its warm process, `kb serve --status` times, a warm
process whose KB_HOME was deleted, `kb populate` of an empty folder, the XDG_RUNTIME_DIR warning."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from knowledgebase.cli import cli
from knowledgebase.config import Settings
from knowledgebase.gemini.serve import WarmServer, WarmStore, _watch_idle
from knowledgebase.gemini.warm_protocol import server_address
from tests.support import HashingEmbedder

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def warm(
    tmp_path: Path, fake_embedder: HashingEmbedder
) -> Iterator[tuple[WarmServer, threading.Thread, dict[str, str]]]:
    """A warm process (in a thread) for a store whose KB_HOME is tmp_path/home, watched like `kb serve`'s."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"KB_HOME": str(home)}
    address = server_address(env)
    os.makedirs(os.path.dirname(address), exist_ok=True)
    server = WarmServer(address, WarmStore(Settings(home=home), embedder=fake_embedder), idle_timeout_s=600)
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    serving.start()
    stop = threading.Event()
    threading.Thread(target=_watch_idle, args=(server, stop), daemon=True).start()
    yield server, serving, env
    stop.set()
    if serving.is_alive():
        server.shutdown()
    server.server_close()


def _kb(*args: str, env: dict[str, str | None]):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def _kb_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``kb`` as a new process (settings are read once per process)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KB_")} | env | {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "knowledgebase", *args], env=clean, capture_output=True, text=True, timeout=120
    )


def test_db_stop_with_a_database_url_stops_nothing_and_says_so(tmp_path: Path) -> None:
    result = _kb_process("db", "stop", env={"KB_HOME": str(tmp_path), "KB_DATABASE_URL": "postgresql://kb:secret@x/kb"})
    assert result.returncode == 0
    assert "KB_DATABASE_URL is set" in result.stdout
    assert "the embedded server is not in use, nothing stopped" in result.stdout
    assert "secret" not in result.stdout
    assert "stopped\n" not in result.stdout.replace("nothing stopped", "")


def test_db_stop_stops_the_warm_process_too(warm) -> None:  # type: ignore[no-untyped-def]
    _, serving, env = warm
    result = _kb_process("db", "stop", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["warm process (kb serve) stopped", "embedded PostgreSQL was not running"]
    serving.join(10)
    assert not serving.is_alive()


def test_serve_status_shows_when_it_started_as_a_time(warm) -> None:  # type: ignore[no-untyped-def]
    _, _, env = warm
    text = _kb("serve", "--status", env=env).stdout
    assert re.search(r"^started_at: \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+ s ago\)$", text, re.M), text
    assert re.search(r"^pid: \d+$", text, re.M)


def test_the_warm_process_exits_once_its_home_is_deleted(warm) -> None:  # type: ignore[no-untyped-def]
    _, serving, env = warm
    shutil.rmtree(env["KB_HOME"])
    serving.join(15)  # the watcher looks every 5 s
    assert not serving.is_alive()


def test_populate_of_an_empty_folder_says_the_project_is_empty(
    db_url: str, fake_embedder: HashingEmbedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import knowledgebase.embedding

    monkeypatch.setattr(knowledgebase.embedding, "embedder_from_settings", lambda settings, purpose="": fake_embedder)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    result = _kb("populate", str(empty), "--json", env={"KB_HOME": str(tmp_path / "home"), "KB_DATABASE_URL": db_url})
    assert result.exit_code == 0
    assert "kb: warning: nothing to index under" in result.stderr and "(1 skipped)" in result.stderr
    assert "project 'empty' is empty; remove it with `kb projects rm empty`" in result.stderr


def test_the_makefile_install_check_prints_no_xdg_runtime_dir_warning(tmp_path: Path) -> None:
    line = next(x for x in (ROOT / "Makefile").read_text().splitlines() if "import knowledgebase," in x)
    args = shlex.split(line.strip().removeprefix("$(PY)"))
    args = [a.replace("sentence_transformers, ", "") for a in args]  # not needed for the warning; slow to import
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "XDG_RUNTIME_DIR" not in proc.stderr
