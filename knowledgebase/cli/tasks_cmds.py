"""``kb tasks create|list|claim|show|history|done|fail|cancel|release|heartbeat``: the shared task queue."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, default_project, open_db, settings_from
from knowledgebase.cli.log_cmd import echo_log_item, one_line
from knowledgebase.config import MAX_DB_INT, MAX_LEASE_SECONDS

if TYPE_CHECKING:
    from knowledgebase.db import Database
    from knowledgebase.store.tasks import Task

EXIT_NOTHING_READY = 3

owner_option = click.option(
    "--owner",
    envvar="KB_AGENT_ID",
    metavar="NAME",
    help="Act as this claimer (default: KB_AGENT_ID); without it done/fail/release skip the ownership check.",
)
context_option = click.option(
    "--context", "context_json", metavar="JSON", help="A JSON object merged into the context."
)


def _context(raw: str | None) -> dict[str, Any] | None:
    from knowledgebase.errors import InputError

    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise InputError(f"--context is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if not isinstance(value, dict):
        raise InputError('--context must be a JSON object, like \'{"goal": "green CI"}\'')
    return value


def _project_id(db: Database, name: str | None, *, from_cwd: bool = False) -> int | None:
    """The id of project ``name`` (NotFound with a did-you-mean when it does not exist); without a
    name, with ``from_cwd``, the indexed project containing the current directory, if any."""
    from knowledgebase import store

    if name is None and from_cwd:
        name = default_project(db, None)
    if name is None:
        return None
    with db.connection() as conn:
        return store.get_project(conn, name).id


def _show(task: Task, as_json: bool) -> None:
    if as_json:
        print_json(task)
        return
    lease = f", lease until {task.lease_expires_at.isoformat(timespec='seconds')}" if task.lease_expires_at else ""
    owner = f", owner {task.owner}" if task.owner else ""
    click.echo(f"{task.id}  [{task.status}] priority {task.priority}, attempts {task.attempts}{owner}{lease}")
    if task.title:
        click.echo(f"  title:   {task.title}")
    if task.context:
        click.echo(f"  context: {json.dumps(task.context, ensure_ascii=False)}")
    if task.result:
        click.echo(f"  result:  {task.result}")
    for change in task.history:
        who = f" by {change['owner']}" if change.get("owner") else ""
        note = f": {one_line(change['note'], 100)}" if change.get("note") else ""
        click.echo(f"  {str(change['at'])[:19]}  {change['status']}{who} (attempt {change['attempt']}){note}")


@click.group()
def tasks() -> None:
    """Tasks shared by agents: create, claim with a lease, finish; read a task's history.

    \b
    Examples:
      kb tasks create T-42 --title "fix CI"
      kb tasks claim --owner agent-1 --json
      kb tasks done T-42 --result green
    """


@tasks.command()
@click.argument("task_id", required=False)
@click.option("--title", default="", help="What the task is about.")
@context_option
@click.option(
    "--project",
    metavar="NAME",
    help="The project the task belongs to (an existing one; default: the indexed project containing the "
    "current directory, if any).",
)
@click.option(
    "--priority",
    type=click.IntRange(-MAX_DB_INT - 1, MAX_DB_INT),
    default=0,
    show_default=True,
    help="Higher is claimed first.",
)
@database_url_option
@json_option
def create(
    task_id: str | None,
    title: str,
    context_json: str | None,
    project: str | None,
    priority: int,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Create a pending task (TASK_ID generated when left out).

    \b
    Example:
      kb tasks create T-42 --title "fix CI" --context '{"goal": "green"}' --priority 5
    """
    from knowledgebase.coordination.taskqueue import create_task

    context = _context(context_json)
    with open_db(database_url) as db:
        task = create_task(
            db,
            task_id,
            title=title,
            context=context,
            project_id=_project_id(db, project, from_cwd=True),
            priority=priority,
        )
    if as_json:
        print_json(task)
    else:
        click.echo(task.id)


@tasks.command("list")
@click.option("--status", help="Only tasks with this status: pending, running, done, failed or cancelled.")
@click.option("--project", metavar="NAME", help="Only tasks of this project (default: tasks of every project).")
@click.option(
    "-n", "--limit", type=click.IntRange(1, MAX_DB_INT), default=50, show_default=True, help="At most this many tasks."
)
@database_url_option
@json_option
def list_(status: str | None, project: str | None, limit: int, database_url: str | None, as_json: bool) -> None:
    """List tasks, newest first.

    \b
    Example:
      kb tasks list --status pending -n 10
    """
    from knowledgebase.store.tasks import list_tasks

    with open_db(database_url) as db:
        project_id = _project_id(db, project)
        with db.connection() as conn:
            rows = list_tasks(conn, status=status, project_id=project_id, limit=limit)
    if as_json:
        print_json(rows)
        return
    if not rows:
        click.echo("No tasks.", err=True)
        return
    click.echo("ID\tSTATUS\tPRIORITY\tTITLE\tOWNER")
    for task in rows:
        click.echo(f"{task.id}\t{task.status}\t{task.priority}\t{task.title}\t{task.owner or '-'}")


@tasks.command()
@owner_option
@click.option(
    "--lease",
    "lease_seconds",
    type=click.FloatRange(min=0, min_open=True, max=MAX_LEASE_SECONDS),
    metavar="SECONDS",
    help="Lease length in seconds.",
)
@click.option("--project", metavar="NAME", help="Only tasks of this project.")
@database_url_option
@json_option
def claim(
    owner: str | None, lease_seconds: float | None, project: str | None, database_url: str | None, as_json: bool
) -> None:
    """Claim the next ready task (highest priority, oldest); exit status 3 when none is ready.

    The lease lasts KB_TASK_LEASE_SECONDS unless renewed with `kb tasks heartbeat`; when it runs
    out, the task can be claimed by someone else. A task claimed KB_TASK_MAX_ATTEMPTS times whose
    last lease ran out is failed ("given up") instead of being claimed again.

    \b
    Example:
      kb tasks claim --owner agent-1 --lease 300 --json || echo nothing to do
    """
    from knowledgebase.coordination.taskqueue import claim_next_task

    settings = settings_from(database_url)
    with open_db(database_url) as db:
        task = claim_next_task(
            db,
            owner=owner or settings.agent_id,
            lease_seconds=lease_seconds or settings.task_lease_seconds,
            project_id=_project_id(db, project),
            max_attempts=settings.task_max_attempts,
        )
    if task is None:
        if as_json:
            print_json(None)
        else:
            click.echo("no task is ready", err=True)
        sys.exit(EXIT_NOTHING_READY)
    _show(task, as_json)


@tasks.command()
@click.argument("task_id")
@database_url_option
@json_option
def show(task_id: str, database_url: str | None, as_json: bool) -> None:
    """Show one task with its status changes (`kb tasks history` has what was done in it).

    \b
    Example:
      kb tasks show T-42 --json
    """
    from knowledgebase.coordination.taskqueue import get_task

    with open_db(database_url) as db:
        _show(get_task(db, task_id), as_json)


@tasks.command()
@click.argument("task_id")
@click.option("--limit", type=click.IntRange(1, MAX_DB_INT), help="Only the last N entries.")
@database_url_option
@json_option
def history(task_id: str, limit: int | None, database_url: str | None, as_json: bool) -> None:
    """The task's log in order: prompts, responses, commands and their outcomes (to resume it).

    \b
    Example:
      kb tasks history T-42 --limit 20
    """
    from knowledgebase.coordination.audit import task_history

    with open_db(database_url) as db:
        items = task_history(db, task_id, limit=limit)
    if as_json:
        print_json(items)
        return
    for item in items:
        echo_log_item(dict(item))


@tasks.command()
@click.argument("task_id")
@owner_option
@click.option("--result", help="What came of it.")
@context_option
@database_url_option
@json_option
def done(
    task_id: str,
    owner: str | None,
    result: str | None,
    context_json: str | None,
    database_url: str | None,
    as_json: bool,
) -> None:
    """Mark a task done (with --owner: only if that claimer still holds it).

    \b
    Example:
      kb tasks done T-42 --owner agent-1 --result "CI green"
    """
    from knowledgebase.coordination.taskqueue import complete_task

    context = _context(context_json)
    with open_db(database_url) as db:
        _show(complete_task(db, task_id, owner=owner, result=result, context=context), as_json)


@tasks.command()
@click.argument("task_id")
@click.option("--reason", required=True, help="Why it failed.")
@click.option("--requeue", is_flag=True, help="Put it back to pending instead of failing it for good.")
@owner_option
@database_url_option
@json_option
def fail(task_id: str, reason: str, requeue: bool, owner: str | None, database_url: str | None, as_json: bool) -> None:
    """Mark a task failed (or give it back with --requeue).

    \b
    Example:
      kb tasks fail T-42 --reason "flaky test" --requeue
    """
    from knowledgebase.coordination.taskqueue import fail_task

    with open_db(database_url) as db:
        _show(fail_task(db, task_id, owner=owner, reason=reason, requeue=requeue), as_json)


@tasks.command()
@click.argument("task_id")
@click.option("--reason", help="Why it is cancelled.")
@click.option("--owner", metavar="NAME", help="Cancel only if this claimer holds the task.")
@database_url_option
@json_option
def cancel(task_id: str, reason: str | None, owner: str | None, database_url: str | None, as_json: bool) -> None:
    """Cancel a pending or running task for good: nobody will claim it again.

    \b
    Example:
      kb tasks cancel T-42 --reason "duplicate of T-41"
    """
    from knowledgebase.coordination.taskqueue import cancel_task

    with open_db(database_url) as db:
        _show(cancel_task(db, task_id, owner=owner, reason=reason), as_json)


@tasks.command()
@click.argument("task_id")
@owner_option
@database_url_option
@json_option
def release(task_id: str, owner: str | None, database_url: str | None, as_json: bool) -> None:
    """Give a claimed task back to the queue at once.

    \b
    Example:
      kb tasks release T-42 --owner agent-1
    """
    from knowledgebase.coordination.taskqueue import release_task

    with open_db(database_url) as db:
        _show(release_task(db, task_id, owner=owner), as_json)


@tasks.command()
@click.argument("task_id")
@owner_option
@click.option(
    "--lease",
    "lease_seconds",
    type=click.FloatRange(min=0, min_open=True, max=MAX_LEASE_SECONDS),
    metavar="SECONDS",
    help="New lease length.",
)
@database_url_option
@json_option
def heartbeat(
    task_id: str, owner: str | None, lease_seconds: float | None, database_url: str | None, as_json: bool
) -> None:
    """Renew the lease of a task you hold (--owner or KB_AGENT_ID is required).

    \b
    Example:
      kb tasks heartbeat T-42 --owner agent-1 --lease 600
    """
    from knowledgebase.coordination.taskqueue import heartbeat as renew
    from knowledgebase.errors import InputError

    if not owner:
        raise InputError("heartbeat needs --owner (or KB_AGENT_ID): the name the task was claimed with")
    settings = settings_from(database_url)
    with open_db(database_url) as db:
        _show(renew(db, task_id, owner=owner, lease_seconds=lease_seconds or settings.task_lease_seconds), as_json)
