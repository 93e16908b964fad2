"""Connections, the embedded server and failure messages."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from knowledgebase.config import Settings
from knowledgebase.db import Database, connect, open_database, redact_url, transaction
from knowledgebase.errors import ConfigError, DatabaseUnavailable, SchemaMismatch


def test_redact_url_hides_a_password_parameter_too() -> None:
    assert redact_url("postgresql://bob@db/kb?sslmode=require&password=s3cret&x=1") == (
        "postgresql://bob@db/kb?sslmode=require&password=***&x=1"
    )
    assert "s3cret" not in redact_url("host=db password='s3 cret' user=bob")


def test_redact_url_hides_the_password() -> None:
    assert redact_url("postgresql://bob:s3cret@db.example:5432/kb") == "postgresql://bob:***@db.example:5432/kb"
    assert redact_url("postgresql://bob@db/kb") == "postgresql://bob@db/kb"


def test_unreachable_database_is_one_clear_error() -> None:
    with pytest.raises(DatabaseUnavailable) as info:
        connect("postgresql://nobody:pw@127.0.0.1:1/nothing")
    message = str(info.value)
    assert "cannot connect to postgresql://nobody:***@127.0.0.1:1/nothing" in message
    assert "KB_DATABASE_URL" in message
    assert "pw@" not in message


def test_open_database_refuses_an_unmigrated_database(fresh_database_url: str, tmp_path: Path) -> None:
    with pytest.raises(SchemaMismatch, match="kb init"):
        open_database(Settings(home=tmp_path, database_url=fresh_database_url))


def test_the_embedded_server_of_a_fresh_home_is_migrated_on_first_use(tmp_path: Path) -> None:
    """`kb populate` on a fresh KB_HOME works without `kb init`: the embedded server is kb's own (an
    external server is not migrated behind its operator's back: the test above)."""
    from knowledgebase.db.embedded import stop_server
    from knowledgebase.db.schema import SCHEMA_REVISION, current_revision

    settings = Settings(home=tmp_path / "home")
    try:
        with open_database(settings) as database, database.connection() as conn:
            assert current_revision(conn) == SCHEMA_REVISION
            assert conn.execute("SELECT current_user").fetchone() == ("kb_agent_login",)
    finally:
        stop_server(settings.pgdata)


def test_open_database_registers_vector_on_pooled_connections(settings: Settings) -> None:
    import numpy as np

    with open_database(settings) as database, database.connection() as conn:
        value = conn.execute("SELECT %s::vector", (np.array([1.0, 2.0, 3.0], dtype=np.float32),)).fetchone()[0]  # type: ignore[index]
        assert value.to_numpy().tolist() == [1.0, 2.0, 3.0]


def test_bad_numeric_setting_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KB_EMBED_BATCH_SIZE"):
        Settings.from_env({"KB_HOME": str(tmp_path), "KB_EMBED_BATCH_SIZE": "many"})
    with pytest.raises(ConfigError, match="KB_EMBED_BACKEND"):
        Settings.from_env({"KB_HOME": str(tmp_path), "KB_EMBED_BACKEND": "gpu"})


def _start_embedded(pgdata: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from knowledgebase.db.embedded import ensure_server

    queue.put(ensure_server(Path(pgdata)).pid)


@pytest.mark.slow
def test_two_processes_starting_the_embedded_server_share_it(tmp_path: Path) -> None:
    from knowledgebase.db.embedded import running_server, stop_server

    pgdata = tmp_path / "pgdata"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_start_embedded, args=(str(pgdata), queue)) for _ in range(2)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
        assert [p.exitcode for p in procs] == [0, 0]
        pids = {queue.get(timeout=5), queue.get(timeout=5)}
        assert len(pids) == 1, "both processes must get the same server"
        server = running_server(pgdata)
        assert server is not None and server.pid in pids, "the server outlives the processes that started it"
    finally:
        assert stop_server(pgdata)
    assert running_server(pgdata) is None
    assert not stop_server(pgdata)


def test_a_server_gone_mid_transaction_is_database_unavailable(db: Database) -> None:
    import psycopg

    with pytest.raises(DatabaseUnavailable, match="cannot use the database") as info, db.connection() as conn:
        conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    assert isinstance(info.value.__cause__, psycopg.OperationalError)
    with db.connection() as conn:  # the pool replaced the dead connection
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_connection_lost_inside_a_callers_transaction_is_database_unavailable(db: Database) -> None:
    with Database(db.url, max_size=1) as other, other.connection() as conn:
        pid = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
        with db.connection() as killer:
            killer.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(DatabaseUnavailable), transaction(conn) as inside:
            inside.execute("SELECT 1")


def test_statement_errors_are_not_mistaken_for_an_outage(db: Database) -> None:
    import psycopg

    with pytest.raises(psycopg.errors.DivisionByZero), db.connection() as conn:
        conn.execute("SELECT 1 / 0")
    with pytest.raises(psycopg.errors.LockNotAvailable), db.connection() as a, db.connection() as b:
        a.execute("SELECT pg_advisory_xact_lock(42)")
        b.execute("SET lock_timeout = '10ms'")
        b.execute("SELECT pg_advisory_xact_lock(42)")
