"""scripts/bench.py: runs benchmarks as processes, reports failures as failures, writes one Markdown report."""

from __future__ import annotations

import importlib
import subprocess
import sys
import time
from collections.abc import Iterator
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
