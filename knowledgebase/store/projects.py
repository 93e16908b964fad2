"""Projects: the scope shared by every task and agent working on the same repository."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from datetime import datetime

import psycopg

from knowledgebase.errors import InputError, NotFound, ProjectRootConflict
from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required


@dataclass(frozen=True)
class Project:
    """A project; ``updated_at`` is when it was last populated (``kb populate`` records its root each
    run), else when it was created."""

    id: int
    name: str
    root_path: str | None
    created_at: datetime
    updated_at: datetime


_COLS = columns(Project)
ENSURE_PROJECT = f"""
INSERT INTO projects (name, root_path) VALUES (%(name)s, %(root_path)s)
ON CONFLICT (name) DO UPDATE
   SET root_path = COALESCE(EXCLUDED.root_path, projects.root_path),
       updated_at = CASE WHEN EXCLUDED.root_path IS NOT NULL THEN now() ELSE projects.updated_at END
RETURNING {_COLS}
"""
# a project keeps the root it was first indexed from (a name without a root takes the given one)
BIND_PROJECT = f"""
INSERT INTO projects (name, root_path) VALUES (%(name)s, %(root_path)s)
ON CONFLICT (name) DO UPDATE
   SET root_path = COALESCE(projects.root_path, EXCLUDED.root_path),
       updated_at = CASE WHEN projects.root_path IS NULL OR projects.root_path = EXCLUDED.root_path THEN now()
                         ELSE projects.updated_at END
RETURNING {_COLS}
"""
MOVE_PROJECT_ROOT = (
    f"UPDATE projects SET root_path = %(root_path)s, updated_at = now() WHERE id = %(id)s RETURNING {_COLS}"
)
GET_PROJECT = f"SELECT {_COLS} FROM projects WHERE name = %s"
GET_PROJECT_BY_ID = f"SELECT {_COLS} FROM projects WHERE id = %s"
LIST_PROJECTS = f"SELECT {_COLS} FROM projects ORDER BY name"
LIST_PROJECT_NAMES = "SELECT name FROM projects ORDER BY name"
# the project whose root is the path or its nearest ancestor
PROJECT_FOR_PATH = f"""
SELECT {_COLS} FROM projects
 WHERE root_path IS NOT NULL AND (root_path = %(path)s OR starts_with(%(path)s, rtrim(root_path, '/') || '/'))
 ORDER BY length(root_path) DESC
 LIMIT 1
"""
DELETE_PROJECT = "DELETE FROM projects WHERE name = %s"


def ensure_project(conn: psycopg.Connection, name: str, root_path: str | None = None) -> Project:
    """The project called ``name``, created if new; a given ``root_path`` is recorded."""
    if not name or not name.strip():
        raise InputError("a project name must not be empty")
    row = fetch_one(conn, Project, ENSURE_PROJECT, {"name": name.strip(), "root_path": root_path})
    assert row is not None
    return row


def bind_project(conn: psycopg.Connection, name: str, root_path: str, *, move_root: bool = False) -> Project:
    """The project ``name`` indexed from ``root_path``, created if new.

    A project is bound to the root it was first indexed from: another root is refused with
    ProjectRootConflict (so two folders with the same name never share, and delete, each other's
    files) unless ``move_root`` moves the project there.
    """
    if not name or not name.strip():
        raise InputError("a project name must not be empty")
    row = fetch_one(conn, Project, BIND_PROJECT, {"name": name.strip(), "root_path": root_path})
    assert row is not None
    if row.root_path == root_path:
        return row
    if not move_root:
        raise ProjectRootConflict(
            f"project {row.name!r} is indexed from {row.root_path}, not {root_path}: index this folder under "
            f"another name with `kb populate {root_path} --project NAME`, or move the project here with "
            f"`kb populate {root_path} --move-root` (files not in the new folder leave the index)"
        )
    moved = fetch_one(conn, Project, MOVE_PROJECT_ROOT, {"id": row.id, "root_path": root_path})
    assert moved is not None
    return moved


def get_project(conn: psycopg.Connection, name: str) -> Project:
    """The project called ``name``; NotFound names the closest existing projects and how to create it."""
    project = find_project(conn, name)
    if project is None:
        raise unknown_project(conn, name)
    return project


def unknown_project(conn: psycopg.Connection, name: str) -> NotFound:
    """The error for a project name that does not exist, with a did-you-mean from the existing names."""
    names = [row[0] for row in conn.execute(LIST_PROJECT_NAMES).fetchall()]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
    known = "" if close or not names else f" (projects: {', '.join(names[:10])}{', ...' if len(names) > 10 else ''})"
    return NotFound(
        f"project {name!r} does not exist{hint}{known}; index a folder as it with "
        f"`kb populate PATH --project {name}`, or create it empty with `kb projects add {name}`"
    )


def find_project(conn: psycopg.Connection, name: str) -> Project | None:
    return fetch_one(conn, Project, GET_PROJECT, (name,))


def get_project_by_id(conn: psycopg.Connection, project_id: int) -> Project:
    return fetch_required(conn, Project, GET_PROJECT_BY_ID, (project_id,), f"project #{project_id}")


def project_for_path(conn: psycopg.Connection, path: str) -> Project | None:
    """The project whose recorded root contains ``path`` (an absolute path); the innermost one wins."""
    return fetch_one(conn, Project, PROJECT_FOR_PATH, {"path": path})


def list_projects(conn: psycopg.Connection) -> list[Project]:
    return fetch_all(conn, Project, LIST_PROJECTS)


def delete_project(conn: psycopg.Connection, name: str) -> bool:
    """Delete a project with its files, chunks and facts. Returns False if it did not exist."""
    return conn.execute(DELETE_PROJECT, (name,)).rowcount > 0
