"""``kb search`` and ``kb context``: ranked hits, and the context block an agent would get for a prompt."""

from __future__ import annotations

import os
import re
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click

from knowledgebase.cli._output import json_option, print_json, print_jsonl
from knowledgebase.cli._store import (
    database_url_option,
    default_project,
    open_store,
    project_option,
    say_searching_everywhere,
)

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
@click.option("-n", "--limit", default=10, show_default=True, type=int, help="Number of hits.")
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
@click.option("-l", "--files-with-matches", "files_only", is_flag=True, help="Print only the files of code hits.")
@click.option("--vimgrep", is_flag=True, help="Print code hits as path:line:column:text, for editors' quickfix lists.")
@json_option
@click.option("--jsonl", "as_jsonl", is_flag=True, help="Print one JSON object per hit and line.")
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
    files_only: bool,
    vimgrep: bool,
    as_json: bool,
    as_jsonl: bool,
    database_url: str | None,
) -> None:
    """Search the project's code and facts by meaning and by exact words (QUERY '-' reads stdin).

    A role filter (--role, --code, --docs, --tests) searches file chunks only.

    Text output shows paths relative to the current directory (absolute for another project's files);
    JSON keeps paths relative to the project root and adds `project_root`.

    \b
    Examples:
      kb search "where are invoices emailed"
      kb search send_invoice_email --kind all --explain
      kb search "retry policy" -n 3 --vimgrep     # :cexpr system('kb search ... --vimgrep') in vim
      kb search "database pool" -l                # files only
      kb search "test command" --kind fact --json | jq '.[0].fact_value'
    """
    from knowledgebase.errors import InputError
    from knowledgebase.search.hits import DEFAULT_KINDS, KINDS

    if sum((files_only, vimgrep, as_json, as_jsonl)) > 1:
        raise InputError("choose one output: --json, --jsonl, --files-with-matches (-l) or --vimgrep")
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
    hits, scope, roots = _search_hits(args, database_url)
    if scope is None:
        say_searching_everywhere()
    if as_json or as_jsonl:
        rows = [hit.to_json(explain=explain) | {"project_root": roots.get(hit.project or "")} for hit in hits]
        (print_jsonl if as_jsonl else print_json)(rows)
        return
    if not hits:
        click.echo("No hits.", err=True)
        return
    _print_hits(hits, roots, scope, explain=explain, files_only=files_only, vimgrep=vimgrep)


def _search_hits(
    args: dict[str, Any], database_url: str | None
) -> tuple[list[Hit], str | None, dict[str, str | None]]:
    """The hits for ``args``, the project searched (None: all) and every project's root: from the warm
    process when it runs, else searched in this process."""
    from knowledgebase.cli._warm import ask_warm_process
    from knowledgebase.search.hits import hit_from_wire

    answer = ask_warm_process("search", args, database_url)
    if answer is not None:
        return [hit_from_wire(hit) for hit in answer["hits"]], answer.get("project"), answer.get("roots") or {}
    from knowledgebase import store
    from knowledgebase.search.retrieval import search as run_search

    with open_store(database_url) as (_, db, embedder):
        scope = default_project(db, args["project"])
        hits = run_search(
            db,
            embedder,
            args["query"],
            project=scope,
            task_id=args["task_id"],
            kinds=tuple(args["kinds"]),
            path_glob=args["path_glob"],
            since=timedelta(seconds=args["since_s"]) if args["since_s"] is not None else None,
            limit=args["limit"],
            roles=args.get("roles"),
        )
        with db.connection() as conn:
            roots = {p.name: p.root_path for p in store.list_projects(conn)}
    return hits, scope, roots


def _print_hits(
    hits: list[Hit], roots: dict[str, str | None], scope: str | None, *, explain: bool, files_only: bool, vimgrep: bool
) -> None:
    from knowledgebase.search.hits import ChunkHit

    here = os.path.realpath(os.getcwd())
    seen: set[str] = set()
    for rank, hit in enumerate(hits, start=1):
        shown = display_path(hit, roots, here)
        if files_only or vimgrep:
            if not isinstance(hit, ChunkHit) or shown is None:
                continue
            if files_only and shown not in seen:
                seen.add(shown)
                click.echo(shown)
            elif vimgrep:
                first = next((line.strip() for line in hit.text.splitlines() if line.strip()), "")
                click.echo(f"{shown}:{hit.start_line}:1:{hit.score:.3f} {first[:200]}")
            continue
        if isinstance(hit, ChunkHit) and shown:
            start, end = hit.span
            where = f"{shown}:{start}-{end}"
        else:
            where = hit.citation()
        prefix = f"[{hit.project or 'no project'}] " if scope is None else ""
        title = prefix + where + (f"  {hit.symbol}" if isinstance(hit, ChunkHit) and hit.symbol else "")
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


def display_path(hit: Hit, roots: dict[str, str | None], here: str) -> str | None:
    """Where a chunk hit's file is, for people and editors: relative to ``here`` when ``here`` is inside
    the hit's project, else absolute; the project-relative path when the project has no root."""
    from knowledgebase.search.hits import ChunkHit

    if not isinstance(hit, ChunkHit):
        return None
    root = roots.get(hit.project or "")
    if not root:
        return hit.path
    full = os.path.join(root, hit.path)
    inside = here == root or here.startswith(root.rstrip("/") + "/")
    return os.path.relpath(full, here) if inside else full


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
    """Print the ranked context block for PROMPT, as Markdown within the token budget ('-' reads stdin).

    \b
    Examples:
      kb context "How do I run the tests?"
      git diff | kb context - --budget 800 --json
    """
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
        scope = answer.get("project")
    else:
        from knowledgebase.search.context import build_context

        with open_store(database_url) as (_, db, embedder):
            scope = default_project(db, project)
            pack = build_context(
                db,
                embedder,
                prompt,
                project=scope,
                task_id=task_id,
                budget=chosen_budget,
                record=not no_record,
            )
        data = pack.to_json()
    if scope is None:
        say_searching_everywhere()
    if as_json:
        print_json(data)
    elif data["text"]:
        click.echo(data["text"], nl=False)
    else:
        click.echo("No context: nothing relevant is indexed yet (run `kb populate PATH`).", err=True)
