"""Folders and logs only their owner can read: KB_HOME and what the package writes in it.

Standard library only (the hook process uses it). Folders this module creates are 0700, files 0600;
an existing log of ours that others could read is tightened when it is next opened.
"""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO


def make_private_dir(path: str | os.PathLike[str]) -> None:
    """Create ``path`` and any missing parent, each new folder with mode 0700 (existing ones are kept)."""
    missing: list[str] = []
    current = os.path.abspath(path)
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it at the same moment
            os.mkdir(folder, 0o700)


def open_private_log(path: str | os.PathLike[str]) -> BinaryIO:
    """``path`` opened for appending, created 0600 in a 0700 folder; made 0600 if it was readable by others."""
    make_private_dir(os.path.dirname(os.path.abspath(path)))
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        info = os.fstat(fd)
        if info.st_mode & 0o077 and info.st_uid == os.geteuid():
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "ab")


def write_private_file(
    path: str | os.PathLike[str], data: str | bytes, *, owner: tuple[int, int] | None = None
) -> None:
    """Write ``data`` to ``path``, created (or truncated) with mode 0600 from the start, in a 0700 folder
    when this makes it; ``owner``: uid and gid to give it (a server's system user, as root)."""
    make_private_dir(os.path.dirname(os.path.abspath(path)))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data.encode() if isinstance(data, str) else data)
    if owner is not None:
        os.chown(path, *owner)
