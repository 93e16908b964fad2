"""``kb keys add|list|disable|enable``: the shared pool of API keys, stored by reference."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, open_db
from knowledgebase.config import MAX_DB_INT

if TYPE_CHECKING:
    from knowledgebase.store.api_keys import ApiKey


def _limit(value: int | None) -> str:
    return "-" if value is None else str(value)


def _describe(key: ApiKey) -> str:
    fingerprint = key.fingerprint or f"no fingerprint (${key.env_var} is not set here)"
    limits = f"rpm {_limit(key.rpm_limit)}, tpm {_limit(key.tpm_limit)}, rpd {_limit(key.rpd_limit)}"
    state = ""
    if key.disabled:
        state = f", disabled ({key.disabled_reason})" if key.disabled_reason else ", disabled"
    return f"{key.name}: ${key.env_var}, {fingerprint}, {limits}{state}"


def _print(key: ApiKey, as_json: bool) -> None:
    if as_json:
        print_json(key)
    else:
        click.echo(_describe(key))


@click.group()
def keys() -> None:
    """API keys shared by all agents, each kept within its limits (requests/tokens per minute, requests per day).

    \b
    Examples:
      kb keys add team-1 --env GEMINI_API_KEY_1 --rpm 10
      kb keys list
    """


@keys.command()
@click.argument("name")
@click.option("--env", "env_var", required=True, metavar="VAR", help="The environment variable that holds the key.")
@click.option("--rpm", type=click.IntRange(1, MAX_DB_INT), help="Requests per minute (sliding 60 s).")
@click.option("--tpm", type=click.IntRange(1, MAX_DB_INT), help="Tokens per minute (sliding 60 s).")
@click.option("--rpd", type=click.IntRange(1, MAX_DB_INT), help="Requests per day (sliding 24 h).")
@click.option("--provider", default="gemini", show_default=True, help="Whose key it is (requests pick by provider).")
@database_url_option
@json_option
def add(
    name: str,
    env_var: str,
    rpm: int | None,
    tpm: int | None,
    rpd: int | None,
    provider: str,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Add a key by reference, or change its variable and limits. The key itself is never stored.

    \b
    Example:
      kb keys add team-1 --env GEMINI_API_KEY_1 --rpm 15 --tpm 1000000 --rpd 1500
    """
    from knowledgebase.coordination.keypool import add_key

    with open_db(database_url) as db:
        key = add_key(db, name, env_var=env_var, rpm=rpm, tpm=tpm, rpd=rpd, provider=provider)
    _print(key, as_json)


@keys.command("list")
@database_url_option
@json_option
def list_(database_url: str | None, as_json: bool) -> None:
    """Keys with their limits, live usage (last 60 s / 24 h), cooldown and whether this shell can use them.

    \b
    Example:
      kb keys list --json
    """
    from rich.console import Console
    from rich.table import Table

    from knowledgebase.coordination.keypool import key_usage

    with open_db(database_url) as db:
        rows = key_usage(db)
    if as_json:
        print_json(rows)
        return
    table = Table("name", "variable", "req/min", "tok/min", "req/day", "state", "usable here")
    for row in rows:
        state = "disabled" if row.disabled else "ok"
        if row.cooldown_until is not None and not row.disabled:
            state = f"cooling down until {row.cooldown_until.isoformat(timespec='seconds')}"
        table.add_row(
            row.name,
            row.env_var,
            f"{row.minute_requests}/{_limit(row.rpm_limit)}",
            f"{row.minute_tokens}/{_limit(row.tpm_limit)}",
            f"{row.day_requests}/{_limit(row.rpd_limit)}",
            state,
            row.available_here,
        )
    Console().print(table)


@keys.command()
@click.argument("name")
@click.option("--reason", help="Why (shown in `kb keys list`).")
@database_url_option
@json_option
def disable(name: str, reason: str | None, database_url: str | None, as_json: bool) -> None:
    """Stop handing out a key (it stays on record; `kb keys enable` brings it back).

    \b
    Example:
      kb keys disable team-1 --reason "quota exhausted"
    """
    from knowledgebase.coordination.keypool import disable_key

    with open_db(database_url) as db:
        key = disable_key(db, name, reason)
    _print(key, as_json)


@keys.command()
@click.argument("name")
@database_url_option
@json_option
def enable(name: str, database_url: str | None, as_json: bool) -> None:
    """Hand out a disabled key again.

    \b
    Example:
      kb keys enable team-1
    """
    from knowledgebase.coordination.keypool import enable_key

    with open_db(database_url) as db:
        key = enable_key(db, name)
    _print(key, as_json)
