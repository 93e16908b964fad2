"""`kb populate` and `kb reembed` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from knowledgebase.cli import cli
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.index.ingest import populate_project
from tests.support import HashingEmbedder, as_agent
from tests.test_cli_store import _env, run_kb
from tests.test_ingest import function


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)


def _project(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "jobs.py").write_text(function("schedule_job") + "\n\n" + function("cancel_job"))
    (root / "README.md").write_text("# Jobs\n\nSchedules and cancels jobs.\n")
    return root


@pytest.mark.slow
def test_populate_then_an_unchanged_rerun_with_progress_and_summary(db_url: str, tmp_path: Path) -> None:
    root = _project(tmp_path / "jobs")
    env = _env(KB_HOME=str(tmp_path / "home"), KB_DATABASE_URL=db_url)
    first = json.loads(run_kb("populate", str(root), "--json", env=env).stdout)
    assert (first["project"], first["added"], first["unchanged"]) == ("jobs", 2, 0)
    assert first["chunks_embedded"] == first["chunks_written"] > 0
    second = run_kb("populate", str(root), "--project", "jobs", env=env)
    assert "files" in second.stderr  # the progress bar goes to stderr
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip() for line in second.stdout.splitlines() if "│" in line
    }
    assert rows["added"] == "0" and rows["unchanged"] == "2" and rows["chunks written"] == "0"


@pytest.mark.parametrize(
    ("name", "message"),
    [("missing", "no such file or directory"), ("file.txt", "not a directory (give the project's root folder)")],
)
def test_a_bad_path_is_one_line_and_starts_nothing(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "file.txt").write_text("x\n")
    home = tmp_path / "home"
    proc = run_kb("populate", str(tmp_path / name), env=_env(KB_HOME=str(home)), check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"kb: error: cannot index {str(tmp_path / name)!r}: {message}"]
    assert not home.exists()  # no embedded server was started for a bad path


def test_another_model_is_refused_in_one_line(db: Database, db_url: str, settings: Settings, tmp_path: Path) -> None:
    root = _project(tmp_path / "jobs")
    populate_project(db, HashingEmbedder(), root, settings=settings)
    proc = run_kb("populate", str(root), env=_env(KB_HOME=str(tmp_path / "home"), KB_DATABASE_URL=db_url), check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "test-hashing" in lines[0] and "kb reembed" in lines[0]


def test_reembed_json(
    db: Database, db_url: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import knowledgebase.embedding as embedding

    populate_project(db, HashingEmbedder(), _project(tmp_path / "jobs"), settings=settings)
    monkeypatch.setattr(embedding, "embedder_from_settings", lambda _settings: HashingEmbedder(name="hashing-b"))
    result = CliRunner().invoke(cli, ["reembed", "--json", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["previous_model"], report["model"], report["retyped"]) == ("test-hashing", "hashing-b", False)
    assert report["chunks_embedded"] > 0


def test_commands_are_listed() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert "populate" in result.output and "reembed" in result.output
