"""``kb fact add|list|show|confirm|forget``: what agents have learned, with confidence and history."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import (
    database_url_option,
    default_project,
    open_db,
    open_store,
    project_option,
)

if TYPE_CHECKING:
    from knowledgebase.facts import Fact, FactSource


def _source(
    from_command: int | None, from_file: str | None, chunk_hash: str | None, from_prompt: str | None
) -> FactSource:
    """The one source named by the options (``--from-file PATH[:LINE]``), or a manual entry."""
    from knowledgebase.errors import InputError
    from knowledgebase.facts import MANUAL, FactSource

    given = [x is not None for x in (from_command, from_file, from_prompt)]
    if sum(given) > 1:
        raise InputError("give at most one of --from-command, --from-file and --from-prompt")
    if chunk_hash is not None and from_file is None:
        raise InputError("--chunk-hash needs --from-file PATH")
    if from_command is not None:
        return FactSource.from_command(from_command)
    if from_prompt is not None:
        return FactSource.from_prompt(from_prompt)
    if from_file is not None:
        path, _, line = from_file.rpartition(":")
        if path and line.isdigit():
            return FactSource.from_chunk(path, chunk_hash, line=int(line))
        if chunk_hash is None:
            raise InputError("--from-file needs a line (PATH:LINE) or --chunk-hash HASH to name the chunk")
        return FactSource.from_chunk(from_file, chunk_hash)
    return MANUAL


def _print_fact(fact: Fact, *, verbose: bool = False) -> None:
    status = "" if fact.status == "active" else f" [{fact.status}]"
    stale = (" [stale]" if fact.is_stale else "") + (" [proposed]" if fact.proposed else "")
    click.echo(
        click.style(f"#{fact.id}", bold=True)
        + f" {fact.fact_label}: {fact.fact_value}"
        + f"  (confidence {fact.effective_confidence:.2f}{stale}{status})"
    )
    if not verbose:
        return
    rows = [
        ("project", fact.project or "(all projects)"),
        ("stored confidence", f"{fact.confidence_score:.3f} after {fact.confirmations} confirmation(s)"),
        ("last confirmed", fact.last_confirmed_at.isoformat(timespec="seconds")),
        ("inserted", fact.inserted_at.isoformat(timespec="seconds")),
        ("task", fact.task_id or "-"),
        ("source", _describe_source(fact)),
        ("extracted from", fact.extracted_from or "-"),
    ]
    if fact.proposed:
        rows.append(("proposed by", ", ".join(fact.proposed_in) + f" (confirm with `kb fact confirm {fact.id}`)"))
    if fact.supersedes:
        rows.append(("supersedes", ", ".join(f"#{i}" for i in fact.supersedes)))
    if fact.superseded_by:
        rows.append(("superseded by", f"#{fact.superseded_by}"))
    if fact.stale_since:
        rows.append(("stale since", fact.stale_since.isoformat(timespec="seconds")))
    for name, value in rows:
        click.echo(f"  {name:<16} {value}")


def _describe_source(fact: Fact) -> str:
    if fact.source_kind == "chunk":
        return f"chunk {fact.source_chunk_hash} of {fact.source_file_path}"
    if fact.source_kind == "command":
        return f"command #{fact.source_command_id}"
    return fact.source_kind


@click.group()
def fact() -> None:
    """Facts agents have learned: add, list, show, confirm, forget.

    \b
    Examples:
      kb fact add "test command" "tox -e py311"
      kb fact list --stale
      kb fact confirm 12
    """


@fact.command()
@click.argument("label")
@click.argument("value")
@project_option
@click.option("--task", "task_id", metavar="ID", help="The task that learned it.")
@click.option(
    "--confidence",
    type=float,
    default=None,
    help="How sure, 0..1 (default 0.5, or the confidence of the fact it supersedes when that is higher; "
    "a restatement never lowers it).",
)
@click.option("--from-command", type=int, metavar="ID", help="Learned from this command_log entry.")
@click.option("--from-file", metavar="PATH[:LINE]", help="Read from the chunk of this file covering LINE.")
@click.option("--chunk-hash", metavar="HASH", help="With --from-file: the chunk's content hash instead of a line.")
@click.option("--from-prompt", metavar="TEXT", help="Stated in this prompt.")
@click.option("--extracted-from", metavar="TEXT", help="The text the fact was taken from.")
@click.option("--pin", is_flag=True, help="Never let its confidence decay.")
@json_option
@database_url_option
def add(
    label: str,
    value: str,
    project: str | None,
    task_id: str | None,
    confidence: float | None,
    from_command: int | None,
    from_file: str | None,
    chunk_hash: str | None,
    from_prompt: str | None,
    extracted_from: str | None,
    pin: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Record that LABEL is VALUE (a restatement reinforces it, a new value supersedes the old one).

    Without --project the fact goes to the indexed project containing the current directory (else to
    no project: visible from every project); a --project that does not exist is refused.

    \b
    Examples:
      kb fact add "test command" "tox -e py311"
      kb fact add "db port" 5433 --from-file docker-compose.yml:12 --confidence 0.9
      kb fact add "deploy" "make release" --project infra --json
    """
    from knowledgebase.facts import DEFAULT_CONFIDENCE, add_fact, get_fact

    source = _source(from_command, from_file, chunk_hash, from_prompt)
    with open_store(database_url) as (_, db, embedder):
        stored = add_fact(
            db,
            embedder,
            label=label,
            value=value,
            project=default_project(db, project),
            task_id=task_id,
            extracted_from=extracted_from,
            confidence=confidence,
            source=source,
            pinned=pin,
        )
        superseded = [get_fact(db, old) for old in stored.supersedes] if stored.confirmations == 1 else []
    if as_json:
        print_json(stored)
        return
    if stored.confirmations > 1:
        click.echo(f"Reinforced fact #{stored.id} ({stored.confirmations} confirmations).")
    elif superseded:
        olds = ", ".join(f"#{o.id} ({o.fact_value!r}, confidence {o.confidence_score:.2f})" for o in superseded)
        click.echo(f"Added fact #{stored.id}; it supersedes {olds}.")
        if confidence is None and stored.confidence_score > DEFAULT_CONFIDENCE:
            click.echo(f"It keeps confidence {stored.confidence_score:.2f} (give --confidence to set another).")
    else:
        click.echo(f"Added fact #{stored.id}.")
    _print_fact(stored)


@fact.command(name="list")
@project_option
@click.option("--label", help="Only facts with this label.")
@click.option("--task", "task_id", metavar="ID", help="Only facts of this task.")
@click.option("--all", "include_inactive", is_flag=True, help="Include superseded and forgotten facts.")
@click.option("--stale", "stale_only", is_flag=True, help="Only facts whose source chunk has changed.")
@click.option(
    "--proposed",
    "proposed_only",
    is_flag=True,
    help="Only facts proposed from the sessions' trail and not confirmed yet (confirm with `kb fact confirm ID`).",
)
@click.option("-n", "--limit", default=50, show_default=True, type=int, help="At most this many facts.")
@json_option
@database_url_option
def list_(
    project: str | None,
    label: str | None,
    task_id: str | None,
    include_inactive: bool,
    stale_only: bool,
    proposed_only: bool,
    limit: int,
    as_json: bool,
    database_url: str | None,
) -> None:
    """List facts, newest first.

    \b
    Examples:
      kb fact list --label "test command" --all
      kb fact list --proposed
      kb fact list -n 5 --json
    """
    from knowledgebase.facts import list_facts

    with open_db(database_url) as db:
        facts = list_facts(
            db,
            project=default_project(db, project),
            label=label,
            task_id=task_id,
            include_inactive=include_inactive,
            stale_only=stale_only,
            proposed_only=proposed_only,
            limit=limit,
        )
    if as_json:
        print_json(facts)
        return
    if not facts:
        click.echo("No facts.", err=True)
    for item in facts:
        _print_fact(item)


@fact.command()
@click.argument("fact_id", type=int)
@json_option
@database_url_option
def show(fact_id: int, as_json: bool, database_url: str | None) -> None:
    """Show one fact with its source and history.

    \b
    Example:
      kb fact show 12
    """
    from knowledgebase.facts import get_fact

    with open_db(database_url) as db:
        stored = get_fact(db, fact_id)
    if as_json:
        print_json(stored)
    else:
        _print_fact(stored, verbose=True)


@fact.command()
@click.argument("fact_id", type=int)
@click.option("--confidence", type=float, help="How sure you are now, 0..1 (default: as stored).")
@json_option
@database_url_option
def confirm(fact_id: int, confidence: float | None, as_json: bool, database_url: str | None) -> None:
    """Confirm that a fact still holds (raises its confidence and clears a stale flag); a proposed fact
    becomes an ordinary one, with confidence 0.9 or more.

    \b
    Example:
      kb fact confirm 12 --confidence 0.9
    """
    from knowledgebase.facts import confirm_fact

    with open_db(database_url) as db:
        stored = confirm_fact(db, fact_id, confidence=confidence)
    if as_json:
        print_json(stored)
    else:
        _print_fact(stored)


@fact.command()
@click.argument("fact_id", type=int)
@json_option
@database_url_option
def forget(fact_id: int, as_json: bool, database_url: str | None) -> None:
    """Stop returning a fact (it stays on record as forgotten).

    \b
    Example:
      kb fact forget 12
    """
    from knowledgebase.facts import forget_fact

    with open_db(database_url) as db:
        stored = forget_fact(db, fact_id)
    if as_json:
        print_json(stored)
    else:
        click.echo(f"Forgot fact #{stored.id}.")
