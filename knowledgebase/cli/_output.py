"""Output helpers shared by the CLI commands: JSON for scripts, rich tables for people."""

from __future__ import annotations

import json
from typing import Any

import click

from knowledgebase.config import Settings, get_settings
from knowledgebase.util.jsonable import to_jsonable


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


def settings_from(database_url: str | None = None) -> Settings:
    """The process settings, with a ``--database-url`` option applied when given."""
    return get_settings().with_overrides(database_url=database_url)


database_url_option = click.option(
    "--database-url",
    envvar="KB_DATABASE_URL",
    default=None,
    metavar="URL",
    help="PostgreSQL URL (default: KB_DATABASE_URL, else the embedded server under KB_HOME).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
