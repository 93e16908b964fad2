"""Project-relative paths (``src/app/main.py``, always with ``/``)."""

from __future__ import annotations

import posixpath


def directory_of(path: str, depth: int = 1) -> str:
    """The first ``depth`` folders of a project-relative path (``.`` for a file at the root)."""
    folder = posixpath.dirname(path)
    return "/".join(folder.split("/")[:depth]) if folder else "."
