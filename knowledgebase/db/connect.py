"""Where psycopg enters the package: one connection, and its failures turned into ``DatabaseUnavailable``.

Every database call of the package runs inside ``database_errors()`` (``connect``, ``Database.connection``
and ``transaction`` wrap it), so callers above ``db/`` see a server that is down, unreachable or gone
mid-transaction as ``DatabaseUnavailable`` and never decide for themselves which psycopg exception
means that. Other psycopg errors (a constraint violated, a bad value) pass through unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from knowledgebase.errors import DatabaseUnavailable, ExtensionMissing, InputError, first_line

if TYPE_CHECKING:
    import psycopg

CONNECT_TIMEOUT_S = 5
# SQLSTATEs of a server going away: admin_shutdown, crash_shutdown, cannot_connect_now (class 08 is
# "connection exception" as a whole)
_SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})
_RECOVERY_HINT = "Check that the server is running and KB_DATABASE_URL is right (unset it to use the embedded server)."


_PASSWORD_PARAM = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|[^&\s]*)")


def redact_url(url: str) -> str:
    """The URL (or ``key=value`` string) with any password replaced by ``***``, safe to print: in the
    user part and as a ``password=`` parameter."""
    url = _PASSWORD_PARAM.sub(r"\1***", url)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def split_password(url: str) -> tuple[str, str | None]:
    """``url`` without its password, and the libpq password-file line (``host:port:db:user:password``)
    that supplies it again; ``(url, None)`` when it has none. Takes URLs and ``key=value`` strings."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    if not password:
        return url, None
    if url.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(url)
        userinfo, _, hostport = parts.netloc.rpartition("@")
        netloc = f"{userinfo.split(':', 1)[0]}@{hostport}" if userinfo else hostport
        query = urlencode([(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "password"])
        bare = urlunsplit(parts._replace(netloc=netloc, query=query))
    else:
        bare = make_conninfo(**{k: str(v) for k, v in params.items()})
    host = str(params.get("host") or "localhost")
    fields = [
        "*" if "," in host else host,
        str(params.get("port") or "*"),
        str(params.get("dbname") or "*"),
        str(params.get("user") or "*"),
        str(password),
    ]
    return bare, ":".join(f.replace("\\", "\\\\").replace(":", "\\:") for f in fields)


def is_connection_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says the server cannot be reached or went away (not that a statement failed)."""
    import psycopg
    from psycopg_pool import PoolTimeout

    if isinstance(exc, PoolTimeout):  # no connection could be opened (or freed) in time
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate
        return state is None or state.startswith("08") or state in _SHUTDOWN_STATES
    return False


# numeric_value_out_of_range, datetime_field_overflow, interval_field_overflow: a number too large for its column
_OUT_OF_RANGE_STATES = frozenset({"22003", "22008", "22015"})


def _out_of_range(exc: BaseException) -> bool:
    import psycopg

    return isinstance(exc, psycopg.DataError) and exc.sqlstate in _OUT_OF_RANGE_STATES


@contextmanager
def database_errors(target: str | psycopg.Connection) -> Iterator[None]:
    """Turn a connection-level psycopg failure inside the block into ``DatabaseUnavailable``, and a
    number out of range for its column (a value no check caught) into ``InputError``.

    ``target``: the URL or the connection concerned, named in the message (without its password);
    a connection is described only when it failed, which keeps the block free on the way through.
    """
    try:
        yield
    except Exception as exc:
        if _out_of_range(exc):
            raise InputError(
                f"a value is out of range for the database: {first_line(exc)}; give a smaller one"
            ) from exc
        if not is_connection_failure(exc):
            raise
        where = redact_url(target) if isinstance(target, str) else _describe(target)
        raise DatabaseUnavailable(f"cannot use the database at {where}: {first_line(exc)}. {_RECOVERY_HINT}") from exc


def _describe(conn: psycopg.Connection) -> str:
    try:
        return conn.info.dsn  # the connection string without its password
    except Exception:  # a connection that is gone may not say any more
        return "the configured server"


def connect(url: str, *, autocommit: bool = False) -> psycopg.Connection:
    """One connection, with a clear error when the server cannot be reached."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=autocommit, connect_timeout=CONNECT_TIMEOUT_S)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"cannot connect to {redact_url(url)}: {first_line(exc)}. {_RECOVERY_HINT}") from None


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


def configure_connection(conn: psycopg.Connection) -> None:
    """What every pooled connection gets first: the pgvector types."""
    register_vector_types(conn)
    conn.commit()
