"""The connection pool: the database URL, a pool with pgvector registered on every connection.

db = open_database(settings)          # checks reachability, pgvector and schema revision
with db.connection() as conn:         # the primary; commits on success, rolls back on error
    ...
hits = db.read(lambda conn: ...)      # a read-only query: on a read replica when one is fresh
db.close()

Library functions take a ``Database`` at the top of a call and hand its connection down; the data
access functions of ``knowledgebase.store`` take that connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from knowledgebase.config import Settings
from knowledgebase.db.connect import CONNECT_TIMEOUT_S, configure_connection, connect, database_errors
from knowledgebase.db.embedded import ensure_server
from knowledgebase.db.routing import ReadRouter
from knowledgebase.db.schema import schema_behind, upgrade, verify_schema
from knowledgebase.errors import ExtensionMissing

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

T = TypeVar("T")


def database_url(settings: Settings, *, owner: bool = False) -> str:
    """The URL to connect to: KB_DATABASE_URL, or the embedded server (started if needed).

    On the embedded server, the least-privilege agent login, or with ``owner`` the tables' owner (for
    migrations and other schema changes). An external URL is used as given: its roles are the
    operator's (README, "Running on your own server: roles and grants")."""
    if settings.database_url:
        return settings.database_url
    server = ensure_server(settings.pgdata)
    return server.url() if owner else server.agent_url()


class Database:
    """A connection pool over one database (the primary), and over its read replicas when
    KB_READ_DATABASE_URL names some; every connection speaks ``vector``."""

    def __init__(
        self,
        url: str,
        *,
        max_size: int = 4,
        timeout: float = 30,
        check: bool = False,
        read_urls: Sequence[str] = (),
        lsn_file: Path | None = None,
    ) -> None:
        """``timeout``: seconds to wait for a free connection; ``check``: test each connection on checkout
        (for long-lived processes that must notice a restarted server); ``read_urls``: read replicas
        (``knowledgebase.db.routing``), ``lsn_file`` where processes of one home leave their last write."""
        from psycopg_pool import ConnectionPool

        self.url = url
        self._pool: ConnectionPool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            configure=configure_connection,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_S},
            timeout=timeout,
            check=ConnectionPool.check_connection if check else None,
            open=True,
        )
        self._router = ReadRouter(read_urls, url, max_size=max_size, lsn_file=lsn_file) if read_urls else None

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection to the primary inside a transaction: committed on success, rolled back
        on error. A server that cannot be reached or goes away raises ``DatabaseUnavailable``."""
        if self._router is not None:
            self._router.dirty = True  # it may write: the next read waits for a replica to replay it
        with self._primary() as conn:
            yield conn

    @contextmanager
    def _primary(self) -> Iterator[psycopg.Connection]:
        with database_errors(self.url), self._pool.connection() as conn:
            yield conn

    def read(self, fn: Callable[[psycopg.Connection], T]) -> T:
        """``fn(conn)`` for a read-only ``fn``: on a read replica that has replayed this process's
        writes, else on the primary; run again elsewhere when a replica fails under it."""
        if self._router is None:
            with self._primary() as conn:
                return fn(conn)
        return self._router.read(fn, self._primary)

    @property
    def last_read_source(self) -> str:
        """Where the latest ``read`` ran: ``"primary"`` or a replica's URL."""
        return self._router.last_source if self._router is not None else "primary"

    def close(self) -> None:
        if self._router is not None:
            self._router.close(self._primary)
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
        with database_errors(target):
            yield target


def open_database(
    settings: Settings,
    *,
    check_schema: bool = True,
    url: str | None = None,
    pool_timeout: float = 30,
    check_connections: bool = False,
    owner: bool = False,
) -> Database:
    """Open a pool on the configured database after checking it is usable (pool options as ``Database``);
    ``owner``: as the tables' owner (see ``database_url``), for schema changes.

    The embedded server is kb's own: a schema it lacks or that is behind this code is migrated here
    (what `kb init` does), so a fresh KB_HOME needs no separate step. An external server is never
    migrated behind its operator's back: SchemaMismatch says to run `kb init`.

    Raises DatabaseUnavailable, ExtensionMissing or SchemaMismatch with a message that says what to do.
    """
    embedded_default = url is None and settings.uses_embedded_db
    url = url or database_url(settings, owner=owner)
    with connect(url) as conn, database_errors(url):
        if check_schema:
            if embedded_default and schema_behind(conn):
                upgrade(database_url(settings, owner=True))
            verify_schema(conn)
        else:
            has_vector = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
            if not has_vector:
                raise ExtensionMissing("the pgvector extension is not installed in this database: run `kb init`")
    read_urls = settings.read_database_urls if not owner and url == settings.database_url else ()
    return Database(
        url,
        max_size=settings.pool_size,
        timeout=pool_timeout,
        check=check_connections,
        read_urls=read_urls,
        lsn_file=settings.home / "read-after.lsn" if read_urls else None,
    )
