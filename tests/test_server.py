"""``kb server``: a primary and a hot standby on loopback ports, started by these tests (real servers,
real TLS, real streaming replication), and the read routing of ``KB_READ_DATABASE_URL``.

The servers are shared by the module; the tests that stop one come last and start it again.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from knowledgebase.config import Settings, get_settings
from knowledgebase.db import Database, open_database
from knowledgebase.db.replica import init_replica
from knowledgebase.db.server import ServerInfo, ServerLayout, server_status, start_server, stop_server
from knowledgebase.db.server_files import read_pgpass
from knowledgebase.db.server_init import init_server
from knowledgebase.errors import ConfigError, DatabaseUnavailable, InputError
from knowledgebase.facts import add_fact
from knowledgebase.search.retrieval import search
from tests.support import HashingEmbedder

MEMORY_MB = 512  # small settings: several servers run at once on a CI machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class Pair:
    primary: ServerLayout
    replica: ServerLayout
    info: ServerInfo
    replica_info: ServerInfo


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    root = tmp_path_factory.mktemp("kbserver")
    primary, replica = ServerLayout(root / "primary"), ServerLayout(root / "replica")
    info = init_server(primary, listen=("127.0.0.1", free_port()), memory_mb=MEMORY_MB)
    assert info.replication_url is not None
    replica_info = init_replica(
        replica, from_url=info.replication_url, listen=("127.0.0.1", free_port()), memory_mb=MEMORY_MB
    )
    yield Pair(primary, replica, info, replica_info)
    stop_server(replica)
    stop_server(primary)


def _owner_on(layout: ServerLayout, pair: Pair) -> str:
    """The owner (superuser) on ``layout``'s private socket; a replica has the primary's passwords."""
    return f"host={layout.run_dir} port=5432 dbname=postgres user=postgres passfile={pair.primary.pgpass('owner')}"


def _settings(pair: Pair, tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"KB_HOME": str(tmp_path / "home"), "KB_DATABASE_URL": pair.info.agent_url, **env})


def _wait_for(predicate, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


# --- the primary -------------------------------------------------------------------------------


def test_an_agent_connects_over_tls_as_the_least_privileged_role(pair: Pair) -> None:
    with psycopg.connect(pair.info.agent_url) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT current_user").fetchone() == ("kb_agent_login",)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM command_log")  # the audit trail is append-only for agents
    method = psycopg.connect(pair.primary.owner_url("postgres")).execute("SHOW password_encryption").fetchone()
    assert method == ("scram-sha-256",)


def test_passwords_are_in_private_files_and_nowhere_else(pair: Pair) -> None:
    for who in ("owner", "agent", "replicator"):
        path = pair.primary.pgpass(who)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        password = read_pgpass(path)[1]
        assert password not in pair.info.agent_url and password not in (pair.info.replication_url or "")
        for log in (pair.primary.log_file, pair.primary.pgdata / "server.log", pair.replica.log_file):
            assert password not in log.read_text(errors="replace")
    assert stat.S_IMODE((pair.primary.tls_dir / "server.key").stat().st_mode) == 0o600
    rows = (
        psycopg.connect(pair.primary.owner_url("postgres"))
        .execute("SELECT rolpassword FROM pg_authid WHERE rolname IN ('kb_agent_login', 'kb_replicator')")
        .fetchall()
    )
    assert len(rows) == 2 and all(r[0].startswith("SCRAM-SHA-256$") for r in rows)


def test_the_tuning_file_is_sized_from_the_memory_given(pair: Pair) -> None:
    text = pair.info.tuning_file.read_text()
    assert "shared_buffers = '128MB'" in text and "maintenance_work_mem = '64MB'" in text
    with psycopg.connect(pair.primary.owner_url("postgres")) as conn:
        assert conn.execute("SHOW shared_buffers").fetchone() == ("128MB",)
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)  # only the private socket


def test_init_again_brings_the_schema_of_an_older_kb_to_head(pair: Pair) -> None:
    from knowledgebase.db.schema import SCHEMA_REVISION, current_revision, downgrade

    config = pair.primary.config()
    previous = f"{int(SCHEMA_REVISION) - 1:04d}"
    downgrade(pair.primary.owner_url(), previous)  # as a server made by the kb before this one
    init_server(pair.primary, listen=(config.host, config.port), memory_mb=MEMORY_MB)
    with psycopg.connect(pair.primary.owner_url()) as conn:
        assert current_revision(conn) == SCHEMA_REVISION


def test_init_again_is_a_no_op_that_prints_the_same_url(pair: Pair) -> None:
    config = pair.primary.config()
    again = init_server(pair.primary, listen=(config.host, config.port), memory_mb=MEMORY_MB)
    assert not again.created and again.agent_url == pair.info.agent_url
    with pytest.raises(InputError, match="already holds a primary"):
        init_server(pair.primary, listen=(config.host, free_port()))


def test_a_client_without_tls_is_told_to_use_it(pair: Pair) -> None:
    with pytest.raises(psycopg.OperationalError, match="accepts only TLS connections: add sslmode=verify-full"):
        psycopg.connect(pair.info.agent_url.replace("sslmode=verify-full", "sslmode=disable"), connect_timeout=5)


def test_a_wrong_password_is_one_clear_line_from_kb(pair: Pair, tmp_path: Path) -> None:
    url = pair.info.agent_url.split("&passfile=")[0] + "&password=not-the-password"
    env = {**os.environ, "KB_HOME": str(tmp_path / "home"), "KB_DATABASE_URL": url, "KB_WARM": "off"}
    done = subprocess.run(
        [sys.executable, "-m", "knowledgebase", "status"], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 1
    lines = [
        line
        for line in done.stderr.splitlines()
        if line.strip() and "Warning" not in line and "user_runtime_dir" not in line
    ]
    assert len(lines) == 1, done.stderr
    assert 'password authentication failed for user "kb_agent_login"' in lines[0]
    assert "not-the-password" not in done.stderr


def test_a_client_outside_the_allowed_networks_is_refused(tmp_path: Path) -> None:
    layout = ServerLayout(tmp_path / "closed")
    info = init_server(layout, listen=("127.0.0.1", free_port()), allow=["10.0.0.0/8"], memory_mb=MEMORY_MB)
    try:
        with pytest.raises(psycopg.OperationalError, match=r"connections from 127\.0\.0\.1 are not allowed"):
            psycopg.connect(info.agent_url, connect_timeout=5)
        assert server_status(layout).in_recovery is False  # the owner, on the private socket, still gets in
    finally:
        stop_server(layout)
    assert not server_status(layout).running


def test_listening_beyond_loopback_needs_allow_and_nothing_is_made(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--allow"):
        init_server(ServerLayout(tmp_path / "open"), listen=("0.0.0.0", free_port()))
    assert not (tmp_path / "open").exists()


def test_a_port_in_use_is_refused_before_anything_is_made(pair: Pair, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot listen on"):
        init_server(ServerLayout(tmp_path / "clash"), listen=("127.0.0.1", pair.primary.config().port))
    assert not (tmp_path / "clash").exists()


# --- the replica -------------------------------------------------------------------------------


def test_the_replica_streams_from_the_primary(pair: Pair) -> None:
    report = server_status(pair.replica)
    assert report.running and report.in_recovery and report.streaming
    primary = server_status(pair.primary)
    assert [r["state"] for r in primary.replicas] == ["streaming"]
    with psycopg.connect(pair.replica_info.agent_url + "&passfile=" + str(pair.primary.pgpass("agent"))) as conn:
        assert conn.pgconn.ssl_in_use
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO projects (name) VALUES ('x')")


def test_a_replica_of_a_standby_is_refused(pair: Pair, tmp_path: Path) -> None:
    port = pair.replica.config().port
    url = (
        f"postgresql://kb_replicator@127.0.0.1:{port}/postgres?sslmode=verify-full"
        f"&sslrootcert={pair.replica.ca_cert}&passfile={pair.primary.pgpass('replicator')}"
    )
    with pytest.raises(InputError, match=r"is a standby .* not a primary"):
        init_replica(ServerLayout(tmp_path / "r2"), from_url=url, listen=("127.0.0.1", free_port()))
    assert not (tmp_path / "r2").exists()


def test_a_replica_with_a_wrong_password_says_so_and_leaves_nothing(pair: Pair, tmp_path: Path) -> None:
    url = (pair.info.replication_url or "").split("&passfile=")[0] + "&password=wrong"
    with pytest.raises(DatabaseUnavailable, match="password authentication failed"):
        init_replica(ServerLayout(tmp_path / "r3"), from_url=url, listen=("127.0.0.1", free_port()))
    assert not (tmp_path / "r3").exists()


# --- read routing ------------------------------------------------------------------------------


def test_read_urls_need_a_primary_url_and_are_split() -> None:
    with pytest.raises(ConfigError, match="KB_DATABASE_URL is not"):
        Settings.from_env({"KB_HOME": "/tmp/x", "KB_READ_DATABASE_URL": "postgresql://a/b"})
    settings = Settings.from_env(
        {
            "KB_HOME": "/tmp/x",
            "KB_DATABASE_URL": "postgresql://p/db",
            "KB_READ_DATABASE_URL": "postgresql://a/b?x=1,postgresql://h1,h2/db postgres://c/d",
        }
    )
    assert settings.read_database_urls == ("postgresql://a/b?x=1", "postgresql://h1,h2/db", "postgres://c/d")
    with pytest.raises(ConfigError, match="not a postgresql:// URL"):
        Settings.from_env({"KB_HOME": "/tmp/x", "KB_DATABASE_URL": "postgresql://p/db", "KB_READ_DATABASE_URL": "x"})


def _search_labels(db: Database, embedder: HashingEmbedder, query: str) -> list[str]:
    return [getattr(h, "fact_label", "") for h in search(db, embedder, query, kinds=("fact",), limit=20)]


def _found_on_the_replica(db: Database, pair: Pair, query: str) -> None:
    """Wait until a search for ``query`` finds something and was answered by the replica."""
    _wait_for(
        lambda: (
            bool(_search_labels(db, HashingEmbedder(), query)) and db.last_read_source == pair.replica_info.agent_url
        )
    )


def test_a_process_reads_its_own_writes_and_then_reads_from_the_replica(pair: Pair, tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    settings = _settings(pair, tmp_path, KB_READ_DATABASE_URL=pair.replica_info.agent_url)
    with open_database(settings) as db:
        add_fact(db, embedder, label="ryw.first", value="the staging cluster is called heron")
        assert "ryw.first" in _search_labels(db, embedder, "staging cluster heron")  # at once: no lag seen
        _found_on_the_replica(db, pair, "staging cluster heron")
        # replay paused: the replica falls behind this process's next write, the primary answers
        with psycopg.connect(_owner_on(pair.replica, pair), autocommit=True) as owner:
            owner.execute("SELECT pg_wal_replay_pause()")
            try:
                add_fact(db, embedder, label="ryw.second", value="the production cluster is called osprey")
                assert "ryw.second" in _search_labels(db, embedder, "production cluster osprey")
                assert db.last_read_source == "primary"
            finally:
                owner.execute("SELECT pg_wal_replay_resume()")
        _wait_for(
            lambda: (
                "ryw.second" in _search_labels(db, embedder, "production cluster osprey")
                and db.last_read_source == pair.replica_info.agent_url
            )
        )


def test_the_next_process_of_the_same_home_reads_the_last_ones_writes(pair: Pair, tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    settings = _settings(pair, tmp_path, KB_READ_DATABASE_URL=pair.replica_info.agent_url)
    with psycopg.connect(_owner_on(pair.replica, pair), autocommit=True) as owner:
        owner.execute("SELECT pg_wal_replay_pause()")
        try:
            with open_database(settings) as db:  # `kb fact add`
                add_fact(db, embedder, label="home.fact", value="the build cache lives in bucket kestrel")
            assert (settings.home / "read-after.lsn").exists()
            with open_database(settings) as db:  # `kb search`, a new process of the same home
                assert "home.fact" in _search_labels(db, embedder, "build cache bucket kestrel")
                assert db.last_read_source == "primary"
        finally:
            owner.execute("SELECT pg_wal_replay_resume()")


def test_an_unreachable_replica_is_skipped(pair: Pair, tmp_path: Path) -> None:
    dead = f"postgresql://kb_agent_login@127.0.0.1:{free_port()}/knowledgebase?sslmode=require"
    embedder = HashingEmbedder()
    with open_database(_settings(pair, tmp_path, KB_READ_DATABASE_URL=dead)) as db:
        add_fact(db, embedder, label="skip.fact", value="nightly backups go to the vault")
        assert "skip.fact" in _search_labels(db, embedder, "nightly backups vault")
        assert db.last_read_source == "primary"


def test_kb_status_shows_each_read_replica(pair: Pair, tmp_path: Path) -> None:
    from knowledgebase.db.status import store_status

    dead = f"postgresql://kb_agent_login@127.0.0.1:{free_port()}/knowledgebase?sslmode=require"
    report = store_status(_settings(pair, tmp_path, KB_READ_DATABASE_URL=f"{pair.replica_info.agent_url} {dead}"))
    live, gone = report.replicas
    assert live.reachable and live.in_recovery and live.lag_bytes is not None
    assert not gone.reachable and gone.error


def test_the_readme_commands_work_through_the_server_and_its_replica(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from click.testing import CliRunner

    import knowledgebase.embedding
    from knowledgebase.cli import cli

    monkeypatch.setattr(
        knowledgebase.embedding, "embedder_from_settings", lambda settings, purpose="index": HashingEmbedder()
    )
    project = tmp_path / "shop"
    project.mkdir()
    (project / "pricing.py").write_text(
        'def discount_price(total):\n    """Ten percent off."""\n    return total * 0.9\n'
    )
    monkeypatch.chdir(project)
    env = {
        "KB_HOME": str(tmp_path / "home"),
        "KB_DATABASE_URL": pair.info.agent_url,
        "KB_READ_DATABASE_URL": pair.replica_info.agent_url,
        "KB_WARM": "off",
    }
    runner = CliRunner()

    def kb(*args: str) -> str:
        get_settings.cache_clear()  # the CLI reads the environment once per process: read this test's
        try:
            result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        finally:
            get_settings.cache_clear()
        assert result.exit_code == 0, result.output
        return result.output

    kb("init")
    kb("populate", ".")
    kb("fact", "add", "deploy.command", "make deploy-prod ships the shop to the cluster")
    assert "make deploy-prod" in kb("search", "how do I deploy the shop", "--kind", "fact")  # its own write
    assert "discount_price" in kb("search", "ten percent discount", "--json")
    assert "discount_price" in kb("context", "discount price of the total: ten percent off")
    kb("exec", "--", "true")
    assert "true" in kb("log", "-n", "3")
    status = json.loads(kb("status", "--json"))
    assert status["schema_ok"] and [r["in_recovery"] for r in status["replicas"]] == [True]
    assert "shop" in kb("projects", "list")


def test_a_replica_that_dies_in_the_middle_of_a_read_loses_nothing(pair: Pair, tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    settings = _settings(pair, tmp_path, KB_READ_DATABASE_URL=pair.replica_info.agent_url)
    with open_database(settings) as db:
        add_fact(db, embedder, label="die.fact", value="the queue is drained by worker falcon")
        _found_on_the_replica(db, pair, "queue drained worker falcon")
        calls: list[str] = []

        def read(conn: psycopg.Connection) -> list[str]:
            calls.append("call")
            if len(calls) == 1:  # the replica goes away under the first attempt
                stop_server(pair.replica)
                conn.execute("SELECT 1")
            return [r[0] for r in conn.execute("SELECT fact_label FROM knowledge WHERE fact_label = 'die.fact'")]

        try:
            assert db.read(read) == ["die.fact"]
            assert len(calls) == 2 and db.last_read_source == "primary"
            assert "die.fact" in _search_labels(db, embedder, "queue drained worker falcon")  # skipped for now
        finally:
            start_server(pair.replica)
    _wait_for(lambda: bool(server_status(pair.replica).streaming))


def test_with_the_primary_down_reads_go_on_from_the_replica(pair: Pair, tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    settings = _settings(pair, tmp_path, KB_READ_DATABASE_URL=pair.replica_info.agent_url)
    with open_database(settings) as db:
        add_fact(db, embedder, label="down.fact", value="the on-call rota is in the wiki under pager")
        _found_on_the_replica(db, pair, "on-call rota wiki pager")
        stop_server(pair.primary)
        try:
            add_fact_failed = False
            try:
                add_fact(db, embedder, label="down.other", value="written while the primary is down")
            except DatabaseUnavailable:
                add_fact_failed = True
            assert add_fact_failed
            assert "down.fact" in _search_labels(db, embedder, "on-call rota wiki pager")
            assert db.last_read_source == pair.replica_info.agent_url
        finally:
            start_server(pair.primary)
    _wait_for(lambda: bool(server_status(pair.replica).streaming), timeout=60)
