"""``kb audit flush``: write log entries spooled during a database outage."""

from __future__ import annotations

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, settings_from


@click.group()
def audit() -> None:
    """The audit log (command_log, command_output, usage_log).

    \b
    Example:
      kb audit flush
    """


@audit.command()
@database_url_option
@json_option
def flush(database_url: str | None, as_json: bool) -> None:
    """Write the entries spooled under KB_HOME/spool while the database was unreachable.

    \b
    Example:
      kb audit flush --json
    """
    from knowledgebase.coordination.spool import flush_spool
    from knowledgebase.db import open_database

    settings = settings_from(database_url)
    with open_database(settings) as db:
        report = flush_spool(db, settings.spool_dir)
    if as_json:
        print_json(report)
    else:
        click.echo(f"flushed {report.flushed} spooled entries; {report.remaining} waiting, {report.rejected} set aside")
        if report.error:
            click.echo(f"kb: warning: {report.error}", err=True)
