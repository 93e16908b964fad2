"""Wire the store into Gemini CLI: merge hooks and an MCP server entry into a ``settings.json``.

``install_gemini`` adds one hook group per event (each hook named ``knowledgebase-<event>``) and the
MCP server ``knowledgebase``, keeps everything else in the file, writes a timestamped backup first,
and is idempotent: a second install replaces its own entries. ``uninstall_gemini`` removes exactly
those entries (and the containers they alone filled). A file that is not valid JSON is never
touched. Every command is an absolute path to this installation's interpreter or executables, and the
store's settings travel in each entry's ``env`` because Gemini CLI drops variables named like
``*DATABASE_URL*`` from the environment it passes on. A database password never goes into the file:
the entries get the URL without it and ``PGPASSFILE`` naming ``KB_HOME/pgpass`` (mode 0600), where
libpq finds it. Backups are written with mode 0600 (one made before this rule may hold a password).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from knowledgebase.config import Settings
from knowledgebase.errors import GeminiSettingsError
from knowledgebase.gemini.hook_client import HOOK_EVENTS, HOOK_TIMEOUTS_MS

MCP_SERVER_NAME = "knowledgebase"  # no "_": Gemini CLI names tools mcp_<server>_<tool>
HOOK_NAME_PREFIX = "knowledgebase-"
MCP_TIMEOUT_MS = 60_000
SCOPES = ("user", "project")

# Lifecycle matchers are exact strings ("" matches every source); tool matchers are regexes.
_MATCHERS = {"AfterTool": ".*"}
_DESCRIPTIONS = {
    "SessionStart": "opens the session's task, adds a digest of the project's facts",
    "BeforeAgent": "logs the prompt, adds ranked context from the shared store",
    "AfterTool": "logs the tool call or shell command with its outcome",
    "AfterAgent": "logs the response and the turn's token usage",
    "SessionEnd": "closes the session's task",
}


@dataclass(frozen=True)
class Wiring:
    """What the entries point at: the executables and the environment they need.

    Hooks run ``python -S -P -m knowledgebase.gemini.hook_client EVENT`` with ``PYTHONPATH`` set to the folder
    that holds the package: skipping ``site`` (and the .pth files of every installed package) halves
    the hook process's start-up, the hook client needs nothing but the standard library, and ``-P``
    keeps the project directory Gemini CLI runs the hook in off ``sys.path`` (its ``json.py`` must not
    shadow the standard library's).
    """

    kb_executable: Path
    python: Path
    package_root: Path
    env: dict[str, str]
    # the password of the database URL, kept out of settings.json: a line of PGPASSFILE
    password_file: Path | None = None
    password_entry: str | None = None

    def hook_command(self, event: str) -> str:
        return f"{_quote(self.python)} -S -P -m knowledgebase.gemini.hook_client {event}"

    def hook_env(self) -> dict[str, str]:
        return {**self.env, "PYTHONPATH": str(self.package_root)}


@dataclass(frozen=True)
class SettingsChange:
    """The outcome of an install or uninstall (or what it would be, for a dry run)."""

    path: Path
    action: str  # "install" | "uninstall"
    changed: bool
    dry_run: bool
    backup: Path | None
    hooks: tuple[str, ...]
    mcp_server: str | None
    document: dict[str, Any]


def settings_path(scope: str, *, project_dir: Path | None = None, env: dict[str, str] | None = None) -> Path:
    """The ``settings.json`` of a scope: user (``$GEMINI_CLI_HOME`` or ``~``) or project (``.gemini/``)."""
    env = dict(os.environ) if env is None else env
    if scope == "user":
        home = Path(env["GEMINI_CLI_HOME"]) if env.get("GEMINI_CLI_HOME") else Path.home()
        return home.expanduser().resolve() / ".gemini" / "settings.json"
    if scope == "project":
        return (project_dir or Path.cwd()).resolve() / ".gemini" / "settings.json"
    raise GeminiSettingsError(f"unknown scope {scope!r}; use one of {', '.join(SCOPES)}")


def wiring_for(settings: Settings, *, bin_dir: Path | None = None) -> Wiring:
    """Entries for this installation: its interpreter, and ``kb`` next to it."""
    import knowledgebase

    python = Path(sys.executable).absolute()  # not resolved: a venv's interpreter is a symlink into it
    kb = (bin_dir or python.parent).absolute() / "kb"
    if not os.access(kb, os.X_OK):
        raise GeminiSettingsError(
            f"{kb} is not an executable: reinstall knowledgebase (pip install -e .) so its console scripts exist"
        )
    env = {
        "KB_HOME": str(settings.home),
        "KB_EMBED_MODEL": settings.embed_model,
        "KB_EMBED_BACKEND": settings.embed_backend,
        "KB_CONTEXT_BUDGET": str(settings.context_budget),
    }
    password_file = password_entry = None
    if settings.database_url:
        from knowledgebase.db.connect import split_password

        env["KB_DATABASE_URL"], password_entry = split_password(settings.database_url)
        if settings.read_database_urls:
            bare_urls, entries = _read_urls_and_passwords(settings.database_url, settings.read_database_urls)
            env["KB_READ_DATABASE_URL"] = " ".join(bare_urls)
            password_entry = "\n".join([e for e in (password_entry, *entries) if e]) or None
        if password_entry is not None:
            password_file = settings.home / "pgpass"
            env["PGPASSFILE"] = str(password_file)
    if settings.project:
        env["KB_PROJECT"] = settings.project
    package_root = Path(knowledgebase.__file__).resolve().parent.parent
    return Wiring(
        kb_executable=kb,
        python=python,
        package_root=package_root,
        env=env,
        password_file=password_file,
        password_entry=password_entry,
    )


def _read_urls_and_passwords(primary: str, read_urls: Sequence[str]) -> tuple[list[str], list[str]]:
    """The read replicas' URLs without passwords, and their password-file lines: a replica's own
    password, or else the primary's (a replica has the primary's roles and passwords)."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from knowledgebase.db.connect import split_password

    primary_password = conninfo_to_dict(primary).get("password")
    bare_urls, entries = [], []
    for url in read_urls:
        bare, entry = split_password(url)
        if entry is None and primary_password and not conninfo_to_dict(url).get("passfile"):
            entry = split_password(make_conninfo(url, password=str(primary_password)))[1]
        bare_urls.append(bare)
        if entry is not None:
            entries.append(entry)
    return bare_urls, entries


def read_settings(path: Path) -> dict[str, Any]:
    """The settings document at ``path`` ({} if the file does not exist); refuses anything but a JSON object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise GeminiSettingsError(f"cannot read {path}: {exc}; nothing was changed") from None
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeminiSettingsError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); nothing was changed. "
            "Fix the file (comments and trailing commas are not accepted here) and run the command again."
        ) from None
    if not isinstance(document, dict):
        raise GeminiSettingsError(f"{path} holds a JSON {type(document).__name__}, not an object; nothing was changed")
    return document


def hook_entry(event: str, wiring: Wiring) -> dict[str, Any]:
    """The hook group this installation adds for ``event``."""
    return {
        "matcher": _MATCHERS.get(event, ""),
        "hooks": [
            {
                "type": "command",
                "name": HOOK_NAME_PREFIX + event,
                "command": wiring.hook_command(event),
                "timeout": HOOK_TIMEOUTS_MS[event],
                "env": wiring.hook_env(),
                "description": f"knowledgebase: {_DESCRIPTIONS[event]}",
            }
        ],
    }


def mcp_entry(wiring: Wiring) -> dict[str, Any]:
    """The MCP server entry this installation adds."""
    return {
        "command": str(wiring.kb_executable),
        "args": ["mcp"],
        "env": dict(wiring.env),
        "timeout": MCP_TIMEOUT_MS,
        "trust": True,
        "description": "knowledgebase: search the shared store, get context, remember and confirm facts",
    }


def merged_document(document: dict[str, Any], wiring: Wiring) -> dict[str, Any]:
    """``document`` with this installation's hooks and MCP server (previous ones of ours replaced)."""
    merged = unwired_document(document)
    hooks = merged.get("hooks")
    if hooks is None:
        hooks = merged["hooks"] = {}
    if not isinstance(hooks, dict):
        raise GeminiSettingsError("settings.json has a `hooks` value that is not an object; fix it by hand first")
    for event in HOOK_EVENTS:
        groups = hooks.setdefault(event, [])
        if not isinstance(groups, list):
            raise GeminiSettingsError(f"settings.json `hooks.{event}` is not a list; fix it by hand first")
        groups.append(hook_entry(event, wiring))
    servers = merged.get("mcpServers")
    if servers is None:
        servers = merged["mcpServers"] = {}
    if not isinstance(servers, dict):
        raise GeminiSettingsError("settings.json has an `mcpServers` value that is not an object; fix it by hand first")
    existing = servers.get(MCP_SERVER_NAME)
    if existing is not None and not _is_our_server(existing):
        raise GeminiSettingsError(
            f"settings.json already has an MCP server named {MCP_SERVER_NAME!r} that knowledgebase did not add; "
            "rename or remove it first"
        )
    servers[MCP_SERVER_NAME] = mcp_entry(wiring)
    return merged


def unwired_document(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` without this installation's entries; containers they alone filled go too."""
    result = copy.deepcopy(document)
    hooks = result.get("hooks")
    if isinstance(hooks, dict):
        for event in list(hooks):
            groups = hooks[event]
            if not isinstance(groups, list):
                continue
            kept, removed = _without_our_hooks(groups)
            if not removed:
                continue
            if kept:
                hooks[event] = kept
            else:
                del hooks[event]
        if not hooks and _had_ours(document.get("hooks")):
            del result["hooks"]
    servers = result.get("mcpServers")
    if isinstance(servers, dict) and _is_our_server(servers.get(MCP_SERVER_NAME)):
        del servers[MCP_SERVER_NAME]
        if not servers:
            del result["mcpServers"]
    return result


def install_gemini(path: Path, wiring: Wiring, *, dry_run: bool = False) -> SettingsChange:
    """Merge the hooks and MCP server into ``path`` (backup first); with ``dry_run`` only report."""
    document = read_settings(path)
    merged = merged_document(document, wiring)
    if not dry_run and wiring.password_file is not None and wiring.password_entry is not None:
        _store_password(wiring.password_file, wiring.password_entry)
    return _apply(path, document, merged, "install", dry_run)


def _store_password(path: Path, entry: str) -> None:
    """Put ``entry`` (one line or several) into the password file at ``path`` (mode 0600), replacing the
    lines of the same host, port, database and user."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    new = entry.splitlines()  # the primary's line and those of its read replicas
    keys = {_pgpass_key(line) for line in new}
    kept = [line for line in lines if line.strip() and _pgpass_key(line) not in keys]
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_atomically(path, "\n".join([*kept, *new]) + "\n", mode=0o600)


def uninstall_gemini(path: Path, *, dry_run: bool = False) -> SettingsChange:
    """Remove what ``install_gemini`` added to ``path`` (backup first); with ``dry_run`` only report."""
    document = read_settings(path)
    return _apply(path, document, unwired_document(document), "uninstall", dry_run)


def _apply(path: Path, before: dict[str, Any], after: dict[str, Any], action: str, dry_run: bool) -> SettingsChange:
    changed = before != after or (action == "install" and not path.exists())
    backup = None
    if changed and not dry_run:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            backup = path.with_name(f"{path.name}.{stamp}.bak")
            _copy_privately(path, backup)
        _write_atomically(path, json.dumps(after, indent=2, ensure_ascii=False) + "\n")
    source = after if action == "install" else before
    return SettingsChange(
        path=path,
        action=action,
        changed=changed,
        dry_run=dry_run,
        backup=backup,
        hooks=tuple(e for e in HOOK_EVENTS if _our_hook_names(source.get("hooks"), e)),
        mcp_server=MCP_SERVER_NAME if _is_our_server((source.get("mcpServers") or {}).get(MCP_SERVER_NAME)) else None,
        document=after,
    )


def _pgpass_key(line: str) -> tuple[str, ...]:
    """The host, port, database and user fields of a password-file line (``\\`` escapes ``:``)."""
    fields: list[str] = []
    current, escaped = "", False
    for char in line:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            current, escaped = current + char, True
        elif char == ":" and len(fields) < 4:
            fields.append(current)
            current = ""
        else:
            current += char
    return tuple(fields)


def _copy_privately(source: Path, backup: Path) -> None:
    """A copy only its owner can read: the file may hold a password written by an older install."""
    fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(source.read_bytes())
    shutil.copystat(source, backup)
    os.chmod(backup, 0o600)


def _write_atomically(path: Path, text: str, *, mode: int | None = None) -> None:
    """Replace ``path`` in one rename, keeping its permissions (new files: owner only, they hold settings)."""
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _is_ours(hook: Any) -> bool:
    return isinstance(hook, dict) and str(hook.get("name", "")).startswith(HOOK_NAME_PREFIX)


def _without_our_hooks(groups: list[Any]) -> tuple[list[Any], bool]:
    """The groups with our hooks taken out, dropping groups that held only ours; and whether any went."""
    kept: list[Any] = []
    removed = False
    for group in groups:
        hooks = group.get("hooks") if isinstance(group, dict) else None
        if not isinstance(hooks, list) or not any(_is_ours(h) for h in hooks):
            kept.append(group)
            continue
        removed = True
        others = [h for h in hooks if not _is_ours(h)]
        if others:
            kept.append({**group, "hooks": others})
    return kept, removed


def _our_hook_names(hooks: Any, event: str) -> list[str]:
    if not isinstance(hooks, dict) or not isinstance(hooks.get(event), list):
        return []
    return [
        h["name"]
        for group in hooks[event]
        if isinstance(group, dict) and isinstance(group.get("hooks"), list)
        for h in group["hooks"]
        if _is_ours(h)
    ]


def _had_ours(hooks: Any) -> bool:
    return isinstance(hooks, dict) and any(_our_hook_names(hooks, event) for event in hooks)


def _is_our_server(entry: Any) -> bool:
    return isinstance(entry, dict) and entry.get("args") == ["mcp"] and Path(str(entry.get("command", ""))).name == "kb"


def _quote(path: Path) -> str:
    """``path`` quoted for the shell Gemini CLI runs hook commands with."""
    import shlex

    return shlex.quote(str(path))
