"""Who is doing what on a project: the other agents' running tasks and the files they changed lately.

"Active" means: a task that is running, whose lease is live (or that has none, like a Gemini CLI
session's task), and that logged something or changed state in the last ``minutes``
(``KB_ACTIVE_MINUTES``, default 30); a recent change is a file in ``command_output.file_written`` of a
command logged in the last ``minutes``. "Other" means another task than the caller's
(``exclude_task_id``; None: everyone's is shown). Paths are shown relative to the project root when
they lie under it, so they match the paths of indexed chunks.

Read by SessionStart's digest and BeforeAgent's context (``knowledgebase.gemini.hooks``,
``knowledgebase.search.context``), ``kb status``, ``kb projects show`` and the MCP tool
``active_work``.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from knowledgebase import store
from knowledgebase.config import DEFAULT_ACTIVE_MINUTES
from knowledgebase.db import Database
from knowledgebase.errors import InputError
from knowledgebase.search.commands import ago

if TYPE_CHECKING:
    import psycopg
from knowledgebase.util.jsonable import to_jsonable

MAX_TASKS = 10
MAX_CHANGES = 200  # logged writes read; files are then deduplicated
MAX_FILES_SHOWN = 8
HEADING = "## Other agents at work"


@dataclass(frozen=True)
class ChangedFile:
    """The latest change of one file by another agent."""

    path: str
    agent_id: str | None
    task_id: str | None
    command_log_id: int
    changed_at: datetime


@dataclass(frozen=True)
class ActiveWork:
    """The other agents' running tasks and recently changed files (newest first), within ``minutes``."""

    project: str | None
    minutes: int
    tasks: tuple[store.RunningTask, ...]
    changes: tuple[ChangedFile, ...]

    @property
    def empty(self) -> bool:
        return not self.tasks and not self.changes

    def changed(self, path: str) -> ChangedFile | None:
        return next((c for c in self.changes if c.path == path), None)

    def to_json(self) -> dict[str, Any]:
        return to_jsonable(
            {"project": self.project, "minutes": self.minutes, "tasks": self.tasks, "changed_files": self.changes}
        )


def active_work(
    db: Database,
    project: str | None,
    *,
    exclude_task_id: str | None = None,
    minutes: int = DEFAULT_ACTIVE_MINUTES,
) -> ActiveWork:
    """What other agents do on ``project`` (None: every project) in the last ``minutes``."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise InputError(f"the activity window must be a positive number of minutes, not {minutes!r}")

    def run(conn: psycopg.Connection) -> tuple[store.Project | None, list[store.RunningTask], list[store.FileChange]]:
        found = store.get_project(conn, project) if project is not None else None
        project_id = found.id if found else None
        tasks = store.list_running_tasks(
            conn, project_id=project_id, exclude_task_id=exclude_task_id, minutes=minutes, limit=MAX_TASKS
        )
        writes = store.list_file_changes(
            conn, project_id=project_id, exclude_task_id=exclude_task_id, minutes=minutes, limit=MAX_CHANGES
        )
        return found, tasks, writes

    found, tasks, writes = db.read(run)
    root = found.root_path if found else None
    latest: dict[str, ChangedFile] = {}
    for write in writes:  # newest first: the first seen is the latest change
        for raw in write.paths:
            path = relative_path(raw, root)
            if path and path not in latest:
                latest[path] = ChangedFile(path, write.agent_id, write.task_id, write.command_log_id, write.changed_at)
    return ActiveWork(project, minutes, tuple(tasks), tuple(latest.values()))


def relative_path(path: str, root: str | None) -> str:
    """``path`` relative to ``root`` when it lies under it, normalised (``./a/../b`` -> ``b``)."""
    clean = posixpath.normpath(path.strip()) if path.strip() else ""
    if root and posixpath.isabs(clean):
        base = posixpath.normpath(root)
        if clean == base or clean.startswith(base.rstrip("/") + "/"):
            return posixpath.relpath(clean, base)
    return clean


def _who(name: str | None) -> str:
    return name or "an unknown agent"


def task_line(task: store.RunningTask, now: datetime) -> str:
    title = " ".join(task.title.split())[:120]
    since = ago(task.started_at, now) if task.started_at else "an unknown time"
    return (
        f"task `{task.id}` ({title}) held by {_who(task.owner)}, running since {since}, "
        f"last active {ago(task.last_activity, now)}"
    )


def change_line(change: ChangedFile, now: datetime) -> str:
    task = f" (task `{change.task_id}`)" if change.task_id else ""
    return f"`{change.path}` changed {ago(change.changed_at, now)} by {_who(change.agent_id)}{task}"


def render_active_work(
    work: ActiveWork,
    *,
    now: datetime | None = None,
    tasks: tuple[store.RunningTask, ...] | None = None,
    changes: tuple[ChangedFile, ...] | None = None,
) -> str:
    """The Markdown section (heading and bullets; "" when there is nothing to say), of all of ``work``
    or of the ``tasks`` and ``changes`` given."""
    now = now or datetime.now(UTC)
    tasks = work.tasks if tasks is None else tasks
    changes = work.changes if changes is None else changes
    if not tasks and not changes:
        return ""
    lines = [HEADING, ""]
    lines += [f"- {task_line(t, now)}" for t in tasks]
    lines += [f"- {change_line(c, now)}" for c in changes[:MAX_FILES_SHOWN]]
    if len(changes) > MAX_FILES_SHOWN:
        lines.append(f"- and {len(changes) - MAX_FILES_SHOWN} more files changed in the last {work.minutes} min")
    return "\n".join(lines)
