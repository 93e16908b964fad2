"""``kb audit flush``: write log entries spooled during a database outage."""

from __future__ import annotations

import dataclasses

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
    proposed = 0
    with open_database(settings) as db:
        report = flush_spool(db, settings.spool_dir)
        if report.closed:  # sessions that ended during the outage: propose their trail's facts, as SessionEnd does
            from knowledgebase.gemini.warm_embedder import query_embedder
            from knowledgebase.search.trail_facts import propose_session_facts

            embedder = query_embedder(settings)
            proposed = sum(len(propose_session_facts(db, embedder, task_id)) for task_id in report.closed)
    if as_json:
        print_json({**dataclasses.asdict(report), "proposed_facts": proposed})
    else:
        click.echo(f"flushed {report.flushed} spooled entries; {report.remaining} waiting, {report.rejected} set aside")
        if report.closed:
            click.echo(f"{len(report.closed)} sessions closed, {proposed} facts proposed from their trail")
        if report.error:
            click.echo(f"kb: warning: {report.error}", err=True)
