"""What a person at the terminal waits for: `kb search` and `kb context` as new processes, and the default
embedding backend's indexing rate against torch's.

    .venv/bin/python scripts/bench_cli.py [--runs 15] [--home DIR] [--json]

Builds (once, then reuses) a store under ``--home`` (default ``build/bench/cli``) holding this repository's
``knowledgebase/`` package, indexed with the default backend, then times each command from spawning the
process to its exit, from a directory inside the project (as a user types it):

- **warm**: the warm process (``kb serve``) runs and answers (``--runs`` times each);
- **cold**: no warm process; the command embeds the query itself with the fastest-starting backend
  (``KB_EMBED_BACKEND=auto``: ONNX Runtime), then starts the warm process as it exits, which is stopped
  again before the next run;
- **torch, in-process** (the path before issue 17: ``KB_EMBED_BACKEND=torch KB_WARM=off``), a few runs.

Targets (issue 17): warm p50 <= 300 ms, cold p50 <= 1.5 s. Then the indexing rate: chunks per second of
the backend ``auto`` picks for indexing against torch, on the same 256 real chunks, best of 3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
KB = [sys.executable, "-m", "knowledgebase"]
QUERIES = [
    "where is the socket address of the warm process chosen",
    "how are secrets redacted before they are stored",
    "which backend embeds when KB_EMBED_BACKEND is auto",
    "how does a task lease expire",
]
TARGET_WARM_MS = 300.0
TARGET_COLD_MS = 1500.0


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env |= {"KB_HOME": str(home), "HF_HUB_OFFLINE": "1", "KB_WARM": "on"}
    return env | extra


def _run(env: dict[str, str], *args: str) -> float:
    """Seconds from spawning ``kb ARGS`` to its exit (which must be 0)."""
    started = time.perf_counter()
    proc = subprocess.run([*KB, *args], env=env, cwd=REPO / "knowledgebase", capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"kb {' '.join(args)} failed: {proc.stderr.strip()}")
    return elapsed


def _stop_warm(env: dict[str, str]) -> None:
    subprocess.run([*KB, "serve", "--stop"], env=env, capture_output=True)


def _wait_warm(env: dict[str, str]) -> None:
    """Until the warm process answers with its model loaded."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        proc = subprocess.run([*KB, "serve", "--status", "--json"], env=env, capture_output=True, text=True)
        if proc.returncode == 0 and proc.stdout.strip():
            status = json.loads(proc.stdout)
            if status and status.get("model_ready"):
                return
        time.sleep(0.5)
    raise SystemExit("the warm process did not come up")


def _summary(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return {"runs": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(p95, 1)}


def time_commands(home: Path, runs: int) -> dict[str, Any]:
    env = _env(home)
    results: dict[str, Any] = {}
    for command in ("search", "context"):
        extra = ["--limit", "5"] if command == "search" else ["--no-record"]
        cold: list[float] = []
        for i in range(max(3, runs // 3)):
            _stop_warm(env)
            cold.append(_run(env, command, QUERIES[i % len(QUERIES)], *extra))
        _stop_warm(env)
        subprocess.Popen([*KB, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_warm(env)
        warm = [_run(env, command, QUERIES[i % len(QUERIES)], *extra) for i in range(runs)]
        _stop_warm(env)
        torch_env = _env(home, KB_EMBED_BACKEND="torch", KB_WARM="off")
        old = [_run(torch_env, command, QUERIES[i % len(QUERIES)], *extra) for i in range(3)]
        results[command] = {"warm": _summary(warm), "cold": _summary(cold), "torch_in_process": _summary(old)}
    return results


def index_rates(home: Path) -> dict[str, Any]:
    from knowledgebase.config import Settings
    from knowledgebase.db import open_database
    from knowledgebase.embedding import SentenceTransformerEmbedder, choose_backend, embedder_from_settings
    from knowledgebase.index.chunking import embedding_text

    settings = Settings.from_env(_env(home))
    with open_database(settings) as db, db.connection() as conn:
        rows = conn.execute(
            "SELECT f.path, c.symbol, c.content FROM file_chunks c JOIN project_files f ON f.id = c.file_id"
            " ORDER BY c.token_count DESC LIMIT 256"
        ).fetchall()
    texts = [embedding_text(path, symbol, content) for path, symbol, content in rows]
    rates: dict[str, Any] = {}
    default = embedder_from_settings(settings)
    for label, embedder in (("default", default), ("torch", SentenceTransformerEmbedder(settings.embed_model))):
        embedder.embed_documents(texts[:8])  # load and warm up
        best = min(_timed(embedder.embed_documents, texts) for _ in range(3))
        rates[label] = {"backend": str(getattr(embedder, "runs_on", "")), "chunks_per_s": round(len(texts) / best, 1)}
    rates["default"]["chosen"] = choose_backend(settings, "index").reason
    rates["speedup"] = round(rates["default"]["chunks_per_s"] / rates["torch"]["chunks_per_s"], 2)
    return rates


def _timed(fn: Any, texts: list[str]) -> float:
    started = time.perf_counter()
    fn(texts)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="warm runs per command (cold: a third, at least 3)")
    parser.add_argument("--home", type=Path, default=REPO / "build" / "bench" / "cli", help="KB_HOME of the store")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    env = _env(args.home)
    subprocess.run([*KB, "init"], env=env, check=True, capture_output=True)
    populate = subprocess.run(
        [*KB, "populate", str(REPO / "knowledgebase"), "--project", "kb-cli-bench", "--json"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    indexed = json.loads(populate.stdout)
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}",
        "store": f"{indexed['files_indexed']} files, {indexed['chunks_written']} chunks written this run",
        "commands": time_commands(args.home, args.runs),
        "indexing": index_rates(args.home),
        "targets": {"warm_p50_ms": TARGET_WARM_MS, "cold_p50_ms": TARGET_COLD_MS},
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"machine: {report['machine']}; store: {report['store']}")
    print(f"{'command':<9} {'path':<18} {'runs':>4} {'p50 ms':>8} {'p95 ms':>8}")
    for command, paths in report["commands"].items():
        for path, summary in paths.items():
            print(f"{command:<9} {path:<18} {summary['runs']:>4} {summary['p50_ms']:>8.0f} {summary['p95_ms']:>8.0f}")
    rates = report["indexing"]
    print(
        f"indexing: default {rates['default']['backend']} ({rates['default']['chosen']}) "
        f"{rates['default']['chunks_per_s']} chunks/s, torch {rates['torch']['chunks_per_s']} chunks/s "
        f"(x{rates['speedup']})"
    )
    subprocess.run([*KB, "db", "stop"], env=env, capture_output=True)


if __name__ == "__main__":
    main()
