"""``kb exec [--task T] -- CMD ARGS...``: run a command as usual and put it on record."""

from __future__ import annotations

import sys

import click

from knowledgebase.cli._store import database_url_option, settings_from


@click.command(
    "exec",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option("--task", "task_id", metavar="ID", help="Log the command under this task.")
@click.option(
    "--project",
    metavar="NAME",
    help="Log it in this project (default: the indexed project containing the current directory, if any).",
)
@click.option("--shell", is_flag=True, help="Run one string through /bin/sh -c (pipes, globs, &&).")
@click.option(
    "--timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="Kill the command after SECONDS."
)
@click.option("--no-track-files", is_flag=True, help="Do not look for files the command wrote.")
@click.option("--quiet", is_flag=True, help="Capture and log the output without printing it.")
@database_url_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_command(
    task_id: str | None,
    project: str | None,
    shell: bool,
    timeout: float | None,
    no_track_files: bool,
    quiet: bool,
    database_url: str | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND, stream its output, log it with its outcome; exit with its exit code.

    Output is captured up to KB_EXEC_CAPTURE_BYTES per stream (head and tail kept). If the
    database is unreachable the command still runs, and the log entry is spooled under
    KB_HOME/spool until `kb audit flush`.

    \b
    Examples:
      kb exec --task T-42 -- pytest -x tests/
      kb exec --shell -- 'make build 2>&1 | tail -n 20'
      kb log --failed -n 5          # what failed lately
    """
    from knowledgebase.coordination.execute import execute_shell_command
    from knowledgebase.errors import InputError

    if shell and len(command) != 1:
        raise InputError("--shell takes the whole command as one quoted argument: kb exec --shell -- 'a | b'")
    record = execute_shell_command(
        command[0] if shell else list(command),
        settings=settings_from(database_url),
        task_id=task_id,
        stream=not quiet,
        track_files=not no_track_files,
        timeout=timeout,
        project=project,
    )
    if record.result.error and record.result.return_code is None:
        click.echo(f"kb: {record.result.error}", err=True)
    if record.warning:
        click.echo(f"kb: warning: {record.warning}", err=True)
    sys.exit(record.result.exit_code)
