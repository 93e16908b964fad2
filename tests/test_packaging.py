"""The migrations ship inside the wheel, and plain `alembic upgrade head` works from the checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import psycopg
import pytest

from knowledgebase.db.schema import SCHEMA_REVISION, current_revision

ROOT = Path(__file__).resolve().parents[1]


def _revision(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        return current_revision(conn)


@pytest.mark.slow
def test_kb_init_runs_from_the_built_wheel(fresh_database_url: str, tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path),
         str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    wheel = next(tmp_path.glob("knowledgebase-*.whl"))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site), "KB_HOME": str(tmp_path / "home")}
    code = "import knowledgebase, sys; print(knowledgebase.__file__)"
    where = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout
    assert where.startswith(str(site)), "the test must exercise the wheel, not the checkout"
    subprocess.run([sys.executable, "-m", "knowledgebase", "init", "--database-url", fresh_database_url],
                   env=env, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    assert _revision(fresh_database_url) == SCHEMA_REVISION


def test_plain_alembic_upgrade_from_the_checkout(fresh_database_url: str) -> None:
    alembic = Path(sys.executable).with_name("alembic")
    env = {**os.environ, "KB_DATABASE_URL": fresh_database_url}
    subprocess.run([str(alembic), "upgrade", "head"], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=120)
    assert _revision(fresh_database_url) == SCHEMA_REVISION
