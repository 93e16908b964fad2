"""A Gemini CLI home for the runner's CLI calls: the user's own, with ``general.maxAttempts: 1`` on top.

The CLI retries a 429 on the same key up to ``general.maxAttempts`` (10) times, which would replace the
key pool's rotation. The setting has to reach the CLI through a layer it always reads: the system
files (``GEMINI_CLI_SYSTEM_DEFAULTS_PATH``...) are skipped unless they and every folder above them
are owned by root and writable by nobody else, which no file of a normal user (nor anything under
``/tmp``) is. The user settings are always read, from ``$GEMINI_CLI_HOME/.gemini/settings.json``.

So each CLI call gets ``GEMINI_CLI_HOME`` pointing at ``KB_HOME/gemini/cli-home-<id>``, whose
``.gemini/settings.json`` is the user's own settings plus ``general.maxAttempts: 1`` and whose other
entries (credentials, trusted folders, extensions, history...) are symlinks to the user's real
``.gemini``. A user who set ``general.maxAttempts`` keeps it (no overlay); settings that are not plain
JSON (Gemini CLI accepts comments) cannot be merged: the call then runs in the user's home as it is,
and ``CliHome.warning`` says the CLI will retry a 429 on the same key itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowledgebase.config import Settings

OVERLAY = {"general": {"maxAttempts": 1}}


@dataclass(frozen=True)
class CliHome:
    """What to add to the CLI's environment, and why nothing could be added (None when all is well)."""

    env: dict[str, str]
    warning: str | None = None


def user_gemini_dir(environ: Mapping[str, str]) -> Path:
    """The ``.gemini`` folder the CLI would use in ``environ``: under GEMINI_CLI_HOME, else HOME."""
    home = environ.get("GEMINI_CLI_HOME") or environ.get("HOME") or str(Path.home())
    return Path(home).expanduser() / ".gemini"


def cli_home(settings: Settings, environ: Mapping[str, str]) -> CliHome:
    """The environment that makes the CLI give up on the first 429 (see the module's docstring)."""
    source = user_gemini_dir(environ)
    try:
        user_settings = _read_settings(source / "settings.json")
    except ValueError as exc:
        return CliHome({}, f"{exc}: Gemini CLI will retry a 429 on the same key itself instead of moving to another")
    general = user_settings.get("general")
    if isinstance(general, dict) and "maxAttempts" in general:
        return CliHome({})  # the user's own choice
    root = settings.home / "gemini" / f"cli-home-{zlib.crc32(str(source.resolve()).encode()):08x}"
    overlay = root / ".gemini"
    overlay.mkdir(mode=0o700, parents=True, exist_ok=True)
    merged = {**user_settings, "general": {**(general if isinstance(general, dict) else {}), **OVERLAY["general"]}}
    _write_if_changed(overlay / "settings.json", json.dumps(merged, indent=2, ensure_ascii=False) + "\n")
    _link_entries(source, overlay)
    return CliHome({"GEMINI_CLI_HOME": str(root)})


def _read_settings(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {path} ({exc})") from None
    if not text.strip():
        return {}
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not plain JSON (comments?), so it cannot be merged") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return document


def _write_if_changed(path: Path, text: str) -> None:
    with contextlib.suppress(OSError):
        if path.read_text(encoding="utf-8") == text:
            return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the user's secrets
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _link_entries(source: Path, overlay: Path) -> None:
    """Every entry of the user's ``.gemini`` but ``settings.json`` as a symlink in the overlay."""
    try:
        names = [entry.name for entry in os.scandir(source)]
    except OSError:
        return  # no .gemini yet: the CLI starts from scratch in the overlay
    for name in names:
        if name == "settings.json" or name.startswith(".settings.json."):
            continue
        link, target = overlay / name, source / name
        if link.is_symlink():
            if os.readlink(link) == str(target):
                continue
            link.unlink()
        elif link.exists():
            continue  # made by the CLI in an earlier call before the user had one: leave it
        with contextlib.suppress(FileExistsError):  # another call linked it at the same moment
            link.symlink_to(target)
