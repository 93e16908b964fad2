"""Latency of the Gemini CLI hooks, process start to exit, as Gemini CLI runs them.

    .venv/bin/python scripts/bench_hooks.py [--chunks 100000] [--runs 200] [--home DIR] [--database-url URL] [--json]

Builds (once, then reuses) a store of at least ``--chunks`` chunks in one project: this repository
indexed with the real model (so prompts about it find real hits), plus synthetic chunks to reach the
size: random unit vectors, and code-like text whose words follow a Zipf law over a 30k-word made-up
vocabulary with 5% everyday code words ("client", "session", "token"...), so full-text search meets
the selectivity it meets in real code. Then, with ``KB_HOME`` and the database passed the
way ``kb gemini install`` passes them:

- cold: no warm process running; one BeforeAgent call starts ``kb serve`` and must finish within the
  hook timeout, and its log line must say ``cold``;
- warm: ``--runs`` BeforeAgent calls (prompts about this code base, each building and logging a
  context), and AfterTool / SessionStart calls, each timed from spawning the hook to its exit,
  through ``/bin/sh -c`` as Gemini CLI spawns hooks.

Targets (issue 6): BeforeAgent p50 <= 150 ms and p95 <= 300 ms warm; the cold call within the timeout.
The warm process, and the embedded server if this script started it, are stopped at the end.
"""

from __future__ import annotations

import argparse
import bisect
import hashlib
import itertools
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
PROJECT = "kb-hook-bench"
SYNTHETIC_PREFIX = "synthetic/"
CHUNKS_PER_FILE = 50
TARGET_P50_MS = 150.0
TARGET_P95_MS = 300.0
PROMPTS = [
    "how does the hook client start the warm process when none is running?",
    "where are secrets redacted before they are stored?",
    "how is the context budget counted in tokens?",
    "what happens when the database is down during a hook?",
    "how are facts superseded when a label gets a new value?",
    "explain the task lease and heartbeat logic",
    "which settings does kb gemini install write into settings.json?",
    "how are shell command outputs clipped before storing them?",
    "how does retrieval combine full-text and vector search?",
    "where is the embedded PostgreSQL server started?",
]
# Words of everyday code: a chunk draws 5% of its words from these, so a prompt that uses them has
# full-text matches in a few thousand chunks, as in a real repository.
COMMON_WORDS = [
    *("account", "balance", "cache", "client", "config", "connect", "cursor", "customer", "decode", "encode"),
    *("event", "fetch", "handler", "index", "invoice", "ledger", "limit", "logger", "merge", "message"),
    *("order", "parse", "payment", "pool", "queue", "record", "render", "request", "response", "retry"),
    *("route", "schema", "session", "shipment", "socket", "stream", "tenant", "token", "update", "worker"),
]
COMMON_SHARE = 0.05
VOCABULARY = 30_000  # other identifiers: made-up words, Zipf-distributed like the words of real code


class SyntheticCode:
    """Code-like chunks whose words follow a Zipf law over a large made-up vocabulary."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
        words: set[str] = set()
        while len(words) < VOCABULARY:
            words.add("".join(self.rng.choice(syllables) for _ in range(self.rng.randint(2, 4))))
        self.words = sorted(words)
        self.rng.shuffle(self.words)
        weights = [1 / (rank + 1) ** 1.1 for rank in range(VOCABULARY)]
        total = sum(weights)
        self.cumulative = list(itertools.accumulate(w / total for w in weights))

    def word(self) -> str:
        if self.rng.random() < COMMON_SHARE:
            return self.rng.choice(COMMON_WORDS)
        index = bisect.bisect_left(self.cumulative, self.rng.random())
        return self.words[min(index, VOCABULARY - 1)]

    def chunk(self) -> str:
        w = self.word
        lines = [f"def {w()}_{w()}({w()}, {w()}):"]
        lines += [f"    {w()} = {w()}.{w()}({w()}, {w()})" for _ in range(self.rng.randint(6, 18))]
        lines.append(f"    return {w()}")
        return "\n".join(lines)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50), 1),
        "p95_ms": round(percentile(values, 95), 1),
        "max_ms": round(max(values), 1),
        "mean_ms": round(statistics.fmean(values), 1),
    }


def build_store(settings: Any, target_chunks: int, log: Any) -> dict[str, int]:
    """The benchmark project with at least ``target_chunks`` chunks (reused when already there)."""
    from knowledgebase import store
    from knowledgebase.db import open_database
    from knowledgebase.embedding import bind_model, embedder_from_settings
    from knowledgebase.index.ingest import populate_project
    from knowledgebase.index.reembed import _ensure_indexes as ensure_hnsw_indexes
    from knowledgebase.store.vectors import HNSW_INDEXES

    db = open_database(settings, owner=True)  # the bulk load drops and rebuilds the HNSW index: the owner's work
    try:
        with db.connection() as conn:
            project = store.find_project(conn, PROJECT)
            count = _chunk_count(conn, project.id) if project else 0
        if count >= target_chunks:
            ensure_hnsw_indexes(db)  # a build interrupted after the bulk load left it missing
            return {"chunks": count, "added": 0}
        embedder = embedder_from_settings(settings)
        log(f"indexing {REPO} with the real model ...")
        populate_project(db, embedder, REPO, project=PROJECT, settings=settings)
        with db.connection() as conn:
            project = store.get_project(conn, PROJECT)
            model_id = bind_model(conn, embedder)
            count = _chunk_count(conn, project.id)
        code = SyntheticCode(seed=6)
        vectors = np.random.default_rng(6)
        file_no = 0
        added = 0
        started = time.monotonic()
        # bulk load without the HNSW index, then build it once (as `kb reembed` does): far faster
        with db.connection() as conn:
            conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(HNSW_INDEXES["file_chunks"])))
        while count + added < target_chunks:
            with db.connection() as conn:
                for _ in range(20):  # files per transaction
                    file_no += 1
                    texts = [code.chunk() for _ in range(CHUNKS_PER_FILE)]
                    content = "\n\n".join(texts)
                    digest = hashlib.sha256(content.encode()).hexdigest()
                    path = f"{SYNTHETIC_PREFIX}mod_{file_no:05d}.py"
                    file = store.upsert_file(
                        conn,
                        store.NewFile(project.id, path, content, digest, len(content), "python", None),
                    )
                    store.delete_chunks(conn, file.id)
                    embeddings = vectors.standard_normal((len(texts), embedder.dimension)).astype(np.float32)
                    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
                    chunks, line = [], 1
                    for i, (text, vector) in enumerate(zip(texts, embeddings, strict=True)):
                        lines = text.count("\n") + 1
                        chunks.append(
                            store.NewChunk(
                                file_id=file.id,
                                project_id=project.id,
                                chunk_index=i,
                                start_line=line,
                                end_line=line + lines - 1,
                                kind="function",
                                symbol=None,
                                content=text,
                                content_hash=hashlib.sha256(text.encode()).hexdigest(),
                                token_count=lines * 9,
                                embedding=vector,
                                embedding_model_id=model_id,
                            )
                        )
                        line += lines + 1
                    store.insert_chunks(conn, chunks)
                    store.mark_chunked(conn, file.id, digest)
                    added += len(chunks)
            if file_no % 200 == 0:
                rate = added / (time.monotonic() - started)
                log(f"  {count + added} chunks ({rate:.0f}/s)")
        log("building the HNSW index ...")
        ensure_hnsw_indexes(db)
        with db.connection() as conn:
            conn.execute("ANALYZE file_chunks")
            count = _chunk_count(conn, project.id)
        return {"chunks": count, "added": added}
    finally:
        db.close()


def _chunk_count(conn: Any, project_id: int) -> int:
    row = conn.execute("SELECT count(*) FROM file_chunks WHERE project_id = %s", (project_id,)).fetchone()
    return int(row[0])


def server_ms(log_line: str) -> tuple[float, float]:
    """From a BeforeAgent hook log line: the time the warm process spent on the request
    (``server=120ms``), and of that, the time spent building the context (``in 95ms``)."""
    words = log_line.split()
    total = next((float(w[7:-2]) for w in words if w.startswith("server=") and w.endswith("ms")), 0.0)
    context = next((float(b[:-2]) for a, b in itertools.pairwise(words) if a == "in" and b.endswith("ms")), 0.0)
    return total, context


def time_hook(env: dict[str, str], event: str, payload: dict[str, Any]) -> tuple[float, dict[str, Any], str]:
    """One hook run as Gemini CLI runs it (``sh -c`` + the command `kb gemini install` writes):
    wall ms, its output, its log line."""
    from knowledgebase.config import Settings
    from knowledgebase.gemini.settings import wiring_for

    wiring = wiring_for(Settings.from_env(env))
    command = wiring.hook_command(event)
    env = {**env, **wiring.hook_env()}
    data = json.dumps(payload).encode()
    started = time.perf_counter()
    proc = subprocess.run(["/bin/sh", "-c", command], input=data, capture_output=True, env=env, timeout=120)
    elapsed = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"hook {event} exited {proc.returncode}: {proc.stderr.decode()}")
    log_path = Path(env["KB_HOME"]) / "logs" / "hooks.log"
    last = log_path.read_text().splitlines()[-1] if log_path.exists() else ""
    return elapsed, json.loads(proc.stdout), last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000, help="store size to build (default 100000)")
    parser.add_argument("--runs", type=int, default=200, help="warm BeforeAgent runs (default 200)")
    parser.add_argument(
        "--home",
        type=Path,
        default=Path.home() / ".cache" / "knowledgebase-bench" / "hooks",
        help="KB_HOME of the benchmark store (reused between runs)",
    )
    parser.add_argument("--database-url", default=None, help="an external database instead of the embedded one")
    parser.add_argument("--backend", default=None, help="KB_EMBED_BACKEND of the warm process (torch, onnx...)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from knowledgebase.config import Settings
    from knowledgebase.db import database_url
    from knowledgebase.db.embedded import running_server, stop_server
    from knowledgebase.db.schema import upgrade
    from knowledgebase.gemini import serve
    from knowledgebase.gemini.hook_client import HOOK_TIMEOUTS_MS

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    home = args.home.resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KB_", "GEMINI_"))}
    env.update({"KB_HOME": str(home), "KB_SERVE_IDLE_TIMEOUT": "600"})
    if args.database_url:
        env["KB_DATABASE_URL"] = args.database_url
    if args.backend:
        env["KB_EMBED_BACKEND"] = args.backend
    settings = Settings.from_env(env)
    started_server = settings.uses_embedded_db and running_server(settings.pgdata) is None
    try:
        upgrade(database_url(settings, owner=True))  # migrations are the owner's; the hooks log in as the agent
        built = build_store(settings, args.chunks, log)
        log(f"store: {built['chunks']} chunks in project {PROJECT}")
        serve.stop_server(env)
        payload: dict[str, Any] = {"session_id": "bench-hooks", "transcript_path": "", "cwd": str(REPO)}

        cold_ms, cold_out, cold_line = time_hook(env, "BeforeAgent", {**payload, "prompt": PROMPTS[0]})
        cold = {
            "ms": round(cold_ms, 1),
            "timeout_ms": HOOK_TIMEOUTS_MS["BeforeAgent"],
            "within_timeout": cold_ms < HOOK_TIMEOUTS_MS["BeforeAgent"],
            "log_says_cold": " cold " in cold_line,
            "answered_with_context": bool(cold_out),
            "log_line": cold_line,
        }
        log(f"cold BeforeAgent: {cold_ms:.0f} ms ({cold_line})")
        for prompt in PROMPTS:  # warm-up: first query of each shape
            time_hook(env, "BeforeAgent", {**payload, "prompt": prompt})
        results: dict[str, list[float]] = {"BeforeAgent": [], "AfterTool": [], "SessionStart": []}
        inside: list[float] = []
        building: list[float] = []
        with_context = 0
        load_before = os.getloadavg()
        for i in range(args.runs):
            prompt = f"{PROMPTS[i % len(PROMPTS)]} (variant {i})"
            ms, out, line = time_hook(env, "BeforeAgent", {**payload, "prompt": prompt})
            results["BeforeAgent"].append(ms)
            total, context_ms = server_ms(line)
            inside.append(total)
            building.append(context_ms)
            with_context += bool(out)
        tool = {
            **payload,
            "tool_name": "run_shell_command",
            "tool_input": {"command": "make test"},
            "tool_response": {"llmContent": "Output: " + "ok\n" * 200 + "Process Group PGID: 1"},
        }
        for _ in range(max(20, args.runs // 4)):
            results["AfterTool"].append(time_hook(env, "AfterTool", tool)[0])
        for _ in range(20):
            results["SessionStart"].append(time_hook(env, "SessionStart", {**payload, "source": "startup"})[0])
        status = serve.request(env, "status")
    finally:
        serve.stop_server(env)
        if started_server:
            stop_server(settings.pgdata)

    warm = {event: summary(values) for event, values in results.items()}
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "embed_backend": settings.embed_backend,
        "store": {
            "project": PROJECT,
            "chunks": built["chunks"],
            "database": "external" if args.database_url else "embedded",
        },
        "cold_before_agent": cold,
        "warm": warm,
        "before_agent_inside_warm_process": summary(inside),
        "before_agent_building_context": summary(building),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "before_agent_with_context": f"{with_context}/{args.runs}",
        "server_requests": status["status"]["requests"] if status else None,
        "targets": {"before_agent_p50_ms": TARGET_P50_MS, "before_agent_p95_ms": TARGET_P95_MS},
        "meets_targets": warm["BeforeAgent"]["p50_ms"] <= TARGET_P50_MS
        and warm["BeforeAgent"]["p95_ms"] <= TARGET_P95_MS
        and cold["within_timeout"]
        and cold["log_says_cold"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"store: {built['chunks']} chunks; machine: {os.cpu_count()} CPUs")
    print(f"cold BeforeAgent: {cold['ms']:.0f} ms (timeout {cold['timeout_ms']} ms), log: {cold['log_line']}")
    for event, stats in warm.items():
        print(
            f"warm {event:<12} n={stats['n']:<4} p50 {stats['p50_ms']:6.1f} ms  p95 {stats['p95_ms']:6.1f} ms  "
            f"max {stats['max_ms']:6.1f} ms"
        )
    inner = report["before_agent_inside_warm_process"]
    print(f"  of which inside the warm process: p50 {inner['p50_ms']:.1f} ms, p95 {inner['p95_ms']:.1f} ms")
    built = report["before_agent_building_context"]
    print(f"  of which building the context (retrieval): p50 {built['p50_ms']:.1f} ms, p95 {built['p95_ms']:.1f} ms")
    print(f"BeforeAgent answers with context: {report['before_agent_with_context']}")
    print(f"load average (1 min) before/after: {report['load_average_1m']}")
    print("meets targets" if report["meets_targets"] else "MISSES targets")


if __name__ == "__main__":
    main()
