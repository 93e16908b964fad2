"""Output helpers shared by the CLI commands: JSON for scripts, times and tables for people."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from knowledgebase.util.jsonable import to_jsonable


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


def print_jsonl(values: list[Any]) -> None:
    """One compact JSON value per line (for ``jq -c``-style pipelines)."""
    for value in values:
        click.echo(json.dumps(to_jsonable(value), ensure_ascii=False))


def human_time(moment: datetime | float | None, *, now: datetime | None = None) -> str:
    """``2026-12-01 22:57:55 UTC (3 min ago)`` for a time or an epoch; ``never`` for None."""
    if moment is None:
        return "never"
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(float(moment), UTC)
    now = now or datetime.now(UTC)
    seconds = max(0.0, (now - moment).total_seconds())
    if seconds < 60:
        ago = f"{seconds:.0f} s ago"
    elif seconds < 3600:
        ago = f"{seconds / 60:.0f} min ago"
    elif seconds < 86400:
        ago = f"{seconds / 3600:.1f} h ago"
    else:
        ago = f"{seconds / 86400:.1f} days ago"
    return f"{moment.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({ago})"


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
