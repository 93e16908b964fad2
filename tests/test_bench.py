"""scripts/bench.py: runs benchmarks as processes, reports failures as failures, writes one Markdown report;
scripts/bench_fleet.py: a tiny fleet whose counts prove nothing was lost."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
INFO = {"date": "2026-01-01 00:00 UTC", "CPU": "test CPU"}


@pytest.fixture
def bench() -> Iterator[ModuleType]:
    """scripts/bench.py as a module (it imports its sibling bench_report)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("bench")
    finally:
        sys.path.remove(str(SCRIPTS))


def _script(folder: Path, name: str, body: str) -> str:
    (folder / name).write_text("import json, sys, time\n" + body)
    return name


def _benchmark(bench: ModuleType, name: str, script: str) -> object:
    b = bench.BENCHMARKS[0]
    return bench.Benchmark(name, f"the {name} one", script, "What it does.", "", "", b.render, b.headline)


def test_failures_timeouts_and_bad_output_are_reported_not_hidden(
    bench: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench, "SCRIPTS", tmp_path)
    crash = _script(tmp_path, "crash.py", "print('loading the corpus', file=sys.stderr)\nsys.exit(3)\n")
    hang = _script(tmp_path, "hang.py", "time.sleep(120)\n")
    noise = _script(tmp_path, "noise.py", "print('done, no JSON here')\n")
    odd = _script(tmp_path, "odd.py", "print('log line'); print(json.dumps({'unexpected': 1}))\n")
    work = tmp_path / "work"
    started = time.monotonic()
    outcomes = [
        bench.run_benchmark(_benchmark(bench, name, script), quick=True, timeout=3, work=work)
        for name, script in (("crash", crash), ("hang", hang), ("noise", noise), ("odd", odd))
    ]
    assert time.monotonic() - started < 60  # the hanging one was stopped at its timeout
    crashed, hung, noisy, odd_one = outcomes
    assert (crashed.ok, crashed.error, crashed.log_tail) == (False, "exit code 3", ["loading the corpus"])
    assert hung.error == "timed out after 3 s"
    assert noisy.error == "unreadable output: no JSON object on stdout"
    assert odd_one.ok and odd_one.data == {"unexpected": 1}
    assert (work / "logs" / "crash.log").read_text() == "loading the corpus\n"

    text = bench.bench_report.report(outcomes, INFO, names=["crash", "hang"], pending=["later"], quick=False,
                                     complete=False, invocation="scripts/bench.py --only x")  # fmt: skip
    assert "| crash | `scripts/crash.py` | **failed**: exit code 3 |" in text
    assert "| hang | `scripts/hang.py` | **failed**: timed out after 3 s |" in text
    assert "| later |  | not run (still running, or the run was interrupted) |" in text
    assert "**Failed: exit code 3.** The end of its log:\n\n```\nloading the corpus\n```" in text
    assert "The JSON has a shape this report does not know: KeyError" in text
    assert '"unexpected": 1' in text  # the raw JSON is always there
    assert "> **Partial run**" in text and "| CPU | test CPU |" in text


def test_json_is_read_past_log_lines_and_unknown_names_are_refused(bench: ModuleType) -> None:
    assert bench.parse_json('progress 1/2\n{"a": {"b": 2}}\ntrailing note\n') == {"a": {"b": 2}}
    with pytest.raises(ValueError, match="Expecting"):
        bench.parse_json('{"cut": ')
    assert [b.name for b in bench.select(["search,hooks", "ingest"])] == ["ingest", "search", "hooks"]
    assert len(bench.select(None)) == len(bench.BENCHMARKS) >= 6
    with pytest.raises(SystemExit, match="unknown benchmark nope; choose from coordination, embedding"):
        bench.select(["nope"])


@pytest.mark.slow
def test_a_quick_run_of_one_benchmark_writes_the_report(tmp_path: Path) -> None:
    report = tmp_path / "BENCHMARKS.md"
    command = [sys.executable, str(SCRIPTS / "bench.py"), "--quick", "--only", "coordination", "--output", str(report),
               "--workdir", str(tmp_path / "work")]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    text = report.read_text()
    assert text.startswith("# Benchmarks\n\n> **Quick run**")
    for expected in (
        *("| CPU |", "| memory |", "| OS |", "| Python |", "| date |", "| torch (Python) |"),
        *("| PostgreSQL server | 1", "| pgvector extension | 0."),
        "| coordination | `scripts/bench_coordination.py` | ok |",
        "| commands logged with their outcome | 100 |",
        "<summary>raw JSON</summary>",
    ):
        assert expected in text, expected
    assert (tmp_path / "work" / "logs" / "coordination.log").exists()


@pytest.mark.slow
def test_a_tiny_fleet_run_reports_counts_that_hold_and_its_checks_catch_what_breaks_them(
    agent_db_url: str, tmp_path: Path
) -> None:
    command = [sys.executable, str(SCRIPTS / "bench_fleet.py"), "--agents", "2", "--rounds", "3", "--chunks", "200",
               "--keys", "2", "--database-url", agent_db_url, "--home", str(tmp_path / "home"),
               "--vectors", str(tmp_path / "vectors.npz"), "--json"]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["ok"] and report["store"]["chunks"] >= 200
    (run,) = report["runs"]
    assert (run["agents"], run["error_count"], run["spooled"], run["vectors_not_precomputed"]) == (2, 0, 0, 0)
    assert {op: s["n"] for op, s in run["operations"].items()} == {
        **{op: 6 for op in ("BeforeAgent", "AfterTool", "AfterAgent", "key acquire", "key release")},
        **{op: 6 for op in ("task claim", "task heartbeat", "task done")},
        "SessionStart": 2,
        "SessionEnd": 2,
    }
    assert run["cpu_ms_per_turn"]["agents"] > 0 and run["cpu_ms_per_turn"]["server"] > 0  # a server on this machine
    checks = run["invariants"]
    assert all(c["ok"] for c in checks.values()), checks
    assert checks["command_log shell commands (AfterTool)"] == {
        "expected": 6, "rows": 6, "missing": 0, "duplicated_or_unexpected": 0, "ok": True}  # fmt: skip
    assert checks["usage_log (AfterAgent usage)"]["rows"] == 12  # two model calls per turn
    assert checks["tasks done exactly once"]["done_once_in_history"] == 6
    keys = checks["keys within limits in every 60 s window"]
    # 6 requests on 2 keys of 3 requests a minute: the pool filled both to their limit, and no further
    assert (keys["grants"], keys["rpm_limit"], keys["max_requests_in_a_window"]) == (6, 3, 3)

    sys.path.insert(0, str(SCRIPTS))
    try:
        fleet_agent, fleet_checks = importlib.import_module("fleet_agent"), importlib.import_module("fleet_checks")
    finally:
        sys.path.remove(str(SCRIPTS))
    plan = fleet_agent.FleetPlan(run["run"], 2, 3, 2, 3, ("unused",))
    reports = [{"done": plan.task_ids(), "grants": 6}]
    assert all(c["ok"] for c in fleet_checks.check(agent_db_url, plan, reports).values())
    longer = fleet_checks.check(agent_db_url, fleet_agent.FleetPlan(run["run"], 2, 4, 2, 3, ("unused",)), reports)
    assert longer["command_log prompts (BeforeAgent)"]["missing"] == 2  # the rounds nobody ran

    from knowledgebase import store
    from knowledgebase.coordination.audit import log_command
    from knowledgebase.db import Database

    with Database(agent_db_url, max_size=1) as db:
        marker_of_a_run_turn = {"command": plan.command(1, 2), "stdout": plan.output(1, 2)}
        log_command(db, session_id=plan.session_id(1), return_code=0, **marker_of_a_run_turn)
        with db.connection() as conn:  # a grant the pool never made: the key is over its limit
            key = store.get_api_key(conn, plan.key_names()[0])
            store.insert_grant(conn, key.id, datetime.now(UTC), 100)
    broken = fleet_checks.check(agent_db_url, plan, reports)
    assert broken["command_log shell commands (AfterTool)"]["duplicated_or_unexpected"] == 1
    assert broken["command_output (AfterTool outputs)"]["duplicated_or_unexpected"] == 1
    keys = broken["keys within limits in every 60 s window"]
    assert (keys["ok"], keys["grants"], keys["max_requests_in_a_window"]) == (False, 7, 4)
    assert broken["command_log prompts (BeforeAgent)"]["ok"] and broken["tasks done exactly once"]["ok"]
