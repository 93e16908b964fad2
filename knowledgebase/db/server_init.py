"""``kb server init``: a primary made from the embedded PostgreSQL's wheel, reachable over TLS.

    info = init_server(ServerLayout(path), listen=("127.0.0.1", 6543))   # roles, SCRAM, TLS, schema, running
    info.agent_url                                                        # KB_DATABASE_URL of agent machines

See ``knowledgebase.db.server`` for the directory, the supervisor and status.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from knowledgebase.db.embedded import AGENT_LOGIN, DATABASE_NAME, ENSURE_ROLES, OWNER_ROLE
from knowledgebase.db.schema import upgrade
from knowledgebase.db.server import (
    REPLICATOR_ROLE,
    ServerConfig,
    ServerInfo,
    ServerLayout,
    agent_url,
    let_server_user_in,
    owned_dir,
    replication_url,
    run_pg,
    server_user,
    start_server,
    write_server_conf,
)
from knowledgebase.db.server_files import new_password, read_pgpass, subject_names, write_certificates, write_pgpass
from knowledgebase.errors import InputError
from knowledgebase.util.private_files import make_private_dir, write_private_file

if TYPE_CHECKING:
    import psycopg


def existing_config(layout: ServerLayout, kind: str, host: str, port: int) -> ServerConfig:
    """The configuration of the server already in ``layout``, which an idempotent init may start again
    only if it is a ``kind`` listening on ``host:port``."""
    config = layout.config()
    if (config.host, config.port) != (host, port) or config.kind != kind:
        raise InputError(
            f"{layout.root} already holds a {config.kind} listening on {config.host}:{config.port}; "
            "use that address, another --dir, or `kb server stop` and remove the directory to start over"
        )
    return config


def init_server(
    layout: ServerLayout,
    *,
    listen: tuple[str, int],
    allow: Sequence[str] = (),
    advertise: str | None = None,
    cert: tuple[Path, Path] | None = None,
    memory_mb: int | None = None,
) -> ServerInfo:
    """Make (or, when it exists, start) a primary in ``layout``: data directory, roles with SCRAM
    passwords, TLS certificate, the schema at head, and the supervisor running. Idempotent: on an
    existing server it starts it and brings the schema to this code's head (after an upgrade of kb)."""
    host, port = listen
    if layout.exists():
        config = existing_config(layout, "primary", host, port)
        start_server(layout)
        upgrade(layout.owner_url())
        return server_info(layout, config, created=False)
    config = ServerConfig(
        kind="primary",
        host=host,
        port=port,
        advertise=advertise or advertised_host(host),
        allow=tuple(allow) or default_allow(host),
    )
    check_can_create(layout, host, port)
    owner = server_user()
    make_private_dir(layout.root)
    let_server_user_in(layout.root, owner)
    for who, role in (("owner", OWNER_ROLE), ("agent", AGENT_LOGIN), ("replicator", REPLICATOR_ROLE)):
        write_pgpass(layout.pgpass(who), role, new_password())
    owned_dir(layout.pgdata, owner)
    owned_dir(layout.run_dir, owner)
    pwfile = layout.run_dir / "initdb.pw"  # the owner's password, for initdb only (PostgreSQL's user reads it)
    write_private_file(pwfile, read_pgpass(layout.pgpass("owner"))[1] + "\n", owner=owner)
    try:
        run_pg(
            "initdb",
            [
                "-D",
                str(layout.pgdata),
                "-U",
                OWNER_ROLE,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--no-instructions",
            ],
        )
    finally:
        pwfile.unlink(missing_ok=True)
    write_server_conf(layout, memory_mb)
    _install_certificates(layout, config, cert)
    config.save(layout.config_file)
    start_server(layout)
    _bootstrap(layout)
    return server_info(layout, config, created=True)


def _install_certificates(layout: ServerLayout, config: ServerConfig, cert: tuple[Path, Path] | None) -> None:
    if cert is None:
        write_certificates(layout.tls_dir, subject_names(config.advertise))
        return
    make_private_dir(layout.tls_dir)
    shutil.copyfile(cert[0], layout.tls_dir / "server.crt")
    write_private_file(layout.tls_dir / "server.key", Path(cert[1]).read_bytes())
    shutil.copyfile(cert[0], layout.ca_cert)  # clients verify against the certificate (or its chain) given


def _bootstrap(layout: ServerLayout) -> None:
    """Database, roles and their SCRAM verifiers, then the schema (as the owner, over the socket)."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(layout.owner_url("postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DATABASE_NAME)))
        conn.execute(ENSURE_ROLES)
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (REPLICATOR_ROLE,)).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(REPLICATOR_ROLE)))
        # a replica knows only this role's password: it reads its own replay state (kb server status) as it
        conn.execute(sql.SQL("GRANT pg_read_all_stats TO {}").format(sql.Identifier(REPLICATOR_ROLE)))
        for who in ("agent", "replicator"):
            role, password = read_pgpass(layout.pgpass(who))
            _set_password(conn, role, password)
    upgrade(layout.owner_url())


def _set_password(conn: psycopg.Connection, role: str, password: str) -> None:
    """The role's password as a SCRAM verifier computed here: the clear text never reaches the server."""
    from psycopg import sql

    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))


def advertised_host(host: str) -> str:
    import socket

    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


def default_allow(host: str) -> tuple[str, ...]:
    import ipaddress

    try:
        if ipaddress.ip_address(host).is_loopback:
            return ("127.0.0.0/8", "::1/128")
    except ValueError:
        if host == "localhost":
            return ("127.0.0.0/8", "::1/128")
    raise InputError(
        f"listening on {host}: say which networks may connect, e.g. --allow 10.0.0.0/8 "
        "(repeatable; --allow 0.0.0.0/0 for any, with TLS and passwords still required)"
    )


def check_can_create(layout: ServerLayout, host: str, port: int) -> None:
    """Before anything is made: the port is free and the directory new or empty."""
    check_port_free(host, port)
    if layout.root.exists() and any(layout.root.iterdir()):
        raise InputError(f"{layout.root} exists and is not empty: give another --dir or remove it")


def check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --listen") from None


def server_info(layout: ServerLayout, config: ServerConfig, *, created: bool, notes: Sequence[str] = ()) -> ServerInfo:
    primary = config.kind == "primary"
    return ServerInfo(
        root=layout.root,
        kind=config.kind,
        agent_url=agent_url(layout, config),
        replication_url=replication_url(layout, config) if primary else None,
        ca_cert=layout.ca_cert,
        agent_pgpass=layout.pgpass("agent") if layout.pgpass("agent").exists() else None,
        tuning_file=layout.tuning_file,
        created=created,
        notes=tuple(notes),
    )
