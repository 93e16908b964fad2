"""``kb tasks create|list|claim|show|history|done|fail|cancel|release|heartbeat``: the shared task queue."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, open_db, settings_from

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


def _project_id(db: Database, name: str | None, *, create: bool) -> int | None:
    from knowledgebase import store

    if name is None:
        return None
    with db.connection() as conn:
        project = store.ensure_project(conn, name) if create else store.get_project(conn, name)
    return project.id


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
        note = f": {_one_line(change['note'], 100)}" if change.get("note") else ""
        click.echo(f"  {str(change['at'])[:19]}  {change['status']}{who} (attempt {change['attempt']}){note}")


@click.group()
def tasks() -> None:
    """Tasks shared by agents: create, claim with a lease, finish; read a task's history."""


@tasks.command()
@click.argument("task_id", required=False)
@click.option("--title", default="", help="What the task is about.")
@context_option
@click.option("--project", metavar="NAME", help="The project the task belongs to (created if new).")
@click.option("--priority", type=int, default=0, show_default=True, help="Higher is claimed first.")
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
    """Create a pending task (TASK_ID generated when left out)."""
    from knowledgebase.coordination.taskqueue import create_task

    context = _context(context_json)
    with open_db(database_url) as db:
        task = create_task(
            db,
            task_id,
            title=title,
            context=context,
            project_id=_project_id(db, project, create=True),
            priority=priority,
        )
    if as_json:
        print_json(task)
    else:
        click.echo(task.id)


@tasks.command("list")
@click.option("--status", help="pending, running, done, failed or cancelled.")
@click.option("--project", metavar="NAME")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@database_url_option
@json_option
def list_(status: str | None, project: str | None, limit: int, database_url: str | None, as_json: bool) -> None:
    """List tasks, newest first."""
    from knowledgebase.store.tasks import list_tasks

    with open_db(database_url) as db:
        project_id = _project_id(db, project, create=False)
        with db.connection() as conn:
            rows = list_tasks(conn, status=status, project_id=project_id, limit=limit)
    if as_json:
        print_json(rows)
        return
    for task in rows:
        owner = f"  {task.owner}" if task.owner else ""
        click.echo(f"{task.id}\t{task.status}\t{task.priority}\t{task.title}{owner}")


@tasks.command()
@owner_option
@click.option(
    "--lease",
    "lease_seconds",
    type=click.FloatRange(min=0, min_open=True),
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
    """
    from knowledgebase.coordination.taskqueue import claim_next_task

    settings = settings_from(database_url)
    with open_db(database_url) as db:
        task = claim_next_task(
            db,
            owner=owner or settings.agent_id,
            lease_seconds=lease_seconds or settings.task_lease_seconds,
            project_id=_project_id(db, project, create=False),
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
    """Show one task with its status changes (`kb tasks history` has what was done in it)."""
    from knowledgebase.coordination.taskqueue import get_task

    with open_db(database_url) as db:
        _show(get_task(db, task_id), as_json)


@tasks.command()
@click.argument("task_id")
@click.option("--limit", type=click.IntRange(min=1), help="Only the last N entries.")
@database_url_option
@json_option
def history(task_id: str, limit: int | None, database_url: str | None, as_json: bool) -> None:
    """The task's log in order: prompts, responses, commands and their outcomes (to resume it)."""
    from knowledgebase.coordination.audit import task_history

    with open_db(database_url) as db:
        items = task_history(db, task_id, limit=limit)
    if as_json:
        print_json(items)
        return
    for item in items:
        _echo_history_item(dict(item))


def _echo_history_item(item: dict[str, Any]) -> None:
    who = f" {item['agent_id']}" if item["agent_id"] else ""
    click.echo(f"#{item['id']} {item['executed_at']} {item['kind']}{who}")
    for label in ("prompt", "response", "command"):
        if item[label]:
            click.echo(f"  {label}: {_one_line(item[label])}")
    if item["tool_name"]:
        click.echo(f"  tool: {item['tool_name']} {_one_line(json.dumps(item['tool_input']))}")
    output = item["output"]
    if output is not None:
        status = "ok" if output["success"] else f"failed (return code {output['return_code']})"
        truncated = " [truncated]" if output["truncated"] else ""
        click.echo(f"  outcome: {status}, {output['duration_ms']} ms{truncated}")
        for stream in ("stdout", "stderr"):
            if output[stream]:
                click.echo(f"  {stream}: {_one_line(output[stream])}")
        if output["files_written"]:
            click.echo(f"  files written: {', '.join(output['files_written'])}")
        if output["error"]:
            click.echo(f"  error: {output['error']}")
    if item["usage"]:
        click.echo(f"  tokens: {item['usage']['total_tokens']}")


def _one_line(text: str, width: int = 160) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


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
    """Mark a task done (with --owner: only if that claimer still holds it)."""
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
    """Mark a task failed (or give it back with --requeue)."""
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
    """Cancel a pending or running task for good: nobody will claim it again."""
    from knowledgebase.coordination.taskqueue import cancel_task

    with open_db(database_url) as db:
        _show(cancel_task(db, task_id, owner=owner, reason=reason), as_json)


@tasks.command()
@click.argument("task_id")
@owner_option
@database_url_option
@json_option
def release(task_id: str, owner: str | None, database_url: str | None, as_json: bool) -> None:
    """Give a claimed task back to the queue at once."""
    from knowledgebase.coordination.taskqueue import release_task

    with open_db(database_url) as db:
        _show(release_task(db, task_id, owner=owner), as_json)


@tasks.command()
@click.argument("task_id")
@owner_option
@click.option(
    "--lease", "lease_seconds", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS", help="New lease length."
)
@database_url_option
@json_option
def heartbeat(
    task_id: str, owner: str | None, lease_seconds: float | None, database_url: str | None, as_json: bool
) -> None:
    """Renew the lease of a task you hold (--owner or KB_AGENT_ID is required)."""
    from knowledgebase.coordination.taskqueue import heartbeat as renew
    from knowledgebase.errors import InputError

    if not owner:
        raise InputError("heartbeat needs --owner (or KB_AGENT_ID): the name the task was claimed with")
    settings = settings_from(database_url)
    with open_db(database_url) as db:
        _show(renew(db, task_id, owner=owner, lease_seconds=lease_seconds or settings.task_lease_seconds), as_json)
