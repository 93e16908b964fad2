"""Connections: the database URL, a pool with pgvector registered on every connection, clean errors.

db = open_database(settings)          # checks reachability, pgvector and schema revision
with db.connection() as conn:         # commits on success, rolls back on error
    ...
db.close()
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from knowledgebase.config import Settings
from knowledgebase.errors import DatabaseUnavailable, ExtensionMissing, SchemaMismatch

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

CONNECT_TIMEOUT_S = 5


def database_url(settings: Settings) -> str:
    """The URL to connect to: KB_DATABASE_URL, or the embedded server (started if needed)."""
    if settings.database_url:
        return settings.database_url
    from knowledgebase.db.embedded import ensure_server

    return ensure_server(settings.pgdata).url()


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***``, safe to print."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """One connection, with a clear error when the server cannot be reached."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DatabaseUnavailable(
            f"cannot connect to {redact_url(url)}: {reason}. Check that the server is running and "
            "KB_DATABASE_URL is right (unset it to use the embedded server)."
        ) from None


def register_vector_types(conn: psycopg.Connection) -> None:
    """Teach ``conn`` the pgvector types; a clear error if the extension is not installed."""
    from pgvector.psycopg import register_vector

    try:
        register_vector(conn)
    except Exception as exc:  # pgvector raises ProgrammingError("vector type not found")
        raise ExtensionMissing(
            "the pgvector extension is not installed in this database: run `kb init` "
            "(the server needs pgvector >= 0.7; see https://github.com/pgvector/pgvector#installation)"
        ) from exc


class Database:
    """A connection pool over one database; every connection speaks ``vector``."""

    def __init__(self, url: str, *, max_size: int = 4, timeout: float = 30, check: bool = False) -> None:
        """``timeout``: seconds to wait for a free connection; ``check``: test each connection on checkout
        (for long-lived processes that must notice a restarted server)."""
        from psycopg_pool import ConnectionPool

        self.url = url
        self._pool: ConnectionPool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            configure=_configure_connection,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            timeout=timeout,
            check=ConnectionPool.check_connection if check else None,
            open=True,
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection inside a transaction: committed on success, rolled back on error."""
        with self._pool.connection() as conn:
            yield conn

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def transaction(target: psycopg.Connection | Database) -> Iterator[psycopg.Connection]:
    """A connection to work on: the caller's own (inside its transaction), or a pooled one that
    commits at the end. Lets library functions take either a connection or a Database."""
    if isinstance(target, Database):
        with target.connection() as conn:
            yield conn
    else:
        yield target


def _configure_connection(conn: psycopg.Connection) -> None:
    register_vector_types(conn)
    conn.commit()


def open_database(
    settings: Settings,
    *,
    check_schema: bool = True,
    url: str | None = None,
    pool_timeout: float = 30,
    check_connections: bool = False,
) -> Database:
    """Open a pool on the configured database after checking it is usable (pool options as ``Database``).

    Raises DatabaseUnavailable, ExtensionMissing or SchemaMismatch with a message that says what to do.
    """
    from knowledgebase.db.schema import verify_schema

    url = url or database_url(settings)
    with connect(url) as conn:
        if check_schema:
            verify_schema(conn)
        else:
            has_vector = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if not has_vector:
                raise ExtensionMissing("the pgvector extension is not installed in this database: run `kb init`")
    return Database(url, max_size=settings.pool_size, timeout=pool_timeout, check=check_connections)


__all__ = [
    "Database",
    "DatabaseUnavailable",
    "ExtensionMissing",
    "SchemaMismatch",
    "connect",
    "database_url",
    "open_database",
    "redact_url",
    "transaction",
]
