"""``kb search`` and ``kb context``: ranked hits, and the context block an agent would get for a prompt."""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, default_project, open_store, project_option

if TYPE_CHECKING:
    from knowledgebase.search.hits import Hit

KIND_CHOICES = ("chunk", "fact", "command", "all")
_AGE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

def read_text_argument(text: str) -> str:
    """The argument, or standard input when it is ``-``."""
    return sys.stdin.read() if text == "-" else text


def parse_age(value: str | None) -> timedelta | None:
    """``30m``, ``12h``, ``7d``, ``2w`` as a timedelta."""
    from knowledgebase.errors import InputError

    if value is None:
        return None
    match = _AGE.match(value)
    if not match:
        raise InputError(f"--since {value!r} is not an age like 30m, 12h, 7d or 2w")
    return timedelta(**{_AGE_UNITS[match.group(2)]: int(match.group(1))})


@click.command()
@click.argument("query")
@project_option
@click.option(
    "--kind",
    "kinds",
    type=click.Choice(KIND_CHOICES),
    multiple=True,
    help="What to search: chunk, fact, command or all (repeatable; default: chunk and fact).",
)
@click.option("--limit", default=10, show_default=True, type=int, help="Number of hits.")
@click.option("--glob", "path_glob", metavar="GLOB", help="Only files matching this path glob (e.g. 'src/**/*.py').")
@click.option("--task", "task_id", metavar="ID", help="Only facts and commands of this task.")
@click.option("--since", metavar="AGE", help="Only what was indexed, confirmed or run within this age (7d, 12h).")
@click.option(
    "--role",
    "roles",
    multiple=True,
    metavar="ROLE",
    help="Only files with this role: source, test, docs, changelog, config, generated, example, vendored.",
)
@click.option("--code", "shortcuts", flag_value="source", multiple=True, help="Only source files (--role source).")
@click.option("--docs", "shortcuts", flag_value="docs", multiple=True, help="Only documentation (--role docs).")
@click.option("--tests", "shortcuts", flag_value="test", multiple=True, help="Only tests (--role test).")
@click.option("--explain", is_flag=True, help="Show the parts of every score.")
@json_option
@database_url_option
def search(
    query: str,
    project: str | None,
    kinds: tuple[str, ...],
    limit: int,
    path_glob: str | None,
    task_id: str | None,
    since: str | None,
    roles: tuple[str, ...],
    shortcuts: tuple[str, ...],
    explain: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Search the project's code and facts by meaning and by exact words (QUERY '-' reads stdin).

    A role filter (--role, --code, --docs, --tests) searches file chunks only."""
    from knowledgebase.search.hits import DEFAULT_KINDS, KINDS, ChunkHit

    query = read_text_argument(query)
    age = parse_age(since)
    chosen = KINDS if "all" in kinds else (kinds or DEFAULT_KINDS)
    wanted = list(dict.fromkeys([*roles, *shortcuts])) or None
    if wanted is not None and not kinds:
        chosen = ("chunk",)
    args = {
        "query": query,
        "project": project,
        "cwd": os.path.realpath(os.getcwd()),
        "kinds": list(chosen),
        "path_glob": path_glob,
        "task_id": task_id,
        "since_s": age.total_seconds() if age is not None else None,
        "limit": limit,
        "roles": wanted,
    }
    hits = _search_hits(args, database_url)
    if as_json:
        print_json([hit.to_json(explain=explain) for hit in hits])
        return
    if not hits:
        click.echo("No hits.", err=True)
        return
    for rank, hit in enumerate(hits, start=1):
        title = hit.citation() + (f"  {hit.symbol}" if isinstance(hit, ChunkHit) and hit.symbol else "")
        if isinstance(hit, ChunkHit):
            title += f"  [{hit.role or 'source'}]"
            if hit.span != (hit.start_line, hit.end_line):
                title += f"  (best part: lines {hit.start_line}-{hit.end_line})"
        click.echo(click.style(f"{rank:>2}. {hit.score:.3f}  {title}", bold=True))
        if explain:
            click.echo(f"    {hit.parts.explain()}")
        lines = hit.text.splitlines() or [""]
        for line in lines[:4]:
            click.echo(f"    {line[:160]}")
        if len(lines) > 4:
            click.echo(f"    ... ({len(lines) - 4} more lines)")


def _search_hits(args: dict[str, Any], database_url: str | None) -> list[Hit]:
    """The hits for ``args``: from the warm process when it runs, else searched in this process."""
    from knowledgebase.cli._warm import ask_warm_process
    from knowledgebase.search.hits import hit_from_wire

    answer = ask_warm_process("search", args, database_url)
    if answer is not None:
        return [hit_from_wire(hit) for hit in answer["hits"]]
    from knowledgebase.search.retrieval import search as run_search

    with open_store(database_url) as (_, db, embedder):
        return run_search(
            db,
            embedder,
            args["query"],
            project=default_project(db, args["project"]),
            task_id=args["task_id"],
            kinds=tuple(args["kinds"]),
            path_glob=args["path_glob"],
            since=timedelta(seconds=args["since_s"]) if args["since_s"] is not None else None,
            limit=args["limit"],
            roles=args.get("roles"),
        )


@click.command()
@click.argument("prompt")
@project_option
@click.option("--task", "task_id", metavar="ID", help="Record the block under this task.")
@click.option("--budget", type=int, metavar="TOKENS", help="Token budget (default: KB_CONTEXT_BUDGET, 1500).")
@click.option("--no-record", is_flag=True, help="Do not record the block in context_log.")
@json_option
@database_url_option
def context(
    prompt: str,
    project: str | None,
    task_id: str | None,
    budget: int | None,
    no_record: bool,
    as_json: bool,
    database_url: str | None,
) -> None:
    """Print the ranked context block for PROMPT, as Markdown within the token budget ('-' reads stdin)."""
    from knowledgebase.cli._store import settings_from
    from knowledgebase.cli._warm import ask_warm_process

    prompt = read_text_argument(prompt)
    settings = settings_from(database_url)
    chosen_budget = settings.context_budget if budget is None else budget
    args: dict[str, Any] = {
        "prompt": prompt,
        "project": project,
        "cwd": os.path.realpath(os.getcwd()),
        "task_id": task_id,
        "budget": chosen_budget,
        "record": not no_record,
    }
    answer = ask_warm_process("context", args, database_url)
    if answer is not None:
        data: dict[str, Any] = answer["pack"]
    else:
        from knowledgebase.search.context import build_context

        with open_store(database_url) as (_, db, embedder):
            pack = build_context(
                db,
                embedder,
                prompt,
                project=default_project(db, project),
                task_id=task_id,
                budget=chosen_budget,
                record=not no_record,
            )
        data = pack.to_json()
    if as_json:
        print_json(data)
    elif data["text"]:
        click.echo(data["text"], nl=False)
    else:
        click.echo("No context: nothing relevant is indexed yet (run `kb populate PATH`).", err=True)
