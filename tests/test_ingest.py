"""populate_project against the real database: what is stored, incremental re-scans, bad input, failures."""

from __future__ import annotations

import hashlib
import os
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.db.locks import POPULATE_LOCK
from knowledgebase.errors import ModelMismatch, ProjectPathError
from knowledgebase.index.ingest import PopulateProgress, PopulateReport, populate_project
from knowledgebase.index.scanning import SkipReason
from knowledgebase.index.summaries import summary_texts
from tests.support import HashingEmbedder


def function(name: str, lines: int = 5) -> str:
    """A function of about 100 tokens: big enough to be a chunk of its own."""
    doc = "\n".join(f"    {name} detail {i} explains step {i} of the work." for i in range(lines))
    return f'def {name}(value):\n    """\n{doc}\n    """\n    return value\n'


def make_project(root: Path) -> Path:
    files = {
        "app/main.py": "\n\n".join(function(n) for n in ("load_config", "start_server", "stop_server")),
        "app/util.py": function("slugify") + "\n\n" + function("checksum"),
        "README.md": "# Demo\n\nA demo project.\n\n## Usage\n\nRun `python -m app`.\n",
        "web/index.js": "export function greet(name) {\n  return `hello ${name}`;\n}\n",
    }
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return settle(root)


def settle(root: Path, seconds_ago: int = 10) -> Path:
    """Date every file back, as if written a while ago (fresh files are re-hashed on the next run)."""
    past = time.time_ns() - seconds_ago * 1_000_000_000
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, ns=(past, past))
    return root


def populate(db: Database, embedder: object, root: Path, settings: Settings, **kwargs: object) -> PopulateReport:
    return populate_project(db, embedder, root, settings=settings, **kwargs)  # type: ignore[arg-type]


def file_rows(conn: psycopg.Connection) -> dict[str, tuple]:
    rows = conn.execute(
        "SELECT path, content, content_hash, size_bytes, language, mtime_ns, lossy_decode, chunked_hash, id"
        " FROM project_files ORDER BY path"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def chunk_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute(
        "SELECT f.path, c.chunk_index, c.start_line, c.end_line, c.kind, c.symbol, c.content, c.content_hash,"
        " c.embedding IS NOT NULL, c.embedding_model_id"
        " FROM file_chunks c JOIN project_files f ON f.id = c.file_id ORDER BY f.path, c.chunk_index"
    ).fetchall()


def assert_consistent(conn: psycopg.Connection) -> None:
    """Every stored file is completely chunked; every chunk is embedded, lies within its file and, with
    a symbol, has one summary vector per name in it (index.summaries)."""
    for path, (content, content_hash, *_rest, chunked_hash, file_id) in file_rows(conn).items():
        assert chunked_hash == content_hash, path
        lines = content.split("\n")
        for start, end, chunk_content, has_vector, path_, symbol, summaries in conn.execute(
            "SELECT c.start_line, c.end_line, c.content, c.embedding IS NOT NULL, f.path, c.symbol,"
            " (SELECT count(*) FROM chunk_summaries s WHERE s.chunk_id = c.id)"
            " FROM file_chunks c JOIN project_files f ON f.id = c.file_id WHERE c.file_id = %s",
            (file_id,),
        ).fetchall():
            assert has_vector
            assert summaries == len(summary_texts(path_, symbol, chunk_content)), (path_, symbol)
            assert chunk_content == "\n".join(lines[start - 1 : end]) or (
                start == end and chunk_content in lines[start - 1]
            )
    orphans = conn.execute(
        "SELECT count(*) FROM file_chunks c LEFT JOIN project_files f ON f.id = c.file_id WHERE f.id IS NULL"
    ).fetchone()
    assert orphans == (0,)


def test_populate_records_files_and_embedded_chunks(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    report = populate(db, fake_embedder, root, settings)
    assert report.project == "demo"
    assert (report.added, report.changed, report.unchanged, report.deleted) == (4, 0, 0, 0)
    assert report.files_indexed == 4
    assert report.chunks_written == report.chunks_embedded + report.chunks_reused > 0
    assert fake_embedder.embedded == report.chunks_embedded + report.summaries_embedded
    assert report.summaries_embedded > 0  # each definition's short text (index.summaries)
    with db.connection() as conn:
        project = store.get_project(conn, "demo")
        assert project.root_path == str(root.resolve())
        files = file_rows(conn)
        assert set(files) == {"README.md", "app/main.py", "app/util.py", "web/index.js"}
        main = files["app/main.py"]
        raw = (root / "app/main.py").read_bytes()
        assert main[0] == raw.decode()
        assert main[1] == hashlib.sha256(raw).hexdigest()
        assert main[2] == len(raw)
        assert main[3] == "python"
        assert main[4] == (root / "app/main.py").stat().st_mtime_ns
        chunks = chunk_rows(conn)
        model = store.active_model(conn)
        assert model is not None and model.name == "test-hashing"
        assert all(row[8] and row[9] == model.id for row in chunks)
        symbols = {row[5] for row in chunks if row[0] == "app/main.py"}
        assert symbols == {"load_config", "start_server", "stop_server"}
        assert {row[5] for row in chunks if row[0] == "README.md"} <= {"Demo", "Demo > Usage", "Demo, Demo > Usage"}
        assert_consistent(conn)


def test_second_run_reads_nothing_and_embeds_nothing(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import knowledgebase.index.ingest as ingest

    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        before = chunk_rows(conn)
    reads: list[str] = []
    real_read = ingest.read_scanned

    def counting_read(file, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(file.rel_path)
        return real_read(file, **kwargs)

    monkeypatch.setattr(ingest, "read_scanned", counting_read)
    calls = fake_embedder.calls
    report = populate(db, fake_embedder, root, settings)
    assert (report.added, report.changed, report.unchanged, report.deleted) == (0, 0, 4, 0)
    assert reads == []
    assert fake_embedder.calls == calls
    assert report.chunks_written == report.chunks_embedded == 0
    with db.connection() as conn:
        assert chunk_rows(conn) == before


def test_touched_file_with_same_content_is_hashed_not_rechunked(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    path = root / "app/util.py"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 5_000_000_000))
    with db.connection() as conn:
        before = chunk_rows(conn)
    calls = fake_embedder.calls
    report = populate(db, fake_embedder, root, settings)
    assert (report.changed, report.unchanged, report.chunks_written) == (0, 4, 0)
    assert fake_embedder.calls == calls
    with db.connection() as conn:
        assert file_rows(conn)["app/util.py"][4] == path.stat().st_mtime_ns
        assert chunk_rows(conn) == before


def test_a_file_written_just_before_the_scan_is_checked_again(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    path = root / "app/util.py"
    path.write_text(path.read_text())  # fresh mtime: within the file system's timestamp granularity
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        assert file_rows(conn)["app/util.py"][4] is None  # mtime not trusted yet
    stat = path.stat()
    # a same-size rewrite that the timestamp cannot tell apart from the indexed version
    path.write_text(path.read_text().replace("slugify detail 0", "slugify detail 9"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    report = populate(db, fake_embedder, root, settings)
    assert report.changed == 1
    with db.connection() as conn:
        assert "slugify detail 9" in file_rows(conn)["app/util.py"][0]


def test_editing_one_function_reembeds_only_its_chunk(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        before = {(row[0], row[5]): row[7] for row in chunk_rows(conn)}
    path = root / "app/main.py"
    edited = path.read_text().replace("start_server detail 3", "start_server detail 3 (edited)")
    path.write_text("\n\n\n" + edited)  # and every function moves down three lines
    embedded = fake_embedder.embedded
    report = populate(db, fake_embedder, root, settings)
    assert (report.added, report.changed, report.unchanged) == (0, 1, 3)
    assert fake_embedder.embedded - embedded == report.chunks_embedded == 1
    with db.connection() as conn:
        after = {(row[0], row[5]): row[7] for row in chunk_rows(conn)}
        assert_consistent(conn)
    changed = {key for key in after if before.get(key) != after[key]}
    assert changed == {("app/main.py", "start_server")}


def test_deleted_files_and_their_chunks_disappear(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    (root / "app/util.py").unlink()
    (root / "web/index.js").unlink()
    (root / "web").rmdir()
    report = populate(db, fake_embedder, root, settings)
    assert (report.deleted, report.unchanged, report.files_indexed) == (2, 2, 2)
    with db.connection() as conn:
        assert set(file_rows(conn)) == {"README.md", "app/main.py"}
        assert {row[0] for row in chunk_rows(conn)} == {"README.md", "app/main.py"}
        assert_consistent(conn)


def test_a_file_that_becomes_ignored_leaves_the_index(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    (root / ".kbignore").write_text("web/\n")
    report = populate(db, fake_embedder, root, settings)
    assert report.deleted == 1 and report.added == 1  # .kbignore itself is indexed
    assert report.skipped_by_reason == {str(SkipReason.IGNORED): 1}
    with db.connection() as conn:
        assert "web/index.js" not in file_rows(conn)


def _add_fact(conn: psycopg.Connection, project_id: int, file_id: int, chunk_hash: str | None, label: str) -> int:
    fact = store.insert_knowledge(
        conn,
        store.NewKnowledge(
            fact_label=label, fact_value="v", project_id=project_id, source_kind="chunk", source_file_id=file_id,
            source_chunk_hash=chunk_hash,
        ),
    )  # fmt: skip
    return fact.id


def test_facts_from_changed_chunks_go_stale_and_others_do_not(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        project_id = store.get_project(conn, "demo").id
        main_id = file_rows(conn)["app/main.py"][-1]
        hashes = {row[5]: row[7] for row in chunk_rows(conn) if row[0] == "app/main.py"}
        edited = _add_fact(conn, project_id, main_id, hashes["start_server"], "edited")
        untouched = _add_fact(conn, project_id, main_id, hashes["stop_server"], "untouched")
        whole_file = _add_fact(conn, project_id, main_id, None, "whole file")
    path = root / "app/main.py"
    path.write_text(path.read_text().replace("start_server detail 3", "start_server detail 3 (edited)"))
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        stale = dict(conn.execute("SELECT id, is_stale FROM knowledge").fetchall())
        since = conn.execute("SELECT stale_since FROM knowledge WHERE id = %s", (edited,)).fetchone()
    assert stale == {edited: True, untouched: False, whole_file: False}
    assert since is not None and since[0] is not None
    path.unlink()
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        rows = conn.execute("SELECT id, is_stale, source_file_id FROM knowledge ORDER BY id").fetchall()
    assert rows == [(edited, True, None), (untouched, True, None), (whole_file, True, None)]


def test_secrets_are_redacted_before_storing_and_embedding(db: Database, settings: Settings, tmp_path: Path) -> None:
    class RecordingEmbedder(HashingEmbedder):
        def __init__(self) -> None:
            super().__init__()
            self.texts: list[str] = []

        def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
            self.texts.extend(texts)
            return super().embed_documents(texts)

    key = "sk-proj-" + "A1b2C3d4" * 5
    root = tmp_path / "secrets"
    root.mkdir()
    (root / "settings.py").write_text(
        textwrap.dedent(
            f"""\
            OPENAI_KEY = "{key}"
            DATABASE_URL = "postgresql://kb:hunter2secret@db.internal/kb"


            def connect():
                return DATABASE_URL
            """
        )
    )
    (root / ".env").write_text(f"OPENAI_API_KEY={key}\n")
    embedder = RecordingEmbedder()
    report = populate(db, embedder, root, settings)
    assert report.secrets_redacted >= 2
    assert report.skipped_by_reason == {str(SkipReason.SECRET_FILE): 1}
    with db.connection() as conn:
        stored = [row[0] for row in file_rows(conn).values()] + [row[6] for row in chunk_rows(conn)]
    assert stored and embedder.texts
    for text in stored + embedder.texts:
        assert key not in text and "hunter2secret" not in text
    assert any("[REDACTED:" in text for text in stored)


def test_nonexistent_path_and_a_file_are_clear_errors_that_change_nothing(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    with pytest.raises(ProjectPathError, match=r"cannot index .*missing.*: no such file or directory"):
        populate(db, fake_embedder, tmp_path / "missing", settings)
    (tmp_path / "file.py").write_text("x = 1\n")
    with pytest.raises(ProjectPathError, match="not a directory"):
        populate(db, fake_embedder, tmp_path / "file.py", settings)
    with db.connection() as conn:
        assert store.list_projects(conn) == []
    assert fake_embedder.calls == 0


def test_binary_empty_huge_and_undecodable_files(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    (root / "blob.dat").write_bytes(b"\x00\x01\x02binary" * 10)
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "empty.py").write_text("")
    (root / "huge.txt").write_text("word " * 1000)
    (root / "latin1.txt").write_bytes("prénom = 'Zoë'\n".encode("latin-1"))
    report = populate(db, fake_embedder, root, settings.with_overrides(max_file_bytes=2000))
    assert report.skipped_by_reason == {str(SkipReason.BINARY): 2, str(SkipReason.TOO_LARGE): 1}
    assert report.lossy_files == ("latin1.txt",)
    with db.connection() as conn:
        files = file_rows(conn)
        assert {"blob.dat", "logo.png", "huge.txt"}.isdisjoint(files)
        assert files["empty.py"][0] == "" and files["empty.py"][5] is False
        assert files["latin1.txt"][5] is True and "\ufffd" in files["latin1.txt"][0]
        assert not [row for row in chunk_rows(conn) if row[0] == "empty.py"]
        assert_consistent(conn)


def test_a_file_that_grows_past_the_limit_leaves_the_index(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    limited = settings.with_overrides(max_file_bytes=3000)
    populate(db, fake_embedder, root, limited)
    (root / "README.md").write_text("# Big\n" + "word " * 1000)
    report = populate(db, fake_embedder, root, limited)
    assert report.deleted == 1 and report.skipped_by_reason == {str(SkipReason.TOO_LARGE): 1}


def test_a_symlink_loop_does_not_stop_populate(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    (root / "loop").symlink_to(root / "loop")
    (root / "app" / "up").symlink_to(root, target_is_directory=True)
    report = populate(db, fake_embedder, root, settings)
    assert report.added == 4
    assert report.skipped_by_reason == {str(SkipReason.BROKEN_SYMLINK): 1, str(SkipReason.SYMLINK): 1}


def test_a_file_that_vanishes_while_populating(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import knowledgebase.index.ingest as ingest

    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    target = root / "app/util.py"
    target.write_text(target.read_text() + "\n# changed\n")  # so it is read again
    real_read = ingest.read_scanned

    def read_after_deleting(file, **kwargs):  # type: ignore[no-untyped-def]
        if file.rel_path == "app/util.py":
            target.unlink()  # deleted between the scan and the read
        return real_read(file, **kwargs)

    monkeypatch.setattr(ingest, "read_scanned", read_after_deleting)
    report = populate(db, fake_embedder, root, settings)
    assert [(s.rel_path, s.reason) for s in report.skipped] == [("app/util.py", SkipReason.VANISHED)]
    assert report.deleted == 1 and report.unchanged == 3
    with db.connection() as conn:
        assert "app/util.py" not in file_rows(conn)
        assert_consistent(conn)


def test_a_file_that_keeps_changing_keeps_its_previous_version(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import knowledgebase.index.scanning as scanning

    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        before = file_rows(conn)["app/util.py"]
    target = root / "app/util.py"
    target.write_text(target.read_text() + "\n# one\n")
    real_read_all = scanning.read_at_most

    def read_while_appending(fd: int, limit: int) -> bytes:
        data = real_read_all(fd, limit)
        if os.path.samestat(os.fstat(fd), target.stat()):
            with target.open("a") as fh:
                fh.write("# another writer\n")
        return data

    monkeypatch.setattr(scanning, "read_at_most", read_while_appending)
    report = populate(db, fake_embedder, root, settings)
    assert [(s.rel_path, s.reason) for s in report.skipped] == [("app/util.py", SkipReason.CHANGING)]
    assert report.deleted == 0 and report.files_indexed == 4
    with db.connection() as conn:
        assert file_rows(conn)["app/util.py"] == before
    monkeypatch.setattr(scanning, "read_at_most", real_read_all)
    report = populate(db, fake_embedder, root, settings)  # the writer stopped: the next run catches up
    assert report.changed == 1
    with db.connection() as conn:
        assert file_rows(conn)["app/util.py"][0] == target.read_text()


def test_a_model_of_another_dimension_is_refused_and_nothing_changes(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        files_before, chunks_before = file_rows(conn), chunk_rows(conn)
    (root / "app/new.py").write_text(function("brand_new"))
    (root / "README.md").write_text("# Changed\n")
    narrow = HashingEmbedder(dimension=128)  # same name, other dimension
    with pytest.raises(ModelMismatch, match=r"384 dimensions.*128 dimensions.*kb reembed"):
        populate(db, narrow, root, settings)
    other = HashingEmbedder(name="another-model")
    with pytest.raises(ModelMismatch, match=r"another-model.*kb reembed"):
        populate(db, other, root, settings)
    assert narrow.calls == other.calls == 0
    with db.connection() as conn:
        assert file_rows(conn) == files_before
        assert chunk_rows(conn) == chunks_before


class CrashingEmbedder(HashingEmbedder):
    """Fails (like a killed process would stop) after ``survive`` calls."""

    def __init__(self, survive: int) -> None:
        super().__init__()
        self.survive = survive

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if self.calls >= self.survive:
            raise RuntimeError("simulated crash")
        return super().embed_documents(texts)


def test_a_crash_half_way_keeps_finished_batches_and_the_next_run_completes(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "many"
    for i in range(12):
        (root / f"pkg{i % 3}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 3}" / f"mod{i}.py").write_text(function(f"first_{i}") + "\n\n" + function(f"second_{i}"))
    small_batches = settings.with_overrides(ingest_batch_chunks=4, embed_batch_size=2)
    crashing = CrashingEmbedder(survive=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        populate(db, crashing, root, small_batches)
    with db.connection() as conn:
        assert_consistent(conn)  # nothing half-written
        done = file_rows(conn)
        committed_chunks = len(chunk_rows(conn))
    assert 0 < len(done) < 12
    assert committed_chunks == 2 * len(done)
    finisher = HashingEmbedder()
    report = populate(db, finisher, root, small_batches)
    assert (report.added, report.unchanged) == (12 - len(done), len(done))
    assert report.chunks_embedded == 24 - committed_chunks
    assert finisher.embedded == report.chunks_embedded + report.summaries_embedded == 2 * (24 - committed_chunks)
    with db.connection() as conn:
        assert len(file_rows(conn)) == 12 and len(chunk_rows(conn)) == 24
        assert_consistent(conn)


def test_an_incomplete_file_row_is_redone(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    populate(db, fake_embedder, root, settings)
    with db.connection() as conn:
        before = chunk_rows(conn)
        conn.execute("UPDATE project_files SET chunked_hash = NULL WHERE path = 'app/util.py'")
    report = populate(db, fake_embedder, root, settings)
    assert report.unchanged == 3 and report.changed == 1 and report.chunks_embedded == 0  # vectors reused
    with db.connection() as conn:
        assert_consistent(conn)
        assert chunk_rows(conn) == before


def test_identical_chunks_reuse_stored_vectors_across_projects(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    first = make_project(tmp_path / "one")
    populate(db, fake_embedder, first, settings, project="shared-a")
    embedded = fake_embedder.embedded
    report = populate(db, fake_embedder, first, settings, project="shared-b")
    assert report.added == 4 and report.chunks_embedded == 0 and fake_embedder.embedded == embedded
    assert report.chunks_reused == report.chunks_written > 0


def test_project_name_defaults_to_the_directory_and_can_be_given(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "my-service")
    assert populate(db, fake_embedder, root, settings).project == "my-service"
    assert populate(db, fake_embedder, root, settings, project=" other ").project == "other"
    with db.connection() as conn:
        assert [p.name for p in store.list_projects(conn)] == ["my-service", "other"]


def test_progress_reports_phases_and_counts(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = make_project(tmp_path / "demo")
    events: list[PopulateProgress] = []
    report = populate(db, fake_embedder, root, settings, progress=events.append)
    phases = [e.phase for e in events]
    assert phases[0] == "scanning" and phases[-1] == "done"
    # every file is read before the model loads, so how much there is to embed is known up front
    assert phases.index("loading") > max(i for i, phase in enumerate(phases) if phase == "reading")
    embedding = [e for e in events if e.phase == "embedding"]
    assert embedding and all(e.chunks_to_embed == report.chunks_embedded for e in embedding)
    assert [e.chunks_embedded for e in embedding] == sorted(e.chunks_embedded for e in embedding)
    assert events[-1].files_done == events[-1].files_total == 4
    assert events[-1].chunks_embedded == report.chunks_embedded


def test_what_is_to_embed_is_counted_without_what_can_be_reused(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    first = make_project(tmp_path / "one")
    populate(db, fake_embedder, first, settings)
    second = make_project(tmp_path / "two")  # the same files under another root: every vector is reused
    (second / "new.py").write_text("def brand_new():\n    return 'never seen'\n")
    events: list[PopulateProgress] = []
    report = populate(db, fake_embedder, second, settings, progress=events.append)
    assert report.chunks_embedded == 1 and report.chunks_reused > 0
    assert {e.chunks_to_embed for e in events if e.phase == "embedding"} == {1}


def test_a_second_populate_of_the_same_project_waits_for_the_first(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path, db_url: str
) -> None:
    root = make_project(tmp_path / "demo")
    with db.connection() as conn:
        project_id = store.ensure_project(conn, "demo").id
    events: list[str] = []
    results: list[PopulateReport] = []
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (POPULATE_LOCK, project_id))
        worker = threading.Thread(
            target=lambda: results.append(
                populate(db, fake_embedder, root, settings, progress=lambda e: events.append(e.phase))
            )
        )
        worker.start()
        deadline = time.monotonic() + 30
        while "waiting" not in events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert events == ["waiting"]  # blocked before scanning anything
        holder.execute("SELECT pg_advisory_unlock(%s, %s)", (POPULATE_LOCK, project_id))
        worker.join(timeout=60)
    assert results and results[0].added == 4
    assert results[0].timings.lock_wait > 0


WORKER = """
import pathlib, sys, time
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.index.ingest import populate_project
from tests.support import HashingEmbedder

class SlowEmbedder(HashingEmbedder):
    def embed_documents(self, texts):
        time.sleep(0.05)
        return super().embed_documents(texts)

url, root, ready, go = sys.argv[1:5]
pathlib.Path(ready).touch()
while not pathlib.Path(go).exists():
    time.sleep(0.01)
home = pathlib.Path(ready).parent / "home"
settings = Settings(home=home, database_url=url, ingest_batch_chunks=4, embed_batch_size=2)
embedder = SlowEmbedder()
with Database(url) as db:
    report = populate_project(db, embedder, root, settings=settings)
print(report.added, report.unchanged, embedder.embedded)
"""


@pytest.mark.slow
def test_two_processes_populating_one_project_make_no_duplicates(db: Database, db_url: str, tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "shared"
    for i in range(10):
        (root / f"pkg{i % 2}").mkdir(parents=True, exist_ok=True)
        (root / f"pkg{i % 2}" / f"mod{i}.py").write_text(function(f"first_{i}") + "\n\n" + function(f"second_{i}"))
    go = tmp_path / "go"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(root), str(tmp_path / f"ready{n}"), str(go)],
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{n}").exists() for n in range(2)) and time.monotonic() < deadline:
        time.sleep(0.05)
    go.touch()  # both start populating at the same moment
    outputs = [worker.communicate(timeout=120) for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    results = sorted(tuple(int(x) for x in out.split()) for out, _ in outputs)
    assert results == [(0, 10, 0), (10, 0, 40)]  # one did the work (20 chunks, 20 summaries), the other found it done
    with db.connection() as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT path) FROM project_files").fetchone() == (10, 10)
        assert conn.execute("SELECT count(*), count(DISTINCT (file_id, content_hash)) FROM file_chunks").fetchone() == (
            20,
            20,
        )
        assert_consistent(conn)


def test_the_real_model_finds_the_function_a_question_is_about(
    db: Database, real_embedder: object, settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "service"
    (root / "src").mkdir(parents=True)
    (root / "src" / "notify.py").write_text(
        textwrap.dedent(
            '''\
            import smtplib


            def send_welcome_email(user):
                """Send the welcome message to a newly registered user."""
                with smtplib.SMTP("localhost") as smtp:
                    smtp.sendmail("noreply@example.com", [user.email], "Welcome aboard!")


            def resize_thumbnail(image, width):
                """Scale an uploaded picture down to a thumbnail of the given width."""
                ratio = width / image.width
                return image.resize((width, int(image.height * ratio)))
            '''
        )
    )
    (root / "src" / "billing.py").write_text(
        textwrap.dedent(
            '''\
            def compute_invoice_total(lines, tax_rate):
                """Sum the invoice lines and add sales tax."""
                subtotal = sum(line.price * line.quantity for line in lines)
                return subtotal * (1 + tax_rate)
            '''
        )
    )
    report = populate(db, real_embedder, root, settings)
    assert report.chunks_embedded >= 3
    questions = {
        "how do we email new users when they sign up?": "send_welcome_email",
        "make a smaller version of a photo": "resize_thumbnail",
        "add VAT to the amount a customer owes": "compute_invoice_total",
    }
    with db.connection() as conn:
        project_id = store.get_project(conn, "service").id
        for question, expected in questions.items():
            matches = store.nearest_chunks(conn, project_id, real_embedder.embed_query(question), 3)  # type: ignore[attr-defined]
            assert matches[0].symbol == expected, (question, [m.symbol for m in matches])
            assert matches[0].similarity > matches[-1].similarity
