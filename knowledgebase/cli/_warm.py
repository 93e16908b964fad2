"""Asking the warm process (``kb serve``) to run a search or build a context for this command.

A new ``kb search`` or ``kb context`` process would otherwise import psycopg, numpy and an embedding
runtime and load the model for one query. When the warm process of this store listens, the command
sends it its arguments and prints the answer; when none listens, the command does the work itself and
starts one in the background as it exits, so the next command finds it warm. Any failure here (a warm
process of an older version, an error it reports) also falls back to doing the work in this process,
which reports its own errors the usual way. ``KB_WARM=off`` skips all of this.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

WARM_TIMEOUT_S = 30.0  # a warm process that was just started may still be loading its model


def ask_warm_process(op: str, args: dict[str, Any], database_url: str | None) -> dict[str, Any] | None:
    """The warm process's answer to ``op`` (search, context) with ``args``, or None (do it here)."""
    from knowledgebase.gemini.warm_protocol import (
        PROTOCOL,
        HookFailure,
        exchange,
        server_address,
        start_server_at_exit,
        try_connect,
        warm_enabled,
    )

    env = dict(os.environ)
    if database_url:
        env["KB_DATABASE_URL"] = database_url
    if not warm_enabled(env):
        return None
    try:
        sock = try_connect(server_address(env))
        if sock is None:
            start_server_at_exit(env)
            return None
        answer = exchange(
            sock, {"op": op, "protocol": PROTOCOL}, json.dumps(args).encode(), time.monotonic() + WARM_TIMEOUT_S
        )
    except HookFailure:  # e.g. a socket this user does not own: never used; the command works on its own
        return None
    return answer if answer.get("ok") else None
