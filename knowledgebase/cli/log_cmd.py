"""``kb log``: the latest prompts, responses, tool calls and commands with their exit codes (like ``llm logs``)."""

from __future__ import annotations

import json
from typing import Any

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option


@click.command("log")
@click.option("-n", "--limit", type=click.IntRange(min=1), default=20, show_default=True, help="The last N entries.")
@click.option("--task", "task_id", metavar="ID", help="Only entries of this task.")
@click.option("--session", "session_id", metavar="ID", help="Only entries of this Gemini CLI session.")
@click.option("--project", metavar="NAME", help="Only entries of this project (default: every project).")
@click.option("--failed", "failed_only", is_flag=True, help="Only commands whose outcome failed.")
@json_option
@database_url_option
def log(
    limit: int,
    task_id: str | None,
    session_id: str | None,
    project: str | None,
    failed_only: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Show the latest log entries, oldest first: prompts and responses, tool calls, and commands with
    their exit code, duration and output.

    \b
    Examples:
      kb log                      # the last 20 entries
      kb log --failed -n 5        # the last 5 commands that failed
      kb log --task T-42 --json   # one task's entries, for scripts
    """
    from knowledgebase.cli._store import open_db
    from knowledgebase.coordination.audit import recent_log

    with open_db(database_url) as db:
        items = recent_log(
            db, task_id=task_id, session_id=session_id, project=project, failed_only=failed_only, limit=limit
        )
    if as_json:
        print_json(items)
        return
    if not items:
        click.echo("No log entries.", err=True)
    for item in items:
        echo_log_item(dict(item))


def echo_log_item(item: dict[str, Any]) -> None:
    """A log entry for people: a header line, then its texts and outcome, each cut to one line."""
    who = f" {item['agent_id']}" if item.get("agent_id") else ""
    where = "".join(f" {key} {item[key]}" for key in ("project", "task_id") if item.get(key))
    click.echo(click.style(f"#{item['id']} {str(item['executed_at'])[:19]} {item['kind']}{who}{where}", bold=True))
    for label in ("prompt", "response", "command"):
        if item[label]:
            click.echo(f"  {label}: {one_line(item[label])}")
    if item["tool_name"]:
        click.echo(f"  tool: {item['tool_name']} {one_line(json.dumps(item['tool_input']))}")
    output = item["output"]
    if output is not None:
        status = "ok" if output["success"] else f"failed (return code {output['return_code']})"
        truncated = " [truncated]" if output["truncated"] else ""
        click.echo(f"  outcome: {status}, {output['duration_ms']} ms{truncated}")
        for stream in ("stdout", "stderr"):
            if output[stream]:
                click.echo(f"  {stream}: {one_line(output[stream])}")
        if output["files_written"]:
            click.echo(f"  files written: {', '.join(output['files_written'])}")
        if output["error"]:
            click.echo(f"  error: {output['error']}")
    if item["usage"]:
        click.echo(f"  tokens: {item['usage']['total_tokens']}")


def one_line(text: str, width: int = 160) -> str:
    """``text`` on one line, cut to ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."
