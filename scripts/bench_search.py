"""Search at scale: HNSW recall@10 against exact search, and search / context / `kb context` latency, per store size.

    .venv/bin/python scripts/bench_search.py [--sizes 10000 100000] [--source DIR] [--json]

The store is one project: this repository (or ``--source``) indexed with the configured
model, then grown to each size in ``--sizes`` (ascending) with copies of its chunks whose vectors are
perturbed (cosine about 0.9 to the original; the text is kept, so full-text matching stays realistic).
The HNSW index is kept up to date while the copies go in, as ``kb populate`` does. Queries are real:
the summary lines of the source's docstrings, embedded with the same model. At each size it measures,
with ``scripts/eval_retrieval.py``'s own functions (so the numbers are comparable with its 100k run):

- recall@10 of the vector search (``hnsw.iterative_scan``, project filter) against exact search, with
  the HNSW index forced and as the planner runs it, by id overlap and by distance, at the ``ef_search``
  retrieval uses, at pgvector's default of 40 and at 200;
- p50/p95 of ``search`` (embedding the query included), of ``build_context`` (search, packing and
  recording in ``context_log``: what ``kb context`` and the warm hook process do per prompt), and of
  embedding the query alone;

and at the largest size, ``kb context`` run as a command (new process: imports, model load, one
context), which is what a shell user waits for; the hooks avoid that cost with a warm process
(``scripts/bench_hooks.py``).

Runs on a private embedded PostgreSQL in a temporary folder (stopped and removed at the end), or on
``--database-url`` (a dedicated, migrated database; the benchmark project is dropped at the end).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from eval_retrieval import hnsw_recall, latency, summary_line

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder, bind_model, embedder_from_settings
from knowledgebase.ingest import populate_project
from knowledgebase.retrieval import EF_SEARCH

REPO = Path(__file__).resolve().parent.parent
PROJECT = "bench-search"
NOISE = 0.025  # per dimension: a copy's cosine to its original is about 0.9 at 384 dimensions
KB = Path(sys.executable).parent / "kb"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """``url`` (migrated here), else a private embedded server in a temporary folder."""
    from knowledgebase.schema import upgrade

    if url:
        upgrade(url)
        yield url
        return
    from knowledgebase.embedded import ensure_server, stop_server

    base = Path(tempfile.mkdtemp(prefix="kb-bench-search-"))
    try:
        private = ensure_server(base / "pgdata").url()
        upgrade(private)
        yield private
    finally:
        stop_server(base / "pgdata")
        shutil.rmtree(base, ignore_errors=True)


def queries(source: Path, limit: int) -> list[str]:
    """Summary lines of the docstrings of functions and classes under ``source`` (real questions about it)."""
    found: list[str] = []
    for path in sorted(source.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                docstring = ast.get_docstring(node)
                summary = summary_line(docstring) if docstring else None
                if summary and summary not in found:
                    found.append(summary)
    if not found:
        raise SystemExit(f"bench_search: no documented functions under {source} to ask about")
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def base_chunks(db: Database, embedder: Embedder) -> list[tuple[str, store.StoredChunk, np.ndarray]]:
    """(file path, chunk, vector) of every chunk the source was indexed into."""
    rows = []
    with db.connection() as conn:
        project = store.get_project(conn, PROJECT)
        model_id = bind_model(conn, embedder)
        for file in store.list_files(conn, project.id):
            chunks = store.list_chunks(conn, file.id)
            vectors = store.chunk_vectors_by_hash(conn, [c.content_hash for c in chunks], model_id)
            rows += [(file.file_path, c, vectors[c.content_hash]) for c in chunks if c.content_hash in vectors]
    return rows


def chunk_count(db: Database) -> int:
    from knowledgebase.insights import store_counts

    return sum(c.count for c in store_counts(db) if c.project == PROJECT and c.category == "chunks")


def grow(db: Database, embedder: Embedder, base: list, target: int, copies_made: int, rng: np.random.Generator) -> int:
    """Add perturbed copies of ``base`` until the project has ``target`` chunks; returns the copies made so far."""
    with db.connection() as conn:
        project_id = store.get_project(conn, PROJECT).id
        model_id = bind_model(conn, embedder)
    count = chunk_count(db)
    by_file: dict[str, list[tuple[store.StoredChunk, np.ndarray]]] = {}
    for path, chunk, vector in base:
        by_file.setdefault(path, []).append((chunk, vector))
    started = time.perf_counter()
    while count < target:
        copies_made += 1
        with db.connection() as conn:
            for path, chunks in by_file.items():
                if count >= target:
                    break
                name = f"copy{copies_made:04d}/{path}"
                file = store.upsert_file(conn, store.NewFile(project_id, name, "", f"copy-{name}", 0, "python", None))
                vectors = np.stack([vector for _, vector in chunks])
                vectors = vectors + rng.normal(scale=NOISE, size=vectors.shape).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                new = [
                    store.NewChunk(file.id, project_id, c.chunk_index, c.start_line, c.end_line, c.kind, c.symbol,
                                   c.content, f"{c.content_hash}-{copies_made}", c.token_count, v, model_id)
                    for (c, _), v in zip(chunks, vectors, strict=True)
                ][: target - count]  # fmt: skip
                store.insert_chunks(conn, new)
                count += len(new)
        if copies_made % 10 == 0:
            log(f"  {count} chunks ({(time.perf_counter() - started):.0f} s)")
    return copies_made


def kb_context_cli(url: str, prompts: list[str], runs: int, home: Path) -> dict[str, Any]:
    """Wall time of ``kb context PROMPT`` as a new process, ``runs`` times."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(KB_DATABASE_URL=url, KB_HOME=str(home))
    times = []
    for i in range(runs):
        started = time.perf_counter()
        proc = subprocess.run(
            [str(KB), "context", prompts[i % len(prompts)], "--project", PROJECT, "--no-record"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        times.append((time.perf_counter() - started) * 1000)
        if proc.returncode != 0:
            raise SystemExit(f"kb context failed ({proc.returncode}): {proc.stderr.strip()}")
    return {"runs": runs, "p50_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    source = Path(args.source).resolve()
    settings = Settings.from_env()
    embedder = embedder_from_settings(settings)
    embedder.embed_query("warm up")
    prompts = queries(source, args.queries)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": {"name": embedder.name, "backend": settings.embed_backend},
        "ef_search": EF_SEARCH,
        "queries": len(prompts),
        "sizes": [],
    }
    with database(args.database_url) as url, Database(url, max_size=2) as db:
        try:
            log(f"indexing {source} with {embedder.name} ({settings.embed_backend}) ...")
            started = time.perf_counter()
            indexed = populate_project(db, embedder, source, project=PROJECT, settings=settings)
            report["base"] = {
                "source": str(source.relative_to(REPO)) if source.is_relative_to(REPO) else str(source),
                "files": indexed.files_indexed,
                "chunks": indexed.chunks_written,
                "seconds": round(time.perf_counter() - started, 1),
            }
            log(f"base: {indexed.files_indexed} files, {indexed.chunks_written} chunks")
            base = base_chunks(db, embedder)
            query_vectors = embedder.embed_documents(prompts)
            rng = np.random.default_rng(7)
            copies = 0
            for size in sorted(args.sizes):
                grown = time.perf_counter()
                copies = grow(db, embedder, base, size, copies, rng)
                chunks = chunk_count(db)
                log(f"{chunks} chunks: recall and latency ...")
                report["sizes"].append(
                    {
                        "chunks": chunks,
                        "grow_seconds": round(time.perf_counter() - grown, 1),
                        "recall_at_10": {
                            f"ef_search_{ef}": hnsw_recall(db, PROJECT, query_vectors, ef)
                            for ef in sorted({40, EF_SEARCH, 200})
                        },
                        "latency": latency(
                            db, embedder, PROJECT, prompts[: args.latency_prompts], settings.context_budget
                        ),
                    }
                )
            if args.cli_runs:
                log("kb context as a command ...")
                with tempfile.TemporaryDirectory(prefix="kb-bench-home-") as home:
                    cli = kb_context_cli(url, prompts, args.cli_runs, Path(home))
                report["kb_context_command"] = {"chunks": report["sizes"][-1]["chunks"], **cli}
        finally:
            if args.database_url:
                with db.connection() as conn:
                    store.delete_project(conn, PROJECT)
    return report


def print_report(report: dict[str, Any]) -> None:
    base = report["base"]
    print(f"model {report['model']['name']} ({report['model']['backend']}); {report['queries']} real queries")
    print(f"base: {base['source']}, {base['files']} files, {base['chunks']} chunks (indexed in {base['seconds']} s)")
    for row in report["sizes"]:
        recall, lat = row["recall_at_10"], row["latency"]
        forced = " / ".join(f"{v['hnsw_forced']['recall@10_ids']:.4f} ({k})" for k, v in recall.items())
        print(
            f"{row['chunks']:>7} chunks: HNSW recall@10 {forced}; "
            f"search p50 {lat['search_p50_ms']} ms p95 {lat['search_p95_ms']} ms; "
            f"context p50 {lat['context_p50_ms']} ms p95 {lat['context_p95_ms']} ms; "
            f"embed query p50 {lat['embed_query_p50_ms']} ms"
        )
    if "kb_context_command" in report:
        cli = report["kb_context_command"]
        print(f"kb context (new process) at {cli['chunks']} chunks: p50 {cli['p50_ms']} ms, max {cli['max_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000], help="store sizes in chunks")
    parser.add_argument("--source", default=str(REPO), help="code to index (default: this repository)")
    parser.add_argument("--queries", type=int, default=200, help="queries for recall (default 200)")
    parser.add_argument("--latency-prompts", type=int, default=200, help="prompts timed per size (default 200)")
    parser.add_argument("--cli-runs", type=int, default=5, help="`kb context` processes timed (0: none)")
    parser.add_argument("--database-url", help="a dedicated database instead of a private embedded server")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
