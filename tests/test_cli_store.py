"""`kb init`, `kb status --json` and `kb db` as a user runs them, in a fresh KB_HOME."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

KB = [sys.executable, "-m", "knowledgebase"]


def run_kb(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*KB, *args], env=env, capture_output=True, text=True, timeout=180)
    if check and proc.returncode != 0:
        raise AssertionError(f"kb {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(extra)
    return env


@pytest.mark.slow
def test_init_and_status_in_a_fresh_home(tmp_path: Path) -> None:
    env = _env(KB_HOME=str(tmp_path / "home"))
    try:
        run_kb("init", env=env)
        run_kb("init", env=env)  # idempotent
        status = json.loads(run_kb("status", "--json", env=env).stdout)
        assert status["schema_revision"] == status["expected_revision"]
        assert status["schema_ok"] is True
        assert status["pgvector_version"]
        assert status["embedded"] is True
        assert status["row_counts"]["knowledge"] == 0
        url = run_kb("db", "url", env=env).stdout.strip()
        assert url.startswith("postgresql://")
    finally:
        run_kb("db", "stop", env=env, check=False)


def test_status_with_a_database_url_option(db_url: str, tmp_path: Path) -> None:
    env = _env(KB_HOME=str(tmp_path))
    status = json.loads(run_kb("status", "--json", "--database-url", db_url, env=env).stdout)
    assert status["embedded"] is False
    assert status["schema_ok"] is True


def test_unreachable_database_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    env = _env(KB_HOME=str(tmp_path), KB_DATABASE_URL="postgresql://u:topsecret@127.0.0.1:1/x")
    for command in (["status"], ["init"]):
        proc = run_kb(*command, env=env, check=False)
        assert proc.returncode == 1
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith("kb: error: cannot connect")
        assert "topsecret" not in proc.stderr and "Traceback" not in proc.stderr


def test_schema_behind_is_reported_by_status(fresh_database_url: str, tmp_path: Path) -> None:
    env = _env(KB_HOME=str(tmp_path))
    status = json.loads(run_kb("status", "--json", "--database-url", fresh_database_url, env=env).stdout)
    assert status["schema_revision"] is None and status["schema_ok"] is False


def test_help_is_fast_to_import() -> None:
    """`kb --help` must not import torch or sentence-transformers."""
    code = (
        "import sys; from knowledgebase.cli import cli; "
        "import click.testing as t; r = t.CliRunner().invoke(cli, ['--help']); "
        "assert r.exit_code == 0, r.output; "
        "bad = [m for m in ('torch', 'sentence_transformers', 'alembic', 'sqlalchemy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
