"""``kb server replica``: a hot standby of a ``kb server`` primary, by streaming replication.

    info = init_replica(ServerLayout(path), from_url=primary.replication_url, listen=("127.0.0.1", 6544))

The wheel's ``pg_basebackup`` and walreceiver have no TLS, so they reach the primary through a
``Tunnel`` (a local socket carried over TLS to the primary's front, verified against its CA). The
standby has the primary's roles and passwords (a base backup copies them): agents read from it with
the same password file, on ``KB_READ_DATABASE_URL``.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from knowledgebase.db.embedded import DATABASE_NAME
from knowledgebase.db.server import (
    REPLICATOR_ROLE,
    SOCKET_PORT,
    ServerConfig,
    ServerInfo,
    ServerLayout,
    let_server_user_in,
    owned_dir,
    run_pg,
    server_user,
    start_server,
    write_server_conf,
)
from knowledgebase.db.server_files import read_pgpass, subject_names, write_certificates, write_pgpass
from knowledgebase.db.server_init import (
    advertised_host,
    check_can_create,
    default_allow,
    existing_config,
    server_info,
)
from knowledgebase.db.tls_front import Tunnel, client_context
from knowledgebase.errors import DatabaseUnavailable, InputError, first_line
from knowledgebase.util.private_files import make_private_dir


def _primary_params(from_url: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(from_url).items() if v is not None}
    except Exception as exc:
        raise InputError(f"--from is not a PostgreSQL URL: {first_line(exc)}") from None
    if not params.get("host") or params["host"].startswith("/"):
        raise InputError("--from needs the primary's network address (the replication URL `kb server init` printed)")
    if not params.get("sslrootcert"):
        raise InputError("--from needs sslrootcert=<the primary's ca.crt> (copy tls/ca.crt from the primary)")
    return params


def _password(params: dict[str, str]) -> str:
    if params.get("password"):
        return params["password"]
    passfile = params.get("passfile")
    if not passfile:
        raise InputError("--from needs the replication password: passfile=<replicator.pgpass> (or password=...)")
    try:
        return read_pgpass(Path(passfile))[1]
    except (OSError, IndexError, ValueError):
        raise InputError(f"cannot read the password file {passfile}") from None


def check_primary(from_url: str) -> None:
    """The server behind ``from_url`` answers, takes the password and is a primary (not a standby)."""
    import psycopg

    from knowledgebase.db.connect import redact_url

    try:
        with psycopg.connect(from_url, connect_timeout=10, autocommit=True) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"cannot reach the primary at {redact_url(from_url)}: {first_line(exc)}") from None
    if row is not None and row[0]:
        raise InputError(
            f"{redact_url(from_url)} is a standby (a read replica), not a primary: point --from at the primary"
        )


@contextmanager
def _tunnel_running(tunnel: Tunnel) -> Iterator[None]:
    """The tunnel on a loop in a thread, for the base backup (the supervisor runs it afterwards)."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(tunnel.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(tunnel.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def init_replica(
    layout: ServerLayout,
    *,
    from_url: str,
    listen: tuple[str, int],
    allow: Sequence[str] = (),
    advertise: str | None = None,
    memory_mb: int | None = None,
) -> ServerInfo:
    """Make a hot standby of the primary at ``from_url`` in ``layout`` and start it. Idempotent: an
    existing replica in ``layout`` is started and described."""
    host, port = listen
    if layout.exists():
        config = existing_config(layout, "replica", host, port)
        start_server(layout)
        return server_info(layout, config, created=False)
    params = _primary_params(from_url)
    password = _password(params)
    check_primary(from_url)
    check_can_create(layout, host, port)
    config = ServerConfig(
        kind="replica",
        host=host,
        port=port,
        advertise=advertise or advertised_host(host),
        allow=tuple(allow) or default_allow(host),
        upstream_host=params["host"],
        upstream_port=int(params.get("port") or 5432),
    )
    owner = server_user()
    make_private_dir(layout.root)
    let_server_user_in(layout.root, owner)
    owned_dir(layout.upstream_dir, owner)
    owned_dir(layout.run_dir, owner)
    owned_dir(layout.pgdata, owner)
    shutil.copyfile(params["sslrootcert"], layout.upstream_dir / "primary-ca.crt")
    passfile = layout.upstream_dir / "replicator.pgpass"
    write_pgpass(passfile, params.get("user") or REPLICATOR_ROLE, password, owner)
    tunnel = Tunnel(
        layout.upstream_socket,
        config.upstream_host or "",
        config.upstream_port or 5432,
        client_context(layout.upstream_dir / "primary-ca.crt"),
        owner=owner,
    )
    conninfo = (
        f"host={layout.upstream_dir} port={SOCKET_PORT} user={params.get('user') or REPLICATOR_ROLE} "
        f"passfile={passfile} application_name={config.advertise}:{port}"
    )
    try:
        with _tunnel_running(tunnel):
            run_pg(
                "pg_basebackup",
                ["-D", str(layout.pgdata), "-d", conninfo, "-X", "stream", "-R", "-c", "fast", "-w"],
                timeout=3600,
            )
    except DatabaseUnavailable:
        shutil.rmtree(layout.root, ignore_errors=True)  # nothing half-made is left to trip the next try
        raise
    write_server_conf(layout, memory_mb)  # this directory's socket and sizes (the backup has the primary's)
    write_certificates(layout.tls_dir, subject_names(config.advertise))
    config.save(layout.config_file)
    start_server(layout)
    return server_info(
        layout,
        config,
        created=True,
        notes=(
            f"agents read from it with KB_READ_DATABASE_URL and the same password file as their KB_DATABASE_URL "
            f"(database {DATABASE_NAME}, user kb_agent_login)",
        ),
    )
