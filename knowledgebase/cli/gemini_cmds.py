"""``kb gemini install|uninstall``, ``kb hook EVENT``, ``kb serve`` and ``kb mcp``: the Gemini CLI adapters."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from knowledgebase.cli._output import human_time, json_option, print_json
from knowledgebase.cli._store import database_url_option, settings_from


@click.group()
def gemini() -> None:
    """Wire the store into Gemini CLI (hooks + MCP server in its settings.json).

    \b
    Examples:
      kb gemini install
      kb gemini install --scope project --dry-run
      kb gemini uninstall
    """


_scope_option = click.option(
    "--scope",
    type=click.Choice(["user", "project"]),
    default="user",
    show_default=True,
    help="user: $GEMINI_CLI_HOME/.gemini or ~/.gemini; project: PROJECT_DIR/.gemini (needs a trusted folder).",
)
_project_dir_option = click.option(
    "--project-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The project whose .gemini/settings.json to change with --scope project (default: the current directory).",
)
_dry_run_option = click.option("--dry-run", is_flag=True, help="Print what would change; write nothing.")


@gemini.command()
@_scope_option
@_project_dir_option
@_dry_run_option
@database_url_option
@json_option
def install(scope: str, project_dir: Path | None, dry_run: bool, database_url: str | None, as_json: bool) -> None:
    """Add the knowledgebase hooks and MCP server to Gemini CLI's settings.json (backup first).

    Every prompt then gets ranked context from the store, every turn, tool call and shell command is
    logged, and the model can search and remember through the `knowledgebase` MCP tools.

    \b
    Examples:
      kb gemini install --dry-run
      kb gemini install --scope project --project-dir ~/src/shop
    """
    from knowledgebase.gemini.settings import install_gemini, settings_path, wiring_for

    path = settings_path(scope, project_dir=project_dir)
    change = install_gemini(path, wiring_for(settings_from(database_url)), dry_run=dry_run)
    _report(change, as_json)


@gemini.command()
@_scope_option
@_project_dir_option
@_dry_run_option
@json_option
def uninstall(scope: str, project_dir: Path | None, dry_run: bool, as_json: bool) -> None:
    """Remove exactly what `kb gemini install` added to settings.json (backup first).

    \b
    Example:
      kb gemini uninstall --scope project
    """
    from knowledgebase.gemini.settings import settings_path, uninstall_gemini

    change = uninstall_gemini(settings_path(scope, project_dir=project_dir), dry_run=dry_run)
    _report(change, as_json)


def _report(change: object, as_json: bool) -> None:
    from knowledgebase.gemini.settings import SettingsChange

    assert isinstance(change, SettingsChange)
    if as_json:
        print_json(change)
        return
    if change.dry_run:
        click.echo(f"Dry run: {change.path} would become:")
        click.echo(_redacted_json(change.document))
        return
    verb = "Installed into" if change.action == "install" else "Removed from"
    if not change.changed:
        click.echo(f"Nothing to change in {change.path}")
        return
    click.echo(f"{verb} {change.path}: hooks {', '.join(change.hooks) or 'none'}; MCP server {change.mcp_server}")
    if change.backup:
        click.echo(f"Backup of the previous file: {change.backup}")


def _redacted_json(document: dict) -> str:
    import json

    from knowledgebase.util.redact import redact_value

    return json.dumps(redact_value(document), indent=2, ensure_ascii=False)


@click.command()
@click.argument("event")
def hook(event: str) -> None:
    """Handle a Gemini CLI hook EVENT: JSON on stdin, one JSON object on stdout, always exit 0.

    EVENT is SessionStart, BeforeAgent, AfterTool, AfterAgent or SessionEnd. This is for trying a hook
    by hand: `kb gemini install` does not register `kb hook`, but writes into Gemini CLI's
    settings.json (after a timestamped backup; `kb gemini uninstall` removes exactly these):

    \b
    - hooks.EVENT: one hook named knowledgebase-EVENT per event, whose command is this
      installation's `python -S -P -m knowledgebase.gemini.hook_client EVENT` (standard library
      only, so it starts fast), with a timeout per event and an env of KB_HOME, KB_EMBED_MODEL,
      KB_EMBED_BACKEND, KB_CONTEXT_BUDGET (and KB_DATABASE_URL, KB_PROJECT when set);
    - mcpServers.knowledgebase: `kb mcp`, the search/remember tools, with the same env.

    \b
    SessionStart opens the session's task and adds a digest of the project's facts; BeforeAgent
    logs the prompt and adds ranked context; AfterTool logs the tool call or shell command with its
    outcome; AfterAgent logs the response and token usage; SessionEnd closes the task. The hooks talk
    to the warm process (`kb serve`), starting it when none runs.

    \b
    Example:
      echo '{"prompt": "how do I run the tests?", "cwd": "."}' | kb hook BeforeAgent
    """
    from knowledgebase.gemini.hook_client import main

    main([event])


@click.command()
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Exit after this long without a request (default: KB_SERVE_IDLE_TIMEOUT, 1800).",
)
@click.option("--stop", is_flag=True, help="Ask the running warm process to exit.")
@click.option("--status", "show_status", is_flag=True, help="Show the running warm process, if any.")
@json_option
def serve(idle_timeout: float | None, stop: bool, show_status: bool, as_json: bool) -> None:
    """Run the warm process the hooks talk to (model + connection pool on a Unix socket under KB_HOME).

    Hooks start it on demand; run it by hand only to watch its log or to keep it warm.

    \b
    Examples:
      kb serve --status
      kb serve --stop
      kb serve --idle-timeout 600   # in the foreground, logging to stderr
    """
    import logging

    from knowledgebase.gemini import serve as warm

    if stop:
        stopped = warm.stop_server(os.environ)
        click.echo("stopped" if stopped else "no warm process was running")
        return
    if show_status:
        answer = warm.request(os.environ, "status")
        if as_json:
            print_json(answer.get("status") if answer else None)
        elif answer is None:
            click.echo("no warm process is running")
        else:
            for key, value in answer["status"].items():
                shown = human_time(value) if key == "started_at" else value
                click.echo(f"{key}: {shown}")
        return
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not warm.serve(settings_from(), os.environ, idle_timeout_s=idle_timeout):
        click.echo("a warm process for this store runs already (kb serve --status)", err=True)


@click.command()
def mcp() -> None:
    """Run the knowledgebase MCP server on stdio (Gemini CLI starts it; see `kb gemini install`).

    \b
    Example:
      kb mcp   # what Gemini CLI runs; speaks MCP on stdin/stdout
    """
    from knowledgebase.gemini.mcp_server import run_stdio

    run_stdio(settings_from())
