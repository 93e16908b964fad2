"""Schema revisions: apply the alembic migrations, and check that a database matches this code.

Revisions are numbered (``0001``, ``0002``...), so "behind" and "ahead" are a comparison of numbers
and checking a database costs one query and no alembic import (the hook path relies on that).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from knowledgebase.errors import ExtensionMissing, SchemaMismatch

if TYPE_CHECKING:
    import psycopg
    from alembic.config import Config

# The head revision this code expects; tests assert it equals alembic's head.
SCHEMA_REVISION = "0009"
# pg_advisory_xact_lock key held while migrating ("kbschema" in ASCII).
MIGRATION_LOCK_KEY = 0x6B62736368656D61
MIN_PGVECTOR = (0, 7)

TABLES = (
    "projects",
    "embedding_models",
    "api_keys",
    "api_key_grants",
    "tasks",
    "command_log",
    "command_output",
    "usage_log",
    "project_files",
    "file_chunks",
    "chunk_summaries",
    "chunk_vector_cache",
    "chunk_term_counts",
    "knowledge",
    "context_log",
)


def migrations_dir() -> Path:
    """The alembic script directory: ``migrations/`` in a checkout, ``knowledgebase/migrations`` in a wheel."""
    import importlib.util

    spec = importlib.util.find_spec("knowledgebase.migrations")
    if spec is None or not spec.submodule_search_locations:
        raise SchemaMismatch("the migrations are missing from this installation; reinstall knowledgebase")
    return Path(next(iter(spec.submodule_search_locations)))


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy's psycopg 3 dialect."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def alembic_config(url: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["url"] = url
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision``; safe to run concurrently."""
    from alembic import command

    _check_pgvector_available(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    """Migrate the database at ``url`` down to ``revision``."""
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    """The head revision of the shipped migrations (reads the script directory)."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config("")).get_current_head()
    if head is None:
        raise SchemaMismatch("the shipped migrations have no head revision; reinstall knowledgebase")
    return head


def current_revision(conn: psycopg.Connection) -> str | None:
    """The revision the database is at, or None for an empty database.

    A login that may not read it (the agent role before revision 0004 granted it anything) gets
    SchemaMismatch saying to run `kb init`."""
    exists = conn.execute(
        "SELECT to_regclass('alembic_version') IS NOT NULL,"
        " has_table_privilege(to_regclass('alembic_version'), 'SELECT')"
    ).fetchone()
    if not exists or not exists[0]:
        return None
    if not exists[1]:
        raise SchemaMismatch(
            f"{conn.info.user} may not read this database's schema revision: run `kb init` (as the tables' owner) "
            "to grant the agent role its rights (README, 'Running on your own server: roles and grants')"
        )
    row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def pgvector_version(conn: psycopg.Connection) -> str | None:
    """The installed pgvector version, or None when the extension is not installed."""
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    return row[0] if row else None


def schema_behind(conn: psycopg.Connection) -> bool:
    """Whether the database has no schema yet or one older than this code's (``kb init`` would help)."""
    revision = current_revision(conn)
    return revision is None or _revision_number(revision) < _revision_number(SCHEMA_REVISION)


def verify_schema(conn: psycopg.Connection) -> None:
    """Raise SchemaMismatch or ExtensionMissing unless the database is at this code's revision."""
    revision = current_revision(conn)
    if revision is None:
        raise SchemaMismatch("the database has no knowledgebase schema yet: run `kb init`")
    if pgvector_version(conn) is None:
        raise ExtensionMissing("the pgvector extension is missing from this database: run `kb init`")
    if revision == SCHEMA_REVISION:
        return
    if _revision_number(revision) < _revision_number(SCHEMA_REVISION):
        raise SchemaMismatch(
            f"the database schema is at revision {revision}, behind this code ({SCHEMA_REVISION}): run `kb init`"
        )
    raise SchemaMismatch(
        f"the database schema is at revision {revision}, ahead of this code ({SCHEMA_REVISION}): "
        "upgrade knowledgebase (pip install -U knowledgebase) on this machine"
    )


def _revision_number(revision: str) -> int:
    try:
        return int(revision)
    except ValueError:
        return -1


def _check_pgvector_available(url: str) -> None:
    from knowledgebase.db.connect import connect

    with connect(url) as conn:
        row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if row is None:
        raise ExtensionMissing(
            "pgvector is not available on this PostgreSQL server: install it "
            "(https://github.com/pgvector/pgvector#installation) or unset KB_DATABASE_URL to use the embedded server"
        )
    version = tuple(int(p) for p in row[0].split(".")[:2])
    if version < MIN_PGVECTOR:
        raise ExtensionMissing(
            f"pgvector {row[0]} is too old; knowledgebase needs >= {'.'.join(map(str, MIN_PGVECTOR))}"
        )
