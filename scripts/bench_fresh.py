"""How soon an edit is searchable: "edit -> searchable" through the AfterTool hook, with the model warm.

    .venv/bin/python scripts/bench_fresh.py [--source DIR] [--runs 20] [--json]

Runs against a private embedded PostgreSQL in a temporary directory (stopped at the end), with the
configured model (KB_EMBED_MODEL, KB_EMBED_BACKEND). It copies ``--source`` (default: this repository's
``knowledgebase/gemini`` package) to a temporary project, populates it, and keeps a ``WarmStore`` (the warm
process's model and pool, with its ``Freshener``) loaded. Each run rewrites one file (``--file``,
default ``hooks.py``: about 500 lines) as its original text plus a function holding a new unique word,
sends the ``write_file`` AfterTool hook (``handle_hook``, as ``kb serve`` runs it), and polls ``search``
for "edited_N: apply the WORD rule" (top 10 chunks; the model embeds each query, as ``kb search`` does)
until a hit holds the new word. The time from the write to that hit includes the debounce
(``Freshener.debounce_s``). Target (issue 16): p95 under 2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 2.0
POLL_S = 0.02
DEADLINE_S = 30.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=REPO / "knowledgebase" / "gemini")
    parser.add_argument("--file", default="hooks.py", help="the file (relative to --source) each run edits")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import psycopg
    from psycopg import sql

    from knowledgebase.config import Settings
    from knowledgebase.db import Database
    from knowledgebase.db.embedded import ensure_server, stop_server
    from knowledgebase.db.schema import upgrade
    from knowledgebase.embedding import embedder_from_settings
    from knowledgebase.gemini.hooks import HookCall, handle_hook
    from knowledgebase.gemini.serve import WarmStore
    from knowledgebase.index.ingest import populate_project
    from knowledgebase.search.retrieval import search

    with tempfile.TemporaryDirectory(prefix="kb-bench-fresh-") as tmp:
        base = Path(tmp)
        pgdata = base / "pgdata"
        server = ensure_server(pgdata)
        try:
            with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier("fresh")))
            url = str(server.url("fresh"))
            upgrade(url)
            settings = Settings.from_env({**os.environ, "KB_HOME": str(base / "home"), "KB_DATABASE_URL": url})
            root = base / "project"
            shutil.copytree(args.source, root, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            target = root / args.file
            original = target.read_text() if target.is_file() else ""
            embedder = embedder_from_settings(settings)
            embedder.embed_query("warm up")
            db = Database(url, max_size=4)
            started = time.perf_counter()
            report = populate_project(db, embedder, root, project="fresh", settings=settings)
            seconds = time.perf_counter() - started
            log(f"populated {report.files_indexed} files, {report.chunks_written} chunks in {seconds:.1f}s")
            warm = WarmStore(settings, embedder=embedder)
            times: list[float] = []
            try:
                for run in range(args.runs):
                    word = "freshword" + "".join(chr(ord("a") + b % 26) for b in uuid.uuid4().bytes[:8])
                    added = f"def edited_{run}(order):\n    '''Apply the {word} rule.'''\n    return order * {run}\n"
                    text = f"{original}\n\n{added}"
                    query = f"edited_{run}: apply the {word} rule"
                    clock = time.perf_counter()
                    target.write_text(text)
                    payload = {
                        "session_id": "b0b0b0b0-067b-41ab-8c43-e6ef7fee6001",
                        "cwd": str(root),
                        "tool_name": "write_file",
                        "tool_input": {"file_path": str(target), "content": text},
                        "tool_response": {"llmContent": f"Successfully wrote to {target}"},
                    }
                    handle_hook(warm, HookCall(event="AfterTool", payload=payload, gemini_pid=os.getpid()))
                    while True:
                        hits = search(db, warm.embedder(), query, project="fresh", kinds=("chunk",), limit=10)
                        if any(word in hit.text for hit in hits):
                            break
                        if time.perf_counter() - clock > DEADLINE_S:
                            sys.exit(f"bench_fresh: run {run}: not searchable after {DEADLINE_S:.0f}s")
                        time.sleep(POLL_S)
                    times.append(time.perf_counter() - clock)
                    log(f"run {run}: {times[-1]:.3f}s")
                stats = warm.freshener.stats()
            finally:
                warm.close()
                db.close()
        finally:
            stop_server(pgdata)
    result = {
        "runs": len(times),
        "model": embedder.name,
        "debounce_s": warm.freshener.debounce_s,
        "edit_to_searchable_p50_s": round(statistics.median(times), 3),
        "edit_to_searchable_p95_s": round(percentile(times, 0.95), 3),
        "edit_to_searchable_max_s": round(max(times), 3),
        "refreshes": stats.refreshes,
        "failures": stats.failures,
        "target_p95_s": TARGET_S,
        "met": percentile(times, 0.95) < TARGET_S,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")


if __name__ == "__main__":
    main()
