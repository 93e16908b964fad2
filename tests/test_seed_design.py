"""The seed design's tables are a contract: SQL written against its DDL runs unchanged on our schema.

``tests/seed_design_tables.sql`` is a verbatim copy of the four ``CREATE TABLE`` statements of
``../shared/SEED_DESIGN.md`` (checked against the design when it is there). Each test runs the same
design-only SQL on two databases, one built from the design's DDL itself and our migrated store, and
compares what comes back, column by column, under the design's names.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

COPY = Path(__file__).with_name("seed_design_tables.sql")
DESIGN = Path(__file__).resolve().parents[2] / "shared" / "SEED_DESIGN.md"
TABLE = re.compile(r"CREATE TABLE (\w+) \((.*?)\n\);", re.S)
COLUMN = re.compile(r"^\s+(\w+)\s+([A-Z]+)", re.M)
ORDER = ("command_log", "command_output", "project_files", "knowledge")  # parents first


def design_tables() -> dict[str, dict[str, str]]:
    """Table -> {column: type} as the design declares them (without ``id``, the key)."""
    tables = {}
    for name, body in TABLE.findall(COPY.read_text()):
        tables[name] = {col: typ for col, typ in COLUMN.findall(body) if col != "id"}
    return tables


SAMPLES = {"TEXT": "sample", "BOOLEAN": True, "INT": 3, "NUMERIC": Decimal("0.75"), "TIMESTAMP": "2026-01-02 03:04:05"}


def _sample(table: str, column: str, typ: str, refs: dict[str, Any]) -> Any:
    if column in refs:
        return refs[column]
    if column == "file_written":
        return "reports/a.txt"  # the design's TEXT: one path
    if typ == "TEXT":
        return f"{table}.{column} value"
    return SAMPLES[typ]


def _comparable(value: Any) -> Any:
    # the design's TIMESTAMP is TIMESTAMPTZ here: the same wall-clock time in the session's zone
    if isinstance(value, datetime):
        return value.replace(tzinfo=None)
    return value


def insert_design_rows(conn: psycopg.Connection) -> dict[str, dict[str, Any]]:
    """One row per design table, giving every design column; returns each row read back by name."""
    conn.execute("INSERT INTO tasks (id) VALUES ('T-design')")
    refs: dict[str, Any] = {"task_id": "T-design"}
    rows = {}
    for table in ORDER:
        cols = design_tables()[table]
        values = [_sample(table, col, typ, refs) for col, typ in cols.items()]
        insert = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        )
        row = conn.execute(insert, values).fetchone()
        assert row is not None
        refs[f"{table}_id"] = row[0]
        select = sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
            sql.SQL(", ").join(map(sql.Identifier, ["id", *cols])), sql.Identifier(table)
        )
        with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            got = cur.execute(select, (row[0],)).fetchone()
        assert got is not None
        rows[table] = {key: _comparable(value) for key, value in got.items() if key != "id"}
    return rows


@pytest.fixture
def design_db(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    """A database holding exactly the design's tables (and the ``tasks`` table they reference)."""
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE tasks (id TEXT PRIMARY KEY)")
        conn.execute(COPY.read_text())
        yield conn


@pytest.fixture
def store_db(db_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.mark.skipif(not DESIGN.is_file(), reason="the design document is not next to this checkout")
def test_the_copy_is_the_design_s_ddl() -> None:
    design = {name: body for name, body in TABLE.findall(DESIGN.read_text())}
    assert design == {name: body for name, body in TABLE.findall(COPY.read_text())}
    assert set(design) == set(ORDER)


def test_every_design_column_is_inserted_and_selected_under_its_name(
    design_db: psycopg.Connection, store_db: psycopg.Connection
) -> None:
    expected = insert_design_rows(design_db)
    assert expected["command_output"]["file_written"] == "reports/a.txt"
    assert insert_design_rows(store_db) == expected


def test_the_design_s_defaults_and_ours_fill_in_what_a_design_insert_leaves_out(store_db: psycopg.Connection) -> None:
    conn = store_db
    conn.execute("INSERT INTO projects (name) VALUES ('shop')")
    conn.execute("INSERT INTO tasks (id, project_id) SELECT 'T-shop', id FROM projects WHERE name = 'shop'")
    log_id = conn.execute(
        "INSERT INTO command_log (task_id, command, agent_mode) VALUES ('T-shop', 'make test', 'agentic') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    conn.execute(
        "INSERT INTO command_output (command_log_id, stdout, return_code, file_written) VALUES (%s, 'ok', 0, 'a.txt')",
        (log_id,),
    )
    conn.execute("INSERT INTO project_files (task_id, path, content) VALUES ('T-shop', 'src/app.py', 'x = 1\n')")
    conn.execute("INSERT INTO project_files (path, content) VALUES ('/notes/todo.md', 'buy milk')")
    conn.execute(
        "INSERT INTO knowledge (task_id, fact_label, fact_value, extracted_from, confidence_score)"
        " VALUES ('T-shop', 'test command', 'make test', 'command', 0.9)"
    )
    log = conn.execute("SELECT kind, project_id IS NOT NULL, executed_at IS NOT NULL FROM command_log").fetchone()
    assert log == ("shell", True, True)
    assert conn.execute("SELECT success, file_written FROM command_output").fetchone() == (True, "a.txt")
    files = conn.execute(
        "SELECT p.name, f.path, f.content_hash, f.size_bytes, f.chunked_hash, f.last_updated IS NOT NULL"
        " FROM project_files f JOIN projects p ON p.id = f.project_id ORDER BY f.path"
    ).fetchall()
    assert files == [
        ("default", "/notes/todo.md", hashlib.sha256(b"buy milk").hexdigest(), 8, None, True),
        ("shop", "src/app.py", hashlib.sha256(b"x = 1\n").hexdigest(), 6, None, True),
    ]
    fact = conn.execute(
        "SELECT p.name, k.status, k.tsv @@ to_tsquery('simple', 'make'), k.embedding IS NULL, k.inserted_at IS NOT NULL"
        " FROM knowledge k JOIN projects p ON p.id = k.project_id"
    ).fetchone()
    assert fact == ("shop", "active", True, True, True)


def test_plain_sql_changing_a_file_s_content_makes_it_wait_for_chunking(store_db: psycopg.Connection) -> None:
    conn = store_db
    conn.execute("INSERT INTO project_files (path, content) VALUES ('a.txt', 'one')")
    conn.execute("UPDATE project_files SET chunked_hash = content_hash")  # as if it had been chunked
    conn.execute("UPDATE project_files SET content = 'two two'")
    row = conn.execute("SELECT content_hash, size_bytes, chunked_hash IS DISTINCT FROM content_hash FROM project_files")
    assert row.fetchone() == (hashlib.sha256(b"two two").hexdigest(), 7, True)


def test_several_paths_fit_file_written_one_per_line(store_db: psycopg.Connection) -> None:
    from knowledgebase.store.audit import join_paths, split_paths

    paths = ["a.txt", "dir/b c.txt", "odd\nname"]
    assert split_paths(join_paths(paths)) == paths
    assert join_paths([]) is None and split_paths(None) == []


def test_the_audit_tables_stay_append_only_for_design_sql(store_db: psycopg.Connection) -> None:
    conn = store_db
    log_id = conn.execute("INSERT INTO command_log (command) VALUES ('ls') RETURNING id").fetchone()[0]  # type: ignore[index]
    conn.execute("INSERT INTO command_output (command_log_id, return_code) VALUES (%s, 1)", (log_id,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("UPDATE command_log SET command = 'rm -rf /' WHERE id = %s", (log_id,))
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("UPDATE command_output SET success = true")
    assert conn.execute("SELECT command FROM command_log").fetchone() == ("ls",)
    assert conn.execute("SELECT success FROM command_output").fetchone() == (False,)


def test_a_design_row_that_breaks_a_constraint_gets_postgres_own_error_and_changes_nothing(
    store_db: psycopg.Connection,
) -> None:
    conn = store_db
    conn.execute("INSERT INTO project_files (path, content) VALUES ('a.txt', 'one')")
    with pytest.raises(psycopg.errors.UniqueViolation, match="project_files"):
        conn.execute("INSERT INTO project_files (path, content) VALUES ('a.txt', 'again')")
    with pytest.raises(psycopg.errors.CheckViolation, match="confidence_score"):
        conn.execute("INSERT INTO knowledge (fact_label, fact_value, confidence_score) VALUES ('x', 'y', 5)")
    with pytest.raises(psycopg.errors.ForeignKeyViolation, match="task"):
        conn.execute("INSERT INTO project_files (task_id, path, content) VALUES ('T-none', 'b.txt', 'x')")
    assert conn.execute("SELECT count(*) FROM project_files").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM knowledge").fetchone() == (0,)


def test_a_0002_store_upgrades_to_the_design_names_keeping_every_row_and_back(fresh_database_url: str) -> None:
    from knowledgebase.db.schema import downgrade, upgrade

    upgrade(fresh_database_url, "0002")
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO projects (name) VALUES ('p')")
        conn.execute("INSERT INTO tasks (id, project_id) VALUES ('T-1', 1)")
        conn.execute(
            "INSERT INTO project_files (project_id, file_path, content, content_hash, size_bytes, chunked_hash)"
            " VALUES (1, 'src/a.py', 'x = 1', 'h1', 5, 'h1')"
        )
        conn.execute("INSERT INTO knowledge (project_id, label, value) VALUES (1, 'port', '5432')")
        conn.execute("INSERT INTO command_log (task_id, kind, proposed_command) VALUES ('T-1', 'shell', 'make')")
        conn.execute(
            "INSERT INTO command_output (command_log_id, success, file_written) VALUES (1, true, %s)",
            (["out/a.txt", "out/b.txt"],),
        )
        conn.execute("INSERT INTO command_output (command_log_id, success) VALUES (1, false)")
    upgrade(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        files = conn.execute("SELECT path, last_updated IS NOT NULL, task_id, chunked_hash FROM project_files")
        assert files.fetchall() == [("src/a.py", True, None, "h1")]
        assert conn.execute("SELECT fact_label, fact_value, inserted_at IS NOT NULL FROM knowledge").fetchall() == [
            ("port", "5432", True)
        ]
        assert conn.execute("SELECT command, executed_at IS NOT NULL FROM command_log").fetchall() == [("make", True)]
        assert conn.execute("SELECT file_written FROM command_output ORDER BY id").fetchall() == [
            ("out/a.txt\nout/b.txt",),
            (None,),
        ]
    downgrade(fresh_database_url, "0002")
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT file_written FROM command_output ORDER BY id").fetchall() == [
            (["out/a.txt", "out/b.txt"],),
            ([],),
        ]
        assert conn.execute("SELECT label, value FROM knowledge").fetchall() == [("port", "5432")]
        assert conn.execute("SELECT file_path FROM project_files").fetchall() == [("src/a.py",)]
        assert conn.execute("SELECT proposed_command, created_at IS NOT NULL FROM command_log").fetchall() == [
            ("make", True)
        ]
