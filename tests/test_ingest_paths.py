"""populate_project with paths the database cannot hold, and projects bound to their root folder."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from knowledgebase import store
from knowledgebase.cli import cli
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.errors import ProjectRootConflict
from knowledgebase.index.scanning import MAX_PATH_BYTES, SkipReason
from tests.support import HashingEmbedder
from tests.test_cli_store import _env, run_kb
from tests.test_ingest import assert_consistent, file_rows, make_project, populate, settle


def write_nested(root: Path, depth: int, name: bytes, content: bytes) -> int:
    """Write ``name`` under ``depth`` nested folders of 200 random hex characters; the path's length in bytes."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    length = len(os.fsencode(root))
    try:
        for _ in range(depth):
            folder = secrets.token_hex(100).encode()  # random: PostgreSQL cannot compress it under the index limit
            os.mkdir(folder, dir_fd=fd)
            inner = os.open(folder, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
            length += len(folder) + 1
        out = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, content)
        os.close(out)
    finally:
        os.close(fd)
    return length + len(name) + 1


def test_a_file_name_that_is_not_utf8_is_skipped_and_every_run_finishes(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    (Path(os.fsdecode(os.path.join(os.fsencode(root), b"bad\xffname.py")))).write_bytes(b"def f():\n    return 1\n")
    os.mkdir(os.path.join(os.fsencode(root), b"dir\xfe"))
    (Path(os.fsdecode(os.path.join(os.fsencode(root), b"dir\xfe", b"inner.py")))).write_text("x = 1\n")
    for _ in range(2):
        report = populate(db, fake_embedder, root, settings)
        assert report.files_indexed == 4
        bad = sorted((s.rel_path, s.reason) for s in report.skipped)
        assert bad == [("bad\\xffname.py", SkipReason.BAD_NAME), ("dir\\xfe/", SkipReason.BAD_NAME)]
    with db.connection() as conn:
        assert sorted(file_rows(conn)) == ["README.md", "app/main.py", "app/util.py", "web/index.js"]
        assert_consistent(conn)


def test_a_path_over_4096_bytes_is_skipped_and_every_run_finishes(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    length = write_nested(root, 21, b"deep.py", b"def deep():\n    return 2\n")
    assert length > 4096
    shallow = write_nested(root, 12, b"long.py", b"def long_path():\n    return 3\n")
    assert MAX_PATH_BYTES < shallow - len(os.fsencode(root)) < 4096  # openable, but too long to index
    for _ in range(2):
        report = populate(db, fake_embedder, root, settings)
        assert report.files_indexed == 4
        assert [s.reason for s in report.skipped] == [SkipReason.PATH_TOO_LONG] * 2
        assert all(len(s.rel_path) < 300 for s in report.skipped)
    with db.connection() as conn:
        assert len(file_rows(conn)) == 4
        assert_consistent(conn)


def two_clicks(tmp_path: Path) -> tuple[Path, Path]:
    """Two different folders called ``click``."""
    first = make_project(tmp_path / "click")
    other = tmp_path / "other" / "click"
    (other / "src").mkdir(parents=True)
    (other / "src" / "core.py").write_text("def other_core():\n    return 'another project'\n")
    return first, settle(other)


def test_a_second_folder_with_the_same_name_is_refused_and_changes_nothing(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    first, other = two_clicks(tmp_path)
    populate(db, fake_embedder, first, settings)
    with db.connection() as conn:
        before = file_rows(conn)
    with pytest.raises(ProjectRootConflict, match=r"--project NAME.*--move-root"):
        populate(db, fake_embedder, other, settings)
    with db.connection() as conn:
        assert file_rows(conn) == before
        assert [(p.name, p.root_path) for p in store.list_projects(conn)] == [("click", str(first))]
    report = populate(db, fake_embedder, other, settings, project="other-click")  # another name: its own project
    assert report.added == 1
    with db.connection() as conn:
        assert len(file_rows(conn)) == len(before) + 1


def test_kb_populate_of_a_second_root_is_one_line_naming_both_ways_out(
    db: Database, db_url: str, settings: Settings, tmp_path: Path
) -> None:
    first, other = two_clicks(tmp_path)
    populate(db, HashingEmbedder(), first, settings)
    proc = run_kb("populate", str(other), env=_env(KB_HOME=str(tmp_path / "home"), KB_DATABASE_URL=db_url), check=False)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kb: error: project 'click' is indexed from")
    assert f"kb populate {other} --project NAME" in lines[0] and f"kb populate {other} --move-root" in lines[0]
    with db.connection() as conn:
        assert len(file_rows(conn)) == 4


def test_move_root_moves_the_project_and_embeds_no_chunk_again(
    db: Database, db_url: str, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import knowledgebase.embedding as embedding

    first = make_project(tmp_path / "click")
    counting = HashingEmbedder()
    populate(db, counting, first, settings)
    embedded = counting.embedded
    moved = tmp_path / "elsewhere" / "click"
    shutil.copytree(first, moved)  # new mtimes: every file is read and hashed again
    (moved / "web" / "index.js").unlink()
    monkeypatch.setattr(embedding, "embedder_from_settings", lambda *_args, **_kwargs: counting)
    result = CliRunner().invoke(cli, ["populate", str(moved), "--move-root", "--json", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["added"], report["deleted"], report["unchanged"]) == (0, 1, 3)
    assert report["chunks_embedded"] == 0
    assert counting.embedded == embedded  # not one chunk went to the model again
    with db.connection() as conn:
        assert [(p.name, p.root_path) for p in store.list_projects(conn)] == [("click", str(moved))]
        assert sorted(file_rows(conn)) == ["README.md", "app/main.py", "app/util.py"]
        assert_consistent(conn)


def test_moving_a_project_away_and_back_embeds_nothing_again(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    first, other = two_clicks(tmp_path)
    populate(db, fake_embedder, first, settings)
    embedded = fake_embedder.embedded
    away = populate(db, fake_embedder, other, settings, move_root=True, project="click")
    assert away.deleted == 4 and away.added == 1  # every file of the first folder left the index
    embedded_away = fake_embedder.embedded
    back = populate(db, fake_embedder, first, settings, move_root=True, project="click")
    assert back.added == 4 and back.deleted == 1
    assert back.chunks_embedded == 0 and back.chunks_reused == back.chunks_written > 0
    assert fake_embedder.embedded == embedded_away > embedded
    with db.connection() as conn:
        assert_consistent(conn)


def test_a_deleted_file_restored_later_reuses_its_vectors_until_they_age_out(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    util = (root / "app" / "util.py").read_text()
    populate(db, fake_embedder, root, settings)
    (root / "app" / "util.py").unlink()
    assert populate(db, fake_embedder, root, settings).deleted == 1
    (root / "app" / "util.py").write_text(util)
    restored = populate(db, fake_embedder, settle(root), settings)
    assert restored.added == 1 and restored.chunks_embedded == 0 and restored.chunks_reused > 0

    (root / "app" / "util.py").unlink()
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:  # a month and a day later
        conn.execute("UPDATE chunk_vector_cache SET released_at = now() - interval '31 days'")
    (root / "README.md").write_text("# Demo\n\nStill a demo.\n")
    populate(db, fake_embedder, settle(root), settings)  # any populate prunes what aged out
    (root / "app" / "util.py").write_text(util)
    late = populate(db, fake_embedder, settle(root), settings)
    assert late.added == 1 and late.chunks_embedded == late.chunks_written > 0


def test_the_agents_role_keeps_and_reuses_released_vectors(
    agent_db_url: str, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    agent = Database(agent_db_url, max_size=2)  # as `kb populate` reaches the database by default
    try:
        first, other = two_clicks(tmp_path)
        populate(agent, fake_embedder, first, settings)
        populate(agent, fake_embedder, other, settings, move_root=True, project="click")
        back = populate(agent, fake_embedder, first, settings, move_root=True, project="click")
        assert back.added == 4 and back.chunks_embedded == 0
        with agent.connection() as conn:  # and prunes what aged out
            conn.execute("UPDATE chunk_vector_cache SET released_at = now() - interval '31 days'")
        populate(agent, fake_embedder, settle(first), settings)
        with agent.connection() as conn:
            assert conn.execute("SELECT count(*) FROM chunk_vector_cache").fetchone() == (0,)
    finally:
        agent.close()
