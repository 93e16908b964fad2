"""``kb server init|replica|start|stop|status|url``: a shared server for agents on many machines."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import settings_from
from knowledgebase.errors import InputError

if TYPE_CHECKING:
    from knowledgebase.db.server import ServerInfo, ServerLayout

SERVER_DIRS = ("server", "replica")  # under KB_HOME: the default directories of init and replica


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--listen {value!r}: give HOST:PORT, e.g. 127.0.0.1:6543 or 0.0.0.0:6543")
    return host.strip("[]") or "0.0.0.0", int(port)


def _layout(directory: Path | None, default: str) -> ServerLayout:
    from knowledgebase.db.server import ServerLayout

    return ServerLayout((directory or settings_from().home / default).resolve())


def _layouts(directory: Path | None) -> list[ServerLayout]:
    """``--dir``, or every server directory under KB_HOME."""
    from knowledgebase.db.server import ServerLayout

    if directory is not None:
        return [ServerLayout(directory.resolve())]
    home = settings_from().home
    found = [ServerLayout(home / name) for name in SERVER_DIRS if (home / name / "server.json").exists()]
    if not found:
        raise InputError(f"no kb server under {home}: make one with `kb server init --listen HOST:PORT`")
    return found


dir_option = click.option(
    "--dir", "directory", type=click.Path(path_type=Path, file_okay=False), help="the server's directory"
)
listen_option = click.option("--listen", required=True, help="HOST:PORT the TLS front listens on")
allow_option = click.option(
    "--allow", multiple=True, help="a network that may connect (repeatable; default: loopback only)"
)
advertise_option = click.option("--advertise", help="the host name agents use (default: the listen host)")
memory_option = click.option(
    "--memory-mb", type=click.IntRange(min=256), help="size the settings for this much memory (default: the machine's)"
)


@click.group()
def server() -> None:
    """A shared PostgreSQL + pgvector server for agents on many machines (TLS, SCRAM), with read replicas.

    \b
    Examples:
      kb server init --listen 0.0.0.0:6543 --allow 10.0.0.0/8
      kb server replica --from "$(kb server url --replication)" --listen 0.0.0.0:6544 --allow 10.0.0.0/8
      kb server status; kb server stop
    """


@server.command()
@listen_option
@allow_option
@advertise_option
@click.option("--cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="a certificate to use")
@click.option("--key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="the --cert's key")
@memory_option
@dir_option
@json_option
def init(
    listen: str,
    allow: tuple[str, ...],
    advertise: str | None,
    cert: Path | None,
    key: Path | None,
    memory_mb: int | None,
    directory: Path | None,
    as_json: bool,
) -> None:
    """Make a network server from the embedded PostgreSQL and start it (idempotent).

    In its own directory (default KB_HOME/server): TLS with a generated certificate (or --cert/--key),
    SCRAM-SHA-256 passwords only, the owner role and the agents' least-privilege role, the schema,
    settings sized from the machine (printed path). Prints the KB_DATABASE_URL for agent machines; the
    password stays in a 0600 password file named by the URL (copy it and ca.crt to each agent machine).

    \b
    Examples:
      kb server init --listen 127.0.0.1:6543
      kb server init --listen 0.0.0.0:6543 --allow 10.1.0.0/16 --advertise kb.internal
    """
    from knowledgebase.db.server_init import init_server

    if (cert is None) != (key is None):
        raise InputError("give --cert and --key together")
    layout = _layout(directory, "server")
    info = init_server(
        layout,
        listen=_listen(listen),
        allow=allow,
        advertise=advertise,
        cert=(cert, key) if cert is not None and key is not None else None,
        memory_mb=memory_mb,
    )
    _show(info, as_json)


@server.command()
@click.option("--from", "from_url", required=True, help="the primary's replication URL (kb server url --replication)")
@listen_option
@allow_option
@advertise_option
@memory_option
@dir_option
@json_option
def replica(
    from_url: str,
    listen: str,
    allow: tuple[str, ...],
    advertise: str | None,
    memory_mb: int | None,
    directory: Path | None,
    as_json: bool,
) -> None:
    """Make a hot standby of a kb server primary (pg_basebackup, streaming replication) and start it.

    Agents send searches, context and status reads to it with KB_READ_DATABASE_URL (the URL printed),
    and every write to the primary; each process reads its own writes.

    \b
    Example:
      kb server replica --from "$(kb server url --replication)" --listen 127.0.0.1:6544
    """
    from knowledgebase.db.replica import init_replica

    layout = _layout(directory, "replica")
    info = init_replica(
        layout, from_url=from_url, listen=_listen(listen), allow=allow, advertise=advertise, memory_mb=memory_mb
    )
    _show(info, as_json)


def _show(info: ServerInfo, as_json: bool) -> None:
    from knowledgebase.util.jsonable import to_jsonable

    if as_json:
        print_json(to_jsonable(info))
        return
    verb = "made and started" if info.created else "already there, running"
    click.echo(f"kb server ({info.kind}) {verb} in {info.root}")
    variable = "KB_DATABASE_URL" if info.kind == "primary" else "KB_READ_DATABASE_URL"
    click.echo(f"\nOn each agent machine (copy {info.ca_cert} there and fix the paths in the URL):")
    click.echo(f"  export {variable}='{info.agent_url}'")
    if info.agent_pgpass is not None:
        click.echo(f"  (the password is in {info.agent_pgpass}, 0600: copy it too, never into a log)")
    if info.replication_url:
        click.echo("\nA read replica (on this or another machine):")
        click.echo(f"  kb server replica --from '{info.replication_url}' --listen HOST:PORT")
    for note in info.notes:
        click.echo(f"\n{note}")
    click.echo(f"\nSettings sized for this machine: {info.tuning_file}")


@server.command()
@dir_option
def start(directory: Path | None) -> None:
    """Start the server(s) under KB_HOME, or the one in --dir (no-op when running).

    \b
    Example:
      kb server start --dir /srv/kb
    """
    from knowledgebase.db.server import start_server

    for layout in _layouts(directory):
        pid = start_server(layout)
        click.echo(f"kb server {layout.config().kind} running (supervisor pid {pid}) in {layout.root}")


@server.command()
@dir_option
def stop(directory: Path | None) -> None:
    """Stop the server(s) under KB_HOME, or the one in --dir (fast shutdown: transactions roll back).

    \b
    Example:
      kb server stop
    """
    from knowledgebase.db.server import stop_server

    for layout in _layouts(directory):
        stopped = stop_server(layout)
        click.echo(f"{'stopped' if stopped else 'not running'}: {layout.root}")


@server.command()
@dir_option
@json_option
def status(directory: Path | None, as_json: bool) -> None:
    """Whether the server(s) run, their role, connections and replication state.

    \b
    Example:
      kb server status --json | jq '.[0].replicas'
    """
    from knowledgebase.db.server import server_status
    from knowledgebase.util.jsonable import to_jsonable

    reports = [server_status(layout) for layout in _layouts(directory)]
    if as_json:
        print_json(to_jsonable(reports))
        return
    for report in reports:
        state = "running" if report.running else "stopped"
        click.echo(
            f"{report.kind} in {report.root}: {state}, listening on {report.listen} (allow {', '.join(report.allow)})"
        )
        if report.error:
            click.echo(f"  cannot query it: {report.error}")
        if report.connections is not None:
            click.echo(f"  client connections: {report.connections}")
        for r in report.replicas:
            click.echo(f"  replica {r['client']}: {r['state']}, {r['replay_lag_bytes']} bytes behind")
        if report.kind == "replica" and report.running and report.error is None:
            lag = (
                "n/a" if report.replay_lag_s is None else f"{report.replay_lag_s:.1f} s since the last replayed commit"
            )
            click.echo(
                f"  upstream {report.upstream}: {'streaming' if report.streaming else 'NOT streaming'}, "
                f"replayed to {report.replay_lsn} ({lag})"
            )
        click.echo(f"  settings: {report.tuning_file}")


@server.command()
@click.option("--replication", is_flag=True, help="the URL `kb server replica --from` takes")
@dir_option
def url(replication: bool, directory: Path | None) -> None:
    """Print the agents' URL (KB_DATABASE_URL or, for a replica, KB_READ_DATABASE_URL); no password in it.

    \b
    Example:
      export KB_DATABASE_URL="$(kb server url)"
    """
    from knowledgebase.db.server import agent_url, replication_url

    layout = _layouts(directory)[0]
    config = layout.config()
    if replication:
        if config.kind != "primary":
            raise InputError(f"{layout.root} is a replica: ask its primary for the replication URL")
        click.echo(replication_url(layout, config))
    else:
        click.echo(agent_url(layout, config))
