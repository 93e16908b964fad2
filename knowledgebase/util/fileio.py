"""Reading an open file descriptor with bounds: at most so many bytes, and (optionally) by a deadline."""

from __future__ import annotations

import errno
import os
import time

CHUNK_BYTES = 1 << 20


def read_at_most(fd: int, limit: int, *, deadline: float | None = None, name: str = "") -> bytes:
    """Up to ``limit`` bytes from ``fd`` (less at end of file); OSError(ETIMEDOUT) once ``deadline`` (a
    ``time.monotonic()`` value) has passed between two reads."""
    parts: list[bytes] = []
    remaining = limit
    while remaining > 0:
        part = os.read(fd, min(remaining, CHUNK_BYTES))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
        if deadline is not None and time.monotonic() > deadline:
            raise OSError(errno.ETIMEDOUT, "not read in time", name)
    return b"".join(parts)
