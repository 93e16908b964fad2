"""``kb init``, ``kb status`` and ``kb db start|stop|url``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, settings_from

if TYPE_CHECKING:
    from knowledgebase.search.activity import ActiveWork


@click.command()
@database_url_option
@json_option
def init(database_url: str | None, as_json: bool) -> None:
    """Create or upgrade the schema (idempotent; safe to run from several processes at once).

    \b
    Examples:
      kb init
      KB_DATABASE_URL=postgresql://kb@db/kb kb init --json
    """
    from knowledgebase.db import database_url as resolve_url
    from knowledgebase.db import redact_url
    from knowledgebase.db.schema import SCHEMA_REVISION, upgrade

    settings = settings_from(database_url)
    url = resolve_url(settings, owner=True)
    upgrade(url)
    if as_json:
        print_json({"database_url": redact_url(url), "schema_revision": SCHEMA_REVISION})
    else:
        click.echo(f"Schema at revision {SCHEMA_REVISION} on {redact_url(url)}")


@click.command()
@database_url_option
@json_option
def status(database_url: str | None, as_json: bool) -> None:
    """Show the database, server and pgvector versions, schema revision, model and row counts, and the
    agents at work (running tasks, files changed in the last KB_ACTIVE_MINUTES) of the current
    directory's project, or of every project outside one.

    \b
    Example:
      kb status --json | jq .row_counts
    """
    from knowledgebase.db.status import store_status
    from knowledgebase.embedding import choose_backend
    from knowledgebase.util.jsonable import to_jsonable

    settings = settings_from(database_url)
    report = store_status(settings)
    choice = choose_backend(settings, "index")
    backend = f"{choice.backend} ({choice.reason})"
    work = _active_work(database_url, settings.active_minutes) if report.schema_ok else None
    if as_json:
        extra = {"active_work": work.to_json() if work else None}
        print_json(
            {**to_jsonable(report), "embed_backend": choice.backend, "embed_backend_reason": choice.reason, **extra}
        )
        return
    console = Console()
    table = Table(show_header=False, box=None)
    table.add_row("database", report.database_url + (" (embedded)" if report.embedded else ""))
    table.add_row("server", f"PostgreSQL {report.server_version}")
    table.add_row("pgvector", report.pgvector_version or "not installed (run `kb init`)")
    schema = report.schema_revision or "none"
    hint = "" if report.schema_ok else f" (code expects {report.expected_revision}: run `kb init`)"
    table.add_row("schema", schema + hint)
    model = f"{report.embedding_model} ({report.embedding_dimension} dims)" if report.embedding_model else "none yet"
    table.add_row("stored model", model)
    table.add_row("configured model", report.configured_model)
    table.add_row("embedding backend", backend)
    for replica in report.replicas:
        if not replica.reachable:
            state = f"unreachable: reads go to the primary ({replica.error})"
        elif not replica.in_recovery:
            state = "not a standby (a primary?): check KB_READ_DATABASE_URL"
        else:
            state = f"standby, {replica.lag_bytes} bytes behind the primary"
        table.add_row("read replica", f"{replica.url}: {state}")
    console.print(table)
    if any(report.waiting.values()):
        files, facts = report.waiting.get("files", 0), report.waiting.get("facts", 0)
        summaries = report.waiting.get("summaries", 0)
        click.echo(
            f"waiting: {files} files to chunk, {facts} facts to embed, {summaries} chunks without definition "
            "summaries (stored before migration 0009): run `kb reembed --missing`"
        )
    if report.row_counts:
        counts = Table("table", "rows")
        for name, count in report.row_counts.items():
            counts.add_row(name, str(count))
        console.print(counts)
    if work is not None:
        from knowledgebase.search.activity import render_active_work

        others = render_active_work(work)
        shown = others.replace("## Other agents", "Agents", 1)  # no session here: everyone's work
        click.echo(shown if others else f"no agent active in the last {work.minutes} min")


def _active_work(database_url: str | None, minutes: int) -> ActiveWork:
    """Running tasks and files changed in the last ``minutes``, in every project (the current
    directory's project when it is in one)."""
    from knowledgebase.cli._store import default_project, open_db
    from knowledgebase.search.activity import active_work

    with open_db(database_url) as db:
        return active_work(db, default_project(db, None), minutes=minutes)


@click.group()
def db() -> None:
    """Manage the embedded PostgreSQL server (used when KB_DATABASE_URL is unset).

    \b
    Example:
      kb db start; kb db url; kb db stop
    """


@db.command()
def start() -> None:
    """Start the embedded server (no-op if it runs already).

    \b
    Example:
      kb db start && kb db url
    """
    from knowledgebase.db.embedded import ensure_server

    settings = settings_from()
    server = ensure_server(settings.pgdata)
    click.echo(f"embedded PostgreSQL running (pid {server.pid}) in {settings.pgdata}")


@db.command()
def stop() -> None:
    """Stop the embedded server under KB_HOME and the hooks' warm process (`kb serve`) that uses it.

    With KB_DATABASE_URL set, kb does not use the embedded server: nothing is stopped (your server
    is not kb's to stop), and it says so.

    \b
    Example:
      kb db stop
    """
    import os

    from knowledgebase.db import redact_url
    from knowledgebase.db.embedded import stop_server
    from knowledgebase.gemini import serve as warm

    settings = settings_from()
    if settings.database_url:
        click.echo(
            f"KB_DATABASE_URL is set ({redact_url(settings.database_url)}): the embedded server is not in use, "
            "nothing stopped (unset KB_DATABASE_URL to stop the embedded server under KB_HOME)"
        )
        return
    if warm.stop_server(os.environ):
        click.echo("warm process (kb serve) stopped")
    if stop_server(settings.pgdata):
        click.echo("embedded PostgreSQL stopped")
    else:
        click.echo("embedded PostgreSQL was not running")


@db.command()
@database_url_option
def url(database_url: str | None) -> None:
    """Print the database URL (password hidden), starting the embedded server if needed.

    \b
    Example:
      psql "$(kb db url)"
    """
    from knowledgebase.db import database_url as resolve_url
    from knowledgebase.db import redact_url

    click.echo(redact_url(resolve_url(settings_from(database_url))))
