"""Coordination under real concurrency: several processes claim tasks, acquire keys and write the log."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest

from knowledgebase.coordination import keypool, taskqueue
from knowledgebase.db import Database
from tests import coordination_workers as workers

pytestmark = pytest.mark.slow
SPAWN = multiprocessing.get_context("spawn")
ENV = {"KB_TEST_KEY_A": "key-a-value-for-tests", "KB_TEST_KEY_B": "key-b-value-for-tests"}


def _run_all(target: Any, arg_lists: list[tuple[Any, ...]], timeout: float = 120) -> list[Any]:
    """Start one process per argument tuple, release them together once every one is ready (a loaded
    machine may take seconds to spawn the last), and return what each put in the queue."""
    start, results = SPAWN.Barrier(len(arg_lists) + 1, timeout=timeout), SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, start, results)) for args in arg_lists]
    for proc in procs:
        proc.start()
    start.wait()
    outcomes = [results.get(timeout=timeout) for _ in procs]
    for proc in procs:
        proc.join(timeout=30)
        assert proc.exitcode == 0
    return outcomes


def test_every_task_is_claimed_exactly_once_while_leases_hold(db: Database) -> None:
    for i in range(60):
        taskqueue.create_task(db, f"T-{i:03d}", priority=i % 3)
    outcomes = _run_all(workers.hold_claims, [(db.url, f"claimer-{n}", 600) for n in range(6)])
    claimed = [task_id for _, ids in outcomes for task_id in ids]
    assert len(claimed) == 60 and len(set(claimed)) == 60
    assert sum(1 for _, ids in outcomes if ids) >= 2  # they really competed
    with db.connection() as conn:
        rows = conn.execute("SELECT id, owner, attempts, status FROM tasks").fetchall()
    owner_of = {task_id: owner for owner, ids in outcomes for task_id in ids}
    assert all(status == "running" and attempts == 1 and owner_of[i] == owner for i, owner, attempts, status in rows)


def test_a_killed_claimers_task_returns_when_its_lease_expires(db: Database) -> None:
    taskqueue.create_task(db, "T-1")
    results = SPAWN.Queue()
    proc = SPAWN.Process(target=workers.claim_one_and_hang, args=(db.url, "doomed", 2.0, results))
    proc.start()
    assert results.get(timeout=60) == "T-1"
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(timeout=30)
    assert proc.exitcode == -signal.SIGKILL
    held = taskqueue.get_task(db, "T-1")
    assert held.owner == "doomed" and held.lease_expires_at is not None
    assert taskqueue.claim_next_task(db, owner="survivor", lease_seconds=60) is None  # the lease still holds
    deadline = time.monotonic() + 30
    task = None
    while task is None and time.monotonic() < deadline:
        time.sleep(0.2)
        task = taskqueue.claim_next_task(db, owner="survivor", lease_seconds=60)
    assert task is not None and task.id == "T-1" and task.owner == "survivor" and task.attempts == 2
    assert task.started_at is not None and task.updated_at >= held.lease_expires_at


def _max_in_any_minute(times: list[datetime]) -> int:
    times = sorted(times)
    return max(
        (sum(1 for t in times[i:] if t < start + timedelta(seconds=60)) for i, start in enumerate(times)), default=0
    )


def test_processes_acquiring_keys_never_exceed_the_rpm_limit(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", rpm=5, environ=ENV)
    keypool.add_key(db, "b", env_var="KB_TEST_KEY_B", rpm=5, environ=ENV)
    outcomes = _run_all(workers.acquire_many, [(db.url, 4, 5.0, ENV) for _ in range(6)])
    granted = [o for worker in outcomes for o in worker if o is not None]
    assert Counter(name for name, _ in granted) == {"a": 5, "b": 5}  # all capacity used, never more
    assert sum(o is None for worker in outcomes for o in worker) == 24 - 10
    with db.connection() as conn:
        rows = conn.execute("SELECT k.name, g.granted_at FROM api_key_grants g JOIN api_keys k ON k.id = g.api_key_id")
        by_key: dict[str, list[datetime]] = {}
        for name, granted_at in rows.fetchall():
            by_key.setdefault(name, []).append(granted_at)
    assert {name: _max_in_any_minute(times) for name, times in by_key.items()} == {"a": 5, "b": 5}


def test_waiting_acquirers_fill_the_window_as_it_slides_and_never_overfill_it(db: Database) -> None:
    key = keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", rpm=5, environ=ENV)
    with db.connection() as conn:  # three requests made 58.5 seconds ago: they leave the window in 1.5 s
        conn.execute(
            "INSERT INTO api_key_grants (api_key_id, granted_at, tokens) "
            "SELECT %s, clock_timestamp() - interval '58.5 seconds', 10 FROM generate_series(1, 3)",
            (key.id,),
        )
    outcomes = _run_all(workers.acquire_many, [(db.url, 2, 10.0, ENV) for _ in range(5)])
    granted = [o for worker in outcomes for o in worker if o is not None]
    assert len(granted) == 5  # 2 at once, 3 more once the old ones slid out of the window
    with db.connection() as conn:
        times = [row[0] for row in conn.execute("SELECT granted_at FROM api_key_grants").fetchall()]
    assert len(times) == 8 and _max_in_any_minute(times) == 5


def test_logging_from_many_processes_loses_no_row(db: Database) -> None:
    outcomes = _run_all(workers.log_many, [(db.url, w, 150) for w in range(6)])
    assert sum(outcomes) == 900
    with psycopg.connect(db.url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM command_log), (SELECT count(*) FROM command_output), "
            "(SELECT count(DISTINCT stdout) FROM command_output), (SELECT count(*) FROM tasks)"
        ).fetchone()
        assert counts == (900, 900, 900, 6)
        per_task = conn.execute("SELECT task_id, count(*) FROM command_log GROUP BY task_id").fetchall()
        assert sorted(per_task) == [(f"W-{w}", 150) for w in range(6)]
