"""Which project and task a Gemini CLI session works on, shared by the hooks and the MCP server.

- The project: ``KB_PROJECT`` when set; else the project whose recorded root contains the session's
  directory (innermost wins); else a project named like the directory's repository (its git root's
  basename), so clones of one repository in different places share a project; else none (the
  session then sees store-wide facts only).
- The task: ``gemini-<session id>``, opened by SessionStart, the same again on resume.
- The MCP server is started by Gemini CLI without the session id, so SessionStart records the
  session under the Gemini CLI process id (``KB_HOME/run/sessions/<pid>.json``); the MCP server
  looks itself up by its parent process id.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from knowledgebase import store
from knowledgebase.store import Project
from knowledgebase.util.processes import pid_alive

SESSION_MAX_AGE_S = 7 * 24 * 3600  # registry entries older than this are ignored and swept


@dataclass(frozen=True)
class SessionInfo:
    """A live Gemini CLI session as SessionStart recorded it."""

    session_id: str
    task_id: str
    project: str | None
    cwd: str
    gemini_pid: int | None = None


def session_owner(session_id: str) -> str:
    """The owner of a session's task: stable across resumes, so a resumed session takes its task back."""
    return f"gemini-cli:{session_id}"


def git_root(path: str) -> Path | None:
    """The nearest directory at or above ``path`` that holds ``.git``."""
    current = Path(path)
    for candidate in (current, *current.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def resolve_project(conn: psycopg.Connection, cwd: str | None, explicit: str | None = None) -> Project | None:
    """The project a session in ``cwd`` works on (see the module docstring); None when nothing matches."""
    if explicit:
        return store.ensure_project(conn, explicit)
    if not cwd:
        return None
    real = os.path.realpath(cwd)
    project = store.project_for_path(conn, real)
    if project is not None:
        return project
    root = git_root(real)
    return store.find_project(conn, (root or Path(real)).name)


def registry_dir(home: Path) -> Path:
    return home / "run" / "sessions"


def register_session(home: Path, info: SessionInfo) -> None:
    """Record ``info`` under its Gemini CLI process id (and sweep entries of sessions long gone)."""
    if info.gemini_pid is None:
        return
    folder = registry_dir(home)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{info.gemini_pid}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(info)))
    tmp.replace(folder / f"{info.gemini_pid}.json")
    _sweep(folder)


def forget_session(home: Path, gemini_pid: int | None, session_id: str) -> None:
    """Drop the registry entry of a session that ended."""
    if gemini_pid is None:
        return
    path = registry_dir(home) / f"{gemini_pid}.json"
    info = _read(path)
    if info is not None and info.session_id == session_id:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def session_for_process(home: Path, gemini_pid: int, cwd: str | None = None) -> SessionInfo | None:
    """The session of Gemini CLI process ``gemini_pid``; else the latest session started in ``cwd``."""
    folder = registry_dir(home)
    info = _read(folder / f"{gemini_pid}.json")
    if info is not None or cwd is None:
        return info
    real = os.path.realpath(cwd)
    candidates = []
    for path in folder.glob("*.json"):
        entry = _read(path)
        if entry is not None and os.path.realpath(entry.cwd) == real:
            with contextlib.suppress(OSError):
                candidates.append((path.stat().st_mtime, entry))
    return max(candidates, key=lambda c: c[0])[1] if candidates else None


def _read(path: Path) -> SessionInfo | None:
    try:
        data = json.loads(path.read_text())
        return SessionInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def _sweep(folder: Path) -> None:
    """Remove entries of processes that are gone or sessions older than SESSION_MAX_AGE_S."""
    cutoff = time.time() - SESSION_MAX_AGE_S
    for path in folder.glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            if path.stat().st_mtime < cutoff or not pid_alive(int(path.stem)):
                path.unlink()
