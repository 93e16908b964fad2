"""Output helpers shared by the CLI commands: JSON for scripts, rich tables for people."""

from __future__ import annotations

import json
from typing import Any

import click

from knowledgebase.util.jsonable import to_jsonable


def print_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, ensure_ascii=False))


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
