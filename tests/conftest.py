"""Test fixtures: a real embedded PostgreSQL + pgvector per test session, a clean schema per test.

Set KB_TEST_ADMIN_URL to run against an external server instead (a URL to its `postgres` database
with the right to create databases).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `kb search` / `kb context` subprocesses would start a warm process that outlives the test; the tests
# of that path (test_cli_warm.py) turn it on for themselves
os.environ.setdefault("KB_WARM", "off")

import psycopg
import pytest
from psycopg import sql

from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.db.schema import TABLES, upgrade
from tests.gemini_harness import fake_gemini_server, gemini_cli, gemini_home  # noqa: F401  (shared fixtures)
from tests.support import HashingEmbedder, as_agent

TEST_DB = "kb_test"
_counter = itertools.count()


def _url_for(admin_url: str, database: str) -> str:
    """``admin_url`` (a postgresql:// URL) pointing at another database."""
    parts = urlsplit(admin_url)
    return urlunsplit(parts._replace(path="/" + database))


@pytest.fixture(scope="session")
def test_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kbhome")


@pytest.fixture(scope="session")
def admin_url(test_home: Path) -> Iterator[str]:
    """URL of the server's maintenance database; the embedded server is stopped after the session."""
    external = os.environ.get("KB_TEST_ADMIN_URL")
    if external:
        yield external
        return
    from knowledgebase.db.embedded import ensure_server, stop_server

    server = ensure_server(test_home / "pgdata")
    yield server.url("postgres")
    stop_server(test_home / "pgdata")


def _create_database(admin_url: str, name: str) -> str:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return _url_for(admin_url, name)


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def fresh_database_url(admin_url: str) -> Iterator[str]:
    """An empty database (no schema, no extension), dropped after the test."""
    name = f"kb_fresh_{os.getpid()}_{next(_counter)}"
    yield _create_database(admin_url, name)
    _drop_database(admin_url, name)


@pytest.fixture(scope="session")
def migrated_url(admin_url: str) -> Iterator[str]:
    """A database at the head revision, shared by the session (cleaned per test by ``db_url``)."""
    url = _create_database(admin_url, TEST_DB)
    upgrade(url)
    yield url
    _drop_database(admin_url, TEST_DB)


@pytest.fixture
def db_url(migrated_url: str) -> str:
    """The migrated test database, emptied before the test."""
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)
    with psycopg.connect(migrated_url, autocommit=True) as conn:
        conn.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY CASCADE").format(tables))
    return migrated_url


@pytest.fixture
def agent_db_url(db_url: str) -> str:
    """The clean test database, reached as the least-privilege agent login (as `kb` reaches it by default)."""
    return as_agent(db_url)


@pytest.fixture
def private_db(fresh_database_url: str) -> Iterator[Database]:
    """A migrated database of its own: retyping vector columns must not leak into the shared one."""
    from knowledgebase.db.schema import upgrade

    upgrade(fresh_database_url)
    database = Database(fresh_database_url, max_size=4)
    yield database
    database.close()


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Settings pointing at the clean test database, with a private KB_HOME."""
    return Settings(home=tmp_path / "home", database_url=db_url)


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url, max_size=4)
    yield database
    database.close()


@pytest.fixture
def conn(db: Database) -> Iterator[psycopg.Connection]:
    """A pooled connection; what the test leaves uncommitted is committed at the end."""
    with db.connection() as connection:
        yield connection


@pytest.fixture(scope="session")
def real_embedder():  # type: ignore[no-untyped-def]
    """The real default model (all-MiniLM-L6-v2 from its wheel), loaded once per session."""
    from knowledgebase.embedding import SentenceTransformerEmbedder

    embedder = SentenceTransformerEmbedder()
    embedder.embed_query("warm up")
    return embedder


@pytest.fixture
def fake_embedder() -> HashingEmbedder:
    """A deterministic bag-of-words embedder for ranking arithmetic (not for semantic claims)."""
    return HashingEmbedder()
