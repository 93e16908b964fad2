"""Many agents on one server: N simulated Gemini CLI sessions at once, latency, throughput, and nothing lost.

    .venv/bin/python scripts/bench_fleet.py [--agents 8 | --sweep 1,4,8,16,32] [--rounds 20] [--chunks 10000]
        [--database-url URL] [--read-url URL] [--home DIR] [--json]

Each agent is a process of its own (multiprocessing, spawn) running a Gemini CLI session through the
product's own code: the hook handlers (``gemini.hooks.handle_hook``) with the warm process's services
(``gemini.serve.WarmStore``: its pool, opened by ``db.open_database`` from the agent's environment), and
the coordination library. Per agent: SessionStart (task, digest, other agents at work), then per round
(``--rounds``) BeforeAgent (the prompt logged, the context assembled on the store and recorded), a key
acquired from the pool (``keypool.acquire_key``), AfterTool for a shell command with its output (every
fifth one fails), AfterAgent with the turn's response and the usage of its two model calls (read from a
transcript file as Gemini CLI writes it), the key released with the tokens used, and a queued task
claimed, heartbeaten and done (``taskqueue``); SessionEnd at the end. The freshener of the warm process
(re-indexing the agent's checkout) is off: it works on the agent's own files with the agent's CPU
(``scripts/bench_fresh.py``).

The store is one project (``kb-fleet-bench``) of at least ``--chunks`` chunks of real code embedded with
the real model, grown with ``scripts/bench_search.py``'s own builder: this repository, then the Python
sources of packages in this venv (sqlalchemy, networkx, pygments, numpy, ...), vectors kept in
``--vectors`` (shared with bench_search) so a rebuild only pays for the inserts. An existing project
with enough chunks is reused.

Embedding happens in ONE place, this process: it loads the model once and computes, before the agents
start, the vector of every text they will embed (prompts, the logged commands that past-command
retrieval reads, task titles); each agent gets them from a file. So the figures are the server's and
the hook code's, not 32 copies of torch on 2 cores: per prompt the product adds the model's query time
on the agent's machine (docs/BENCHMARKS.md, "embedding"). A text nobody computed (a row an earlier
run or another client logged in the project) gets a stand-in vector; the report counts them.

Connection: ``--database-url`` is the primary as an agent reaches it (a migrated store, the agent
login; say the URL ``kb server init`` prints). Without it, an embedded server in ``--home`` (default a
temporary folder, removed at the end) is started, migrated and used through its agent login.
``--read-url`` is handed to every agent as ``KB_READ_DATABASE_URL`` (reads from a replica, writes to
the primary); it has an effect only once the product routes reads (issue 15), before that it changes
nothing. Checks read the primary.

Printed: per operation p50/p95 (ms) and throughput (ops/s), overall throughput, CPU per turn of the
agents and, for a server on this machine (found from /proc), of the server: its own ceiling on this box
is roughly ``cores x 1000 / server ms`` turns/s, whatever the agents beside it cost. Then the counts that
prove nothing was lost or duplicated: every logged row (each command carries a unique marker) present
exactly once in command_log, command_output, usage_log and context_log; every queued task done exactly
once (status, attempts, history, and the agents' own accounts); no key over its rpm/tpm limit in any
60 s window (its grants in api_key_grants). The keys' limits default to the run's own demand (their
total capacity is exactly the requests made), so an over-grant shows. Exit status 1 if a check fails
or an agent hit an error. ``--sweep`` runs several fleet sizes on the same store and prints a table
and the size where throughput peaks.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleet_agent import PROJECT, FleetPlan, precompute, run_agent
from fleet_checks import check

SPAWN = multiprocessing.get_context("spawn")
REPO = Path(__file__).resolve().parent.parent
OPERATIONS = (
    "SessionStart",
    "BeforeAgent",
    "key acquire",
    "AfterTool",
    "AfterAgent",
    "key release",
    "task claim",
    "task heartbeat",
    "task done",
    "SessionEnd",
)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def primary(url: str | None, home: Path) -> Iterator[str]:
    """The agents' URL: ``url``, or the agent login of an embedded server in ``home`` (migrated here)."""
    if url:
        yield url
        return
    from knowledgebase.db.embedded import ensure_server, running_server, stop_server
    from knowledgebase.db.schema import upgrade

    started = running_server(home / "pgdata") is None
    server = ensure_server(home / "pgdata")
    try:
        upgrade(server.url())
        yield server.agent_url()
    finally:
        if started:
            stop_server(home / "pgdata")


@contextmanager
def kb_servers(home: Path, with_replica: bool) -> Iterator[tuple[str, str | None]]:
    """A `kb server` primary (TLS on a loopback port) in ``home/server`` and, with ``with_replica``, a
    hot standby in ``home/replica``; reused when there. Yields the agents' URL and the replica's."""
    import socket

    from knowledgebase.db.replica import init_replica
    from knowledgebase.db.server import ServerLayout, stop_server
    from knowledgebase.db.server_init import init_server

    def port_of(layout: ServerLayout) -> tuple[str, int]:
        if layout.exists():
            config = layout.config()
            return config.host, config.port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return "127.0.0.1", int(probe.getsockname()[1])

    layouts = [ServerLayout(home / "server")]
    info = init_server(layouts[0], listen=port_of(layouts[0]))
    SUPERVISOR_PID_FILES.append(layouts[0].pid_file)
    read_url = None
    try:
        if with_replica:
            layouts.append(ServerLayout(home / "replica"))
            replica = init_replica(layouts[1], from_url=info.replication_url or "", listen=port_of(layouts[1]))
            SUPERVISOR_PID_FILES.append(layouts[1].pid_file)
            read_url = replica.agent_url
        yield info.agent_url, read_url
    finally:
        for layout in reversed(layouts):
            stop_server(layout)


def build_store(url: str, settings: Any, chunks: int, home: Path, vectors: Path) -> tuple[int, Any]:
    """The benchmark project with at least ``chunks`` chunks (reused when there); (chunks, the model)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_search

    from knowledgebase import store
    from knowledgebase.db import Database
    from knowledgebase.embedding import embedder_from_settings

    embedder = bench_search.CachedEmbedder(embedder_from_settings(settings), vectors)
    tree = home / "corpus"
    with Database(url, max_size=2) as db:
        count = bench_search.chunk_count(db, PROJECT)
        if count < chunks:
            with db.connection() as conn:
                existing = store.find_project(conn, PROJECT)
            if existing is not None and existing.root_path != str(tree.resolve()):
                raise SystemExit(
                    f"bench_fleet: project {PROJECT} has {count} chunks (< {chunks}), built from "
                    f"{existing.root_path}: pass that run's --home, or --chunks {count}"
                )
            tree.mkdir(parents=True, exist_ok=True)
            log(f"growing project {PROJECT} to {chunks} chunks with {embedder.name} ...")
            count = bench_search.grow(db, embedder, bench_search.corpus_files(), tree, chunks, settings, PROJECT)
    return count, embedder.inner


def prepare(url: str, plan: FleetPlan) -> int:
    """The run's keys and queued tasks; tasks of earlier runs left in the queue are cancelled (how many)."""
    from knowledgebase import store
    from knowledgebase.coordination.keypool import add_key
    from knowledgebase.coordination.taskqueue import cancel_task, create_task
    from knowledgebase.db import Database

    with Database(url, max_size=1) as db:
        for name, env_var in zip(plan.key_names(), plan.key_env(), strict=True):
            add_key(
                db,
                name,
                env_var=env_var,
                rpm=plan.key_rpm,
                tpm=plan.key_tpm,
                provider=plan.provider,
                environ=plan.key_env(),
            )
        with db.connection() as conn:
            project_id = store.get_project(conn, PROJECT).id
            stale = [
                t
                for status in ("pending", "running")
                for t in store.list_tasks(conn, status=status, project_id=project_id, limit=100_000)
                if t.id.startswith("fleet-") and (t.status == "pending" or t.lease_expires_at)
            ]
            for task in stale:
                cancel_task(conn, task.id, owner=None, reason="left by an earlier fleet benchmark run")
            for n, task_id in enumerate(plan.task_ids()):
                create_task(conn, task_id, title=plan.task_title(n), project_id=project_id)
    return len(stale)


def run_fleet(url: str, read_url: str | None, plan: FleetPlan, work: Path, cwd: str, embedder: Any) -> dict[str, Any]:
    """One run of ``plan.agents`` agents: their timings, the checks, the throughput."""
    from knowledgebase.db.routing import with_primary_password

    work.mkdir(parents=True, exist_ok=True)
    vectors = work / "vectors.npz"
    embedded = precompute(embedder, plan, cwd, url, vectors)
    cancelled = prepare(url, plan)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "GEMINI_"))}
    ready, start, out = SPAWN.Queue(), SPAWN.Event(), SPAWN.Queue()
    procs = []
    for agent in range(plan.agents):
        env = {
            **base,
            "KB_HOME": str(work / f"agent-{agent:02d}"),
            "KB_DATABASE_URL": url,
            "KB_PROJECT": PROJECT,
            "KB_POOL_SIZE": "2",
            "KB_AGENT_ID": f"fleet-agent-{agent}",
            "KB_FLEET_CWD": cwd,
        }
        if read_url:
            env["KB_READ_DATABASE_URL"] = read_url
        procs.append(SPAWN.Process(target=run_agent, args=(plan, agent, env, str(vectors), ready, start, out)))
    for proc in procs:
        proc.start()
    for _ in procs:
        ready.get(timeout=300)
    load_before = os.getloadavg()[0]
    server_before = server_cpu_seconds(url)
    replica_url = with_primary_password(read_url, url) if read_url else None
    replica_before = server_cpu_seconds(replica_url) if replica_url else None
    fronts_before = front_cpu_seconds()
    began = time.perf_counter()
    start.set()
    reports = _collect(procs, out)
    wall = time.perf_counter() - began
    server_after = server_cpu_seconds(url)
    replica_after = server_cpu_seconds(replica_url) if replica_url else None
    fronts_after = front_cpu_seconds()
    invariants = check(url, plan, reports)
    _retire_keys(url, plan)
    timings: dict[str, list[float]] = defaultdict(list)
    for report in reports:
        for operation, values in report["timings"].items():
            timings[operation] += values
    total = sum(len(v) for v in timings.values())
    turns = plan.agents * plan.rounds
    errors = [e for r in reports for e in r["errors"]] + [f"agent exit code {p.exitcode}" for p in procs if p.exitcode]
    return {
        "agents": plan.agents,
        "rounds": plan.rounds,
        "run": plan.run,
        "read_url": bool(read_url),
        "seconds": round(wall, 2),
        "operations": {op: stats(timings[op], wall) for op in OPERATIONS if timings.get(op)},
        "ops_per_s": round(total / wall, 1),
        "turns_per_s": round(turns / wall, 1),
        "before_agent_with_context": sum(r["contexts"] for r in reports),
        "cpu_ms_per_turn": {
            "agents": round(1000 * sum(r.get("cpu_s", 0.0) for r in reports) / turns, 1),
            "server": None
            if server_before is None or server_after is None
            else round(1000 * (server_after - server_before) / turns, 1),
            "replica": None
            if replica_before is None or replica_after is None
            else round(1000 * (replica_after - replica_before) / turns, 1),
            # the kb server processes beside PostgreSQL: the TLS front and a replica's tunnel (Python)
            **{
                f"tls front ({name})": round(1000 * (fronts_after[name] - fronts_before[name]) / turns, 1)
                for name in fronts_before
                if name in fronts_after
            },
        },
        "vectors_precomputed": embedded,
        "vectors_not_precomputed": sum(len(r["misses"]) for r in reports),
        "not_precomputed_examples": sorted({t for r in reports for t in r["misses"]})[:5],
        "spooled": sum(r["spooled"] for r in reports),
        "stale_tasks_cancelled": cancelled,
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "errors": errors[:20],
        "error_count": len(errors),
        "invariants": invariants,
        "ok": not errors and all(v["ok"] for v in invariants.values()),
    }


def _collect(procs: list[Any], out: Any) -> list[dict[str, Any]]:
    """Every agent's report; an agent that died without one (killed, crashed) is reported as such."""
    import queue

    reports: list[dict[str, Any]] = []
    while len(reports) < len(procs):
        try:
            reports.append(out.get(timeout=5))
        except queue.Empty:
            dead = [p for p in procs if not p.is_alive() and p.exitcode]
            if len(dead) + len(reports) >= len(procs):
                reports += [
                    {
                        "timings": {},
                        "errors": [f"agent died ({p.exitcode})"],
                        "done": [],
                        "grants": 0,
                        "contexts": 0,
                        "spooled": 0,
                        "misses": [],
                    }
                    for p in dead
                ]
                break
    for proc in procs:
        proc.join(timeout=60)
    return reports


SUPERVISOR_PID_FILES: list[Path] = []  # kb server supervisors of this run (kb_servers fills it)


def front_cpu_seconds() -> dict[str, float]:
    """CPU seconds each kb server supervisor (TLS front, tunnel) used so far, by its directory's name."""
    used: dict[str, float] = {}
    for pid_file in SUPERVISOR_PID_FILES:
        try:
            pid = int(pid_file.read_text().split()[0])
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ValueError, IndexError):
            continue
        used[pid_file.parent.name] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return used


def server_cpu_seconds(url: str) -> float | None:
    """CPU seconds the server's processes used so far (its backends that exited included), when it runs
    on this machine; None otherwise. From /proc: the postmaster (parent of this connection's backend)
    with its reaped children, plus the children alive now."""
    from knowledgebase.db import connect

    with connect(url) as conn:  # the backend must be alive while its parent is looked up
        row = conn.execute("SELECT pg_backend_pid(), inet_server_addr()").fetchone()
        backend, address = row if row else (None, None)
        if address is not None and not str(address).startswith(("127.", "::1")):
            return None  # a server elsewhere: its processes are not ours to read
        try:
            postmaster = int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])
            ticks = 0
            for stat in Path("/proc").glob("[0-9]*/stat"):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                if pid == postmaster:
                    ticks += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
                elif int(fields[1]) == postmaster and pid != backend:
                    ticks += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return None
    return ticks / os.sysconf("SC_CLK_TCK")


def stats(values: list[float], wall: float) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))], 1)

    return {
        "n": len(values),
        "p50_ms": at(0.50),
        "p95_ms": at(0.95),
        "max_ms": round(ordered[-1], 1),
        "ops_per_s": round(len(values) / wall, 1),
    }


def _retire_keys(url: str, plan: FleetPlan) -> None:
    """The run's keys are disabled afterwards (keys are never deleted: their usage rows refer to them)."""
    from knowledgebase.coordination.keypool import disable_key
    from knowledgebase.db import Database

    with Database(url, max_size=1) as db:
        for name in plan.key_names():
            disable_key(db, name, reason=f"fleet benchmark run {plan.run} is over")


# ----- output --------------------------------------------------------------------------------------


def print_run(run: dict[str, Any]) -> None:
    print(
        f"\n{run['agents']} agents x {run['rounds']} rounds in {run['seconds']} s"
        f"{' (reads: KB_READ_DATABASE_URL set)' if run['read_url'] else ''}: {run['ops_per_s']} ops/s, "
        f"{run['turns_per_s']} turns/s; load {run['load_average_1m']}"
    )
    print(f"  {'operation':<16}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'ops/s':>9}")
    for op, s in run["operations"].items():
        print(f"  {op:<16}{s['n']:>6}{s['p50_ms']:>9}{s['p95_ms']:>9}{s['max_ms']:>9}{s['ops_per_s']:>9}")
    print(
        f"  BeforeAgent with context: {run['before_agent_with_context']}/{run['agents'] * run['rounds']}; "
        f"vectors not precomputed: {run['vectors_not_precomputed']}; spooled: {run['spooled']}"
    )
    cpu = run["cpu_ms_per_turn"]
    server = "not on this machine" if cpu["server"] is None else f"{cpu['server']} ms"
    extra = "".join(
        f", {name} {ms} ms" for name, ms in cpu.items() if name not in ("agents", "server") and ms is not None
    )
    print(f"  CPU per turn: agents {cpu['agents']} ms, server {server}{extra}")
    for name, counts in run["invariants"].items():
        detail = ", ".join(f"{k} {v}" for k, v in counts.items() if k != "ok")
        print(f"  {'ok ' if counts['ok'] else 'FAIL'} {name}: {detail}")
    for error in run["errors"]:
        print(f"  error: {error}")


def print_sweep(runs: list[dict[str, Any]]) -> None:
    print(
        f"\n{'agents':>6}{'turns/s':>9}{'ops/s':>8}{'BeforeAgent p50/p95':>21}{'AfterTool p50/p95':>19}"
        f"{'claim p95':>10}{'acquire p95':>12}  checks"
    )
    for run in runs:
        ops = run["operations"]
        pair = {op: f"{s['p50_ms']:.0f}/{s['p95_ms']:.0f} ms" for op, s in ops.items()}
        claim, acquire = ops.get("task claim", {}).get("p95_ms", "-"), ops.get("key acquire", {}).get("p95_ms", "-")
        print(
            f"{run['agents']:>6}{run['turns_per_s']:>9}{run['ops_per_s']:>8}{pair.get('BeforeAgent', '-'):>21}"
            f"{pair.get('AfterTool', '-'):>19}{claim:>10}{acquire:>12}  {'ok' if run['ok'] else 'FAILED'}"
        )
    peak = saturation(runs)
    print(f"throughput peaks at {peak['agents']} agents ({peak['turns_per_s']} turns/s); {peak['verdict']}")


def saturation(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Where more agents stop buying throughput: the size with the most turns/s, and what came after it."""
    best = max(runs, key=lambda r: r["turns_per_s"])
    after = [r for r in runs if r["agents"] > best["agents"]]
    if not after:
        verdict = "not saturated within this sweep" if len(runs) > 1 else "one size only"
    else:
        p95 = [r["operations"].get("BeforeAgent", {}).get("p95_ms") for r in (best, after[-1])]
        last = after[-1]
        verdict = f"at {last['agents']} agents: {last['turns_per_s']} turns/s, BeforeAgent p95 {p95[0]} -> {p95[1]} ms"
    return {"agents": best["agents"], "turns_per_s": best["turns_per_s"], "verdict": verdict}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=8, help="agent processes (default 8)")
    parser.add_argument("--sweep", help="several fleet sizes, one run each: 1,4,8,16,32")
    parser.add_argument("--rounds", type=int, default=20, help="turns per agent (default 20)")
    parser.add_argument("--chunks", type=int, default=10_000, help="chunks in the store (default 10000)")
    parser.add_argument("--database-url", help="the primary, as the agents reach it (default: embedded in --home)")
    parser.add_argument(
        "--read-url",
        help="set as KB_READ_DATABASE_URL for the agents (a replica: their searches and context read there)",
    )
    parser.add_argument(
        "--kb-server",
        action="store_true",
        help="run against a `kb server` primary (TLS + SCRAM on a loopback port) made in --home/server",
    )
    parser.add_argument(
        "--replica",
        action="store_true",
        help="with --kb-server: also a hot standby (--home/replica), the agents' KB_READ_DATABASE_URL",
    )
    parser.add_argument("--home", type=Path, help="embedded server, corpus and agent homes (default: temporary)")
    parser.add_argument("--vectors", type=Path, help="kept chunk vectors (default: bench_search's cache)")
    parser.add_argument("--keys", type=int, default=4, help="keys in the run's pool (default 4)")
    parser.add_argument("--key-rpm", type=int, help="each key's rpm limit (default: the run's requests / keys)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sweep.split(",")] if args.sweep else [args.agents]
    if min(sizes) < 1 or args.rounds < 1 or args.keys < 1:
        parser.error("--agents, --sweep sizes, --rounds and --keys must be at least 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_search import DEFAULT_HOME, queries

    from knowledgebase.config import Settings

    home = (args.home or Path(tempfile.mkdtemp(prefix="kb-bench-fleet-"))).resolve()
    runs: list[dict[str, Any]] = []
    try:
        with ExitStack() as servers:
            if args.kb_server:
                url, read_url = servers.enter_context(kb_servers(home, args.replica))
                args.read_url = args.read_url or read_url
            else:
                url = servers.enter_context(primary(args.database_url, home))
            settings = Settings.from_env({**os.environ, "KB_HOME": str(home), "KB_DATABASE_URL": url})
            chunks, embedder = build_store(
                url, settings, args.chunks, home, args.vectors or DEFAULT_HOME / "vectors.npz"
            )
            log(f"store: {chunks} chunks in project {PROJECT}")
            # the package's own docstrings: REPO itself holds .venv, whose parse alone takes minutes
            questions = tuple(queries(REPO / "knowledgebase", 400))
            for n in sizes:
                rpm = args.key_rpm or math.ceil(n * args.rounds / args.keys)
                plan = FleetPlan(uuid.uuid4().hex[:8], n, args.rounds, args.keys, rpm, questions)
                log(f"{n} agents x {args.rounds} rounds (run {plan.run}) ...")
                runs.append(
                    run_fleet(url, args.read_url, plan, home / "runs" / plan.run, str(home / "corpus"), embedder)
                )
    finally:
        if args.home is None:
            shutil.rmtree(home, ignore_errors=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "store": {
            "project": PROJECT,
            "chunks": chunks,
            "database": "kb server" if args.kb_server else "given" if args.database_url else "embedded",
        },
        "runs": runs,
        "saturation": saturation(runs),
        "ok": all(r["ok"] for r in runs),
    }
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"store: {chunks} chunks; machine: {os.cpu_count()} CPUs, {platform.platform()}")
        for run in runs:
            print_run(run)
        if len(runs) > 1:
            print_sweep(runs)
        print("\nall checks pass" if report["ok"] else "\nCHECKS FAILED")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
