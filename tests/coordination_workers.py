"""Worker functions for the multi-process coordination tests (top level, so `spawn` can import them)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from knowledgebase.coordination.audit import log_command
from knowledgebase.coordination.keypool import acquire_key
from knowledgebase.coordination.taskqueue import claim_next_task
from knowledgebase.db import Database
from knowledgebase.errors import CapacityExhausted


def hold_claims(url: str, owner: str, lease_seconds: float, start: Any, results: Any) -> None:
    """Claim tasks until none is ready, keeping every lease (nothing is completed)."""
    claimed: list[str] = []
    with Database(url, max_size=1) as db:
        with db.connection() as conn:  # connected before the start, so every claimer competes
            conn.execute("SELECT 1")
        start.wait()
        while (task := claim_next_task(db, owner=owner, lease_seconds=lease_seconds)) is not None:
            claimed.append(task.id)
    results.put((owner, claimed))


def claim_one_and_hang(url: str, owner: str, lease_seconds: float, results: Any) -> None:
    """Claim one task, say which, then hang until killed."""
    with Database(url, max_size=1) as db:
        task = claim_next_task(db, owner=owner, lease_seconds=lease_seconds)
        results.put(task.id if task else None)
        time.sleep(600)


def acquire_many(url: str, count: int, timeout: float, environ: Mapping[str, str], start: Any, results: Any) -> None:
    """Try ``count`` acquisitions; report (key name, granted_at) or None for each refusal."""
    start.wait()
    outcomes: list[tuple[str, str] | None] = []
    with Database(url, max_size=1) as db:
        for _ in range(count):
            try:
                lease = acquire_key(db, 10, timeout=timeout, environ=environ)
                outcomes.append((lease.name, lease.granted_at.isoformat()))
            except CapacityExhausted:
                outcomes.append(None)
    results.put(outcomes)


def log_many(url: str, worker: int, count: int, start: Any, results: Any) -> None:
    """Log ``count`` commands with their outcomes under the task W-<worker>."""
    start.wait()
    with Database(url, max_size=1) as db:
        for i in range(count):
            log_command(
                db,
                command=f"echo {worker}-{i}",
                task_id=f"W-{worker}",
                stdout=f"{worker}-{i}\n",
                return_code=0,
                agent_id=f"worker-{worker}",
            )
    results.put(count)
