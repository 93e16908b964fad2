"""``kb projects list|show|add|rm``: the projects of the store, what each holds, and removing one."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from knowledgebase.cli._output import human_time, json_option, print_json
from knowledgebase.cli._store import database_url_option, default_project, open_db
from knowledgebase.util.jsonable import to_jsonable

if TYPE_CHECKING:
    from knowledgebase.search.activity import ActiveWork
    from knowledgebase.store import ProjectSummary


@click.group()
def projects() -> None:
    """The store's projects: what each holds (files, chunks, facts, commands), create or remove one.

    A project is created by `kb populate PATH` (named after the folder, or --project NAME) or, empty,
    by `kb projects add NAME`; other commands refuse a --project that does not exist.

    \b
    Examples:
      kb projects list
      kb projects show myapp --json
      kb projects rm old-checkout --yes
    """


def _summary(database_url: str | None, name: str | None) -> tuple[ProjectSummary, ActiveWork]:
    from knowledgebase import store
    from knowledgebase.cli._store import settings_from
    from knowledgebase.errors import InputError
    from knowledgebase.search.activity import active_work

    with open_db(database_url) as db:
        name = default_project(db, name)
        if name is None:
            raise InputError("the current directory is in no indexed project: name one (`kb projects list`)")
        with db.connection() as conn:
            row = store.list_project_summaries(conn, name)[0]
        return row, active_work(db, row.name, minutes=settings_from(database_url).active_minutes)


@projects.command("list")
@json_option
@database_url_option
def list_(as_json: bool, database_url: str | None) -> None:
    """List every project with its files, chunks, active facts, last populate and root.

    \b
    Example:
      kb projects list --json | jq '.[].name'
    """
    from knowledgebase import store

    with open_db(database_url) as db, db.connection() as conn:
        rows = store.list_project_summaries(conn)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("No projects yet: index one with `kb populate PATH`.", err=True)
        return
    width = max(len("PROJECT"), *(len(row.name) for row in rows))
    click.echo(f"{'PROJECT':<{width}}  {'FILES':>6}  {'CHUNKS':>7}  {'FACTS':>5}  {'LAST POPULATE':<20}  ROOT")
    for row in rows:
        populated = f"{row.last_populated_at:%Y-%m-%d %H:%M}" if row.last_populated_at else "never"
        click.echo(
            f"{row.name:<{width}}  {row.files:>6}  {row.chunks:>7}  {row.facts:>5}  {populated:<20}  "
            f"{row.root_path or '-'}"
        )


@projects.command()
@click.argument("name", required=False)
@json_option
@database_url_option
def show(name: str | None, as_json: bool, database_url: str | None) -> None:
    """Show one project (default: the one containing the current directory), what it holds, and the
    agents at work on it: running tasks and files changed in the last KB_ACTIVE_MINUTES (30).

    \b
    Example:
      kb projects show myapp
    """
    from knowledgebase.search.activity import render_active_work

    row, work = _summary(database_url, name)
    if as_json:
        print_json({**to_jsonable(row), "active_work": work.to_json()})
        return
    for label, value in (
        ("project", row.name),
        ("root", row.root_path or "- (never populated)"),
        ("files", row.files),
        ("chunks", row.chunks),
        ("active facts", row.facts),
        ("commands logged", row.commands),
        ("tasks", row.tasks),
        ("created", human_time(row.created_at)),
        ("last populate", human_time(row.last_populated_at)),
    ):
        click.echo(f"{label:<16} {value}")
    others = render_active_work(work)
    click.echo(others.replace("## ", "", 1) if others else f"no other agent active in the last {work.minutes} min")


@projects.command()
@click.argument("name")
@json_option
@database_url_option
def add(name: str, as_json: bool, database_url: str | None) -> None:
    """Create an empty project NAME for facts and tasks that belong to no folder (`kb populate` creates
    the others).

    \b
    Example:
      kb projects add infra && kb fact add --project infra "deploy host" "ci.internal"
    """
    from knowledgebase import store

    with open_db(database_url) as db, db.connection() as conn:
        existed = store.find_project(conn, name.strip()) is not None
        project = store.ensure_project(conn, name)
    if as_json:
        print_json({"project": project, "created": not existed})
    else:
        click.echo(f"Project {project.name!r} exists already." if existed else f"Created project {project.name!r}.")


@projects.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
@database_url_option
def rm(name: str, yes: bool, as_json: bool, database_url: str | None) -> None:
    """Delete project NAME with its files, chunks and facts (asks first unless --yes).

    Logged commands, prompts and tasks are an audit trail: they are kept, without a project.

    \b
    Example:
      kb projects rm old-checkout --yes
    """
    from knowledgebase import store

    with open_db(database_url) as db:
        with db.connection() as conn:
            row = store.list_project_summaries(conn, store.get_project(conn, name).name)[0]
        what = (
            f"project {row.name!r} ({row.root_path or 'no root'}): {row.files} files, {row.chunks} chunks and "
            f"{row.facts} active facts (with their history) will be deleted; {row.commands} logged commands "
            f"and {row.tasks} tasks are kept without a project"
        )
        if not yes:
            click.echo(what[0].upper() + what[1:] + ".", err=True)
            if not click.confirm(f"Delete project {row.name!r}?", default=False, err=True):
                click.echo("Nothing deleted.", err=True)
                sys.exit(1)
        with db.connection() as conn:
            store.delete_project(conn, row.name)
    if as_json:
        print_json({"deleted": row})
    else:
        click.echo(f"Deleted {what.replace(' will be deleted', '')}.")
