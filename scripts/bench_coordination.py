#!/usr/bin/env python
"""Throughput of the coordination layer with several processes at once.

    .venv/bin/python scripts/bench_coordination.py [--processes 8] [--json]

Measures, with N worker processes started together (each with its own connection):
- audit logging: commands with their outcome (``log_command``: one command_log and one command_output
  row, redacted, in one transaction) per second;
- task claims: ``claim_next_task`` per second (each claimer keeps its leases), and full
  claim + complete cycles per second;
- key acquisitions: ``acquire_key`` + ``release`` per second over a pool of 4 keys, and on a single key
  (every process contends for the same row lock).

Runs against a scratch database that is dropped at the end: on a private embedded PostgreSQL started
in a temporary folder (default), or on the server of ``--admin-url`` (a URL with the right to create
databases).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

from knowledgebase.coordination.audit import log_command
from knowledgebase.coordination.keypool import acquire_key, add_key, release
from knowledgebase.coordination.taskqueue import claim_next_task, complete_task, create_task
from knowledgebase.db import Database
from knowledgebase.db.schema import upgrade

SPAWN = multiprocessing.get_context("spawn")
SCRATCH_DB = "kb_bench_coordination"
KEY_ENV = {f"KB_BENCH_KEY_{i}": f"bench-key-{i}-value" for i in range(4)}


# ----- workers (top level so that spawn can import them) ------------------------------------------


def _log_worker(url: str, worker: int, count: int, ready: Any, start: Any, done: Any) -> None:
    with Database(url, max_size=1) as db:
        ready.put(worker)
        start.wait()
        for i in range(count):
            log_command(
                db,
                command=f"pytest -k case_{i}",
                task_id=f"bench-{worker}",
                stdout="." * 200 + "\n",
                stderr="",
                return_code=0,
                duration_ms=1200,
                agent_id=f"bench-{worker}",
            )
    done.put(count)


def _claim_worker(url: str, worker: int, complete: bool, ready: Any, start: Any, done: Any) -> None:
    claimed = 0
    with Database(url, max_size=1) as db:
        ready.put(worker)
        start.wait()
        owner = f"claimer-{worker}"
        while (task := claim_next_task(db, owner=owner, lease_seconds=600)) is not None:
            if complete:
                complete_task(db, task.id, owner=owner, result="ok")
            claimed += 1
    done.put(claimed)


def _key_worker(url: str, worker: int, count: int, ready: Any, start: Any, done: Any) -> None:
    with Database(url, max_size=1) as db:
        ready.put(worker)
        start.wait()
        for _ in range(count):
            lease = acquire_key(db, 1000, timeout=30, environ=KEY_ENV)
            release(db, lease, tokens_used=800)
    done.put(count)


def _timed(target: Callable[..., None], args_per_worker: list[tuple[Any, ...]]) -> tuple[int, float]:
    """Run one process per args tuple, released together; (operations done, seconds)."""
    ready, start, done = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, ready, start, done)) for args in args_per_worker]
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=120)
    began = time.perf_counter()
    start.set()
    total = sum(done.get(timeout=600) for _ in procs)
    elapsed = time.perf_counter() - began
    for proc in procs:
        proc.join(timeout=60)
        if proc.exitcode != 0:
            raise SystemExit(f"a worker failed (exit code {proc.exitcode})")
    return total, elapsed


# ----- the scratch database --------------------------------------------------------------------------


@contextmanager
def scratch_database(admin_url: str | None) -> Iterator[str]:
    """A migrated scratch database (dropped afterwards) on the given server or a private embedded one."""
    home: Path | None = None
    if admin_url is None:
        from knowledgebase.db.embedded import ensure_server

        home = Path(tempfile.mkdtemp(prefix="kb-bench-"))
        admin_url = ensure_server(home / "pgdata").url("postgres")
    url = urlunsplit(urlsplit(admin_url)._replace(path="/" + SCRATCH_DB))
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH_DB)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH_DB)))
        upgrade(url)
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH_DB)))
        if home is not None:
            from knowledgebase.db.embedded import stop_server

            stop_server(home / "pgdata")
            shutil.rmtree(home, ignore_errors=True)


def _reset(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE tasks, api_keys, api_key_grants, command_log, command_output, usage_log CASCADE")


# ----- benchmarks ------------------------------------------------------------------------------------


def bench_audit(url: str, processes: int, per_process: int) -> dict[str, float]:
    _reset(url)
    entries, seconds = _timed(_log_worker, [(url, w, per_process) for w in range(processes)])
    return {
        "entries": entries,
        "seconds": round(seconds, 3),
        "entries_per_s": round(entries / seconds, 1),
        "rows_per_s": round(2 * entries / seconds, 1),
    }


def bench_claims(url: str, processes: int, tasks: int, complete: bool) -> dict[str, float]:
    _reset(url)
    with Database(url, max_size=1) as db, db.connection() as conn:
        for i in range(tasks):
            create_task(conn, f"bench-task-{i:06d}", priority=i % 5)
    claimed, seconds = _timed(_claim_worker, [(url, w, complete) for w in range(processes)])
    if claimed != tasks:
        raise SystemExit(f"claimed {claimed} of {tasks} tasks")
    return {"tasks": tasks, "seconds": round(seconds, 3), "per_s": round(tasks / seconds, 1)}


def bench_keys(url: str, processes: int, per_process: int, keys: int) -> dict[str, float]:
    _reset(url)
    with Database(url, max_size=1) as db:
        for name in list(KEY_ENV)[:keys]:
            add_key(db, name.lower(), env_var=name, rpm=1_000_000, tpm=2_000_000_000, rpd=100_000_000, environ=KEY_ENV)
    done, seconds = _timed(_key_worker, [(url, w, per_process) for w in range(processes)])
    return {"keys": keys, "acquisitions": done, "seconds": round(seconds, 3), "per_s": round(done / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--log-entries", type=int, default=500, help="log entries per process")
    parser.add_argument("--tasks", type=int, default=4000, help="tasks to claim in total")
    parser.add_argument("--acquisitions", type=int, default=250, help="key acquisitions per process")
    parser.add_argument("--admin-url", help="server to create the scratch database on (default: private embedded)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    with scratch_database(args.admin_url) as url:
        results = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "processes": args.processes},
            "audit_logging": bench_audit(url, args.processes, args.log_entries),
            "task_claims": bench_claims(url, args.processes, args.tasks, complete=False),
            "task_claim_complete_cycles": bench_claims(url, args.processes, args.tasks, complete=True),
            "key_acquisitions_4_keys": bench_keys(url, args.processes, args.acquisitions, keys=4),
            "key_acquisitions_1_key": bench_keys(url, args.processes, args.acquisitions, keys=1),
        }
    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    p = args.processes
    print(f"{p} processes on {results['machine']['cpus']} CPUs")
    audit = results["audit_logging"]
    print(f"audit logging:      {audit['entries_per_s']:>8} entries/s ({audit['rows_per_s']} rows/s)")
    print(f"task claims:        {results['task_claims']['per_s']:>8} claims/s")
    print(f"claim + complete:   {results['task_claim_complete_cycles']['per_s']:>8} cycles/s")
    print(f"key acquisitions:   {results['key_acquisitions_4_keys']['per_s']:>8} /s over 4 keys (acquire + release)")
    print(f"                    {results['key_acquisitions_1_key']['per_s']:>8} /s on 1 key")


if __name__ == "__main__":
    main()
