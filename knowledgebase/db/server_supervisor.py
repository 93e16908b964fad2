"""The process behind ``kb server start``: PostgreSQL, its TLS front and (for a replica) the tunnel
to the primary, started together and stopped together.

    python -m knowledgebase.db.server_supervisor SERVER_DIR

It writes ``supervisor.pid`` once everything accepts connections (``start_server`` waits for that),
stops PostgreSQL (fast shutdown) on SIGTERM or SIGINT, and exits when PostgreSQL dies under it, so
``kb server status`` never reports a front with nothing behind it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from knowledgebase.db.server import ServerLayout, run_pg, server_user
from knowledgebase.db.tls_front import Front, Tunnel, client_context, parse_networks, server_context
from knowledgebase.util.processes import pid_alive

_WATCH_S = 1.0


def _postmaster_pid(layout: ServerLayout) -> int | None:
    try:
        return int((layout.pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _log(message: str) -> None:
    print(message, flush=True)


async def run(layout: ServerLayout) -> int:
    config = layout.config()
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    tunnel: Tunnel | None = None
    if config.kind == "replica":
        assert config.upstream_host is not None and config.upstream_port is not None
        tunnel = Tunnel(
            layout.upstream_socket,
            config.upstream_host,
            config.upstream_port,
            client_context(layout.upstream_dir / "primary-ca.crt"),
            owner=server_user(),
        )
        await tunnel.start()
    pid = _postmaster_pid(layout)
    if pid is None or not pid_alive(pid):
        await asyncio.to_thread(
            run_pg,
            "pg_ctl",
            ["-D", str(layout.pgdata), "-l", str(layout.pgdata / "server.log"), "-w", "-t", "120", "start"],
        )
    front = Front(
        config.host,
        config.port,
        layout.socket,
        server_context(layout.tls_dir / "server.crt", layout.tls_dir / "server.key"),
        parse_networks(config.allow),
    )
    try:
        await front.start()
    except OSError as exc:
        _log(f"cannot listen on {config.host}:{config.port}: {exc.strerror}")
        await asyncio.to_thread(run_pg, "pg_ctl", ["-D", str(layout.pgdata), "-w", "stop", "-m", "fast"])
        return 1
    layout.pid_file.write_text(f"{os.getpid()}\n")
    _log(f"kb server ({config.kind}) ready on {config.host}:{config.port}")
    code = 0
    while not stopping.is_set():
        try:
            await asyncio.wait_for(stopping.wait(), _WATCH_S)
        except TimeoutError:
            pid = _postmaster_pid(layout)
            if pid is None or not pid_alive(pid):
                _log("PostgreSQL is no longer running; stopping (see pgdata/server.log)")
                code = 1
                break
    await front.close()
    if _postmaster_pid(layout) is not None:
        try:
            await asyncio.to_thread(run_pg, "pg_ctl", ["-D", str(layout.pgdata), "-w", "stop", "-m", "fast"])
        except Exception as exc:  # already gone, or stuck: say so; the next start deals with it
            _log(f"pg_ctl stop: {exc}")
    if tunnel is not None:
        await tunnel.close()
    layout.pid_file.unlink(missing_ok=True)
    _log("kb server stopped")
    return code


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m knowledgebase.db.server_supervisor SERVER_DIR", file=sys.stderr)
        return 2
    return asyncio.run(run(ServerLayout(Path(argv[1]))))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
