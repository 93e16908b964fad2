"""The ``kb`` command: a thin adapter over the library.

Subcommands live in one module each and are imported only when used, so ``kb --help`` and the hook
path stay fast. Every ``KnowledgebaseError`` becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from knowledgebase.errors import KnowledgebaseError

# command name -> "module:attribute"; a new command adds one line here.
COMMANDS: dict[str, str] = {
    "init": "knowledgebase.cli.store_cmds:init",
    "status": "knowledgebase.cli.store_cmds:status",
    "db": "knowledgebase.cli.store_cmds:db",
    "populate": "knowledgebase.cli.populate:populate",
    "reembed": "knowledgebase.cli.populate:reembed",
    "search": "knowledgebase.cli.retrieval:search",
    "context": "knowledgebase.cli.retrieval:context",
    "fact": "knowledgebase.cli.facts:fact",
    "exec": "knowledgebase.cli.exec_cmd:exec_command",
    "log": "knowledgebase.cli.log_cmd:log",
    "projects": "knowledgebase.cli.projects_cmds:projects",
    "audit": "knowledgebase.cli.audit_cmds:audit",
    "tasks": "knowledgebase.cli.tasks_cmds:tasks",
    "keys": "knowledgebase.cli.keys_cmds:keys",
    "run-gemini": "knowledgebase.cli.run_gemini_cmd:run_gemini",
    "gemini": "knowledgebase.cli.gemini_cmds:gemini",
    "hook": "knowledgebase.cli.gemini_cmds:hook",
    "serve": "knowledgebase.cli.gemini_cmds:serve",
    "mcp": "knowledgebase.cli.gemini_cmds:mcp",
    "demo": "knowledgebase.cli.demo:demo",
    "server": "knowledgebase.cli.server_cmds:server",
}


# started by Gemini CLI (through `kb gemini install`), not by people: listed apart in `kb --help`
INTERNAL_COMMANDS = ("hook", "serve", "mcp")


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The commands in two sections: what people run, and what Gemini CLI starts."""
        sections: dict[str, list[tuple[str, str]]] = {"Commands": [], "Started by Gemini CLI (internal)": []}
        names = self.list_commands(ctx)
        limit = (formatter.width or 80) - 6 - max(len(name) for name in names)
        for name in names:
            command = self.get_command(ctx, name)
            if command is None or command.hidden:
                continue
            section = "Started by Gemini CLI (internal)" if name in INTERNAL_COMMANDS else "Commands"
            sections[section].append((name, command.get_short_help_str(limit=limit)))
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="knowledgebase")
def cli() -> None:
    """Shared memory for coding agents, on PostgreSQL + pgvector.

    With KB_DATABASE_URL unset, an embedded PostgreSQL under KB_HOME is started on demand.
    Every command has examples in its --help (`kb search --help`).

    \b
    Examples:
      kb init && kb populate .          # index the current folder as a project
      kb search "where is the retry policy configured"
      kb context "How do I run the tests?"
      kb projects list; kb log -n 5
    """


def main() -> None:
    """Entry point of the ``kb`` console script."""
    # the pool logs every connection it drops or fails to open; a lost server is reported once, below
    logging.getLogger("psycopg.pool").addHandler(logging.NullHandler())
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KnowledgebaseError as exc:
        click.echo(f"kb: error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
