"""Output helpers shared by the CLI commands: JSON for scripts, rich tables for people."""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import click

from knowledgebase.config import Settings, get_settings


def to_jsonable(value: Any) -> Any:
    """Dataclasses, datetimes, decimals and paths as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value


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
