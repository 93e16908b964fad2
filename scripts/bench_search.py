"""Search at scale: HNSW recall@10 against exact search, and search / context / `kb context` latency, per store size.

    .venv/bin/python scripts/bench_search.py [--sizes 10000 100000] [--home DIR] [--json]

The store is one project of real code embedded with the real model: this repository, then the Python
sources of packages installed in this venv (``CORPUS``, in that order), copied into a staging tree file
by file and indexed with ``populate_project`` until the project reaches each size in ``--sizes``
(ascending), the HNSW index kept up to date as ``kb populate`` does. Queries are real too: the summary
lines of this repository's docstrings. At each size it measures, with ``scripts/eval_retrieval.py``'s
own functions (so the numbers are comparable with its runs):

- recall@10 of the vector search (``hnsw.iterative_scan``, project filter) against exact search, with
  the HNSW index forced and as the planner runs it, by id overlap and by distance, at the ``ef_search``
  retrieval uses, at pgvector's default of 40 and at 200;
- p50/p95 of ``search`` (embedding the query included), of ``build_context`` (search, packing and
  recording in ``context_log``: what ``kb context`` and the warm hook process do per prompt), and of
  embedding the query alone;

and at the largest size, ``kb context`` run as a command (new process: imports, model load, one
context), which is what a shell user waits for; the hooks avoid that cost with a warm process
(``scripts/bench_hooks.py``).

Embedding 100k chunks takes the better part of an hour on two cores, so the vectors are kept in
``--home`` (``vectors.npz``, by the hash of the embedded text; default
``~/.cache/knowledgebase-bench/search``) and later runs only pay for the inserts. ``--embed-backend``
picks the backend that fills that cache and answers the queries (default: the configured one).
Runs on a private embedded PostgreSQL in a temporary folder (stopped and removed at the end), or on
``--database-url`` (a dedicated, migrated database; the benchmark project is dropped at the end).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from eval_retrieval import hnsw_recall, latency
from eval_sets import summary_line

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder, embedder_from_settings
from knowledgebase.index.ingest import populate_project
from knowledgebase.search.retrieval import EF_SEARCH

REPO = Path(__file__).resolve().parent.parent
PROJECT = "bench-search"
SITE_PACKAGES = Path(np.__file__).resolve().parent.parent
# where the corpus comes from, in order: this repository, then installed packages' Python sources
CORPUS = (
    *(REPO / name for name in ("knowledgebase", "scripts", "tests", "migrations", "notebooks")),
    *(
        SITE_PACKAGES / name
        for name in ("sqlalchemy", "networkx", "pygments", "numpy", "sympy", "scipy", "transformers")
    ),
)
CORPUS_SUFFIXES = {".py", ".md"}
BYTES_PER_CHUNK = 300  # fewer bytes than real source gives per chunk: each batch stops short of the size
DEFAULT_HOME = Path.home() / ".cache" / "knowledgebase-bench" / "search"
KB = Path(sys.executable).parent / "kb"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def database(url: str | None) -> Iterator[str]:
    """``url`` (migrated here), else a private embedded server in a temporary folder."""
    from knowledgebase.db.schema import upgrade

    if url:
        upgrade(url)
        yield url
        return
    from knowledgebase.db.embedded import ensure_server, stop_server

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
    seen: set[str] = set()
    for path in sorted(source.rglob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                docstring = ast.get_docstring(node)
                summary = summary_line(docstring) if docstring else None
                if summary and summary not in seen:
                    seen.add(summary)
                    found.append(summary)
    if not found:
        raise SystemExit(f"bench_search: no documented functions under {source} to ask about")
    step = max(1, len(found) // limit)
    return found[::step][:limit]


def corpus_files() -> Iterator[tuple[Path, str]]:
    """(source file, path in the staging tree) of the corpus, in a fixed order."""
    for root in CORPUS:
        if not root.is_dir():
            continue
        prefix = root.name if root.is_relative_to(SITE_PACKAGES) else f"knowledgebase/{root.name}"
        for path in sorted(root.rglob("*")):
            if path.suffix in CORPUS_SUFFIXES and path.is_file() and "__pycache__" not in path.parts:
                yield path, f"{prefix}/{path.relative_to(root).as_posix()}"


class CachedEmbedder:
    """The real embedder, with every document vector kept in ``path`` by the hash of its text."""

    def __init__(self, inner: Embedder, path: Path) -> None:
        self.inner = inner
        self.path = path
        self.vectors: dict[bytes, np.ndarray] = {}
        self.hits = self.misses = 0
        if path.exists():
            with np.load(path) as saved:
                if saved["vectors"].shape[1:] == (inner.dimension,) and str(saved["model"]) == inner.name:
                    self.vectors = dict(zip(map(bytes, saved["keys"]), saved["vectors"], strict=True))

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def embed_query(self, text: str) -> np.ndarray:
        return self.inner.embed_query(text)

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        keys = [hashlib.sha256(t.encode()).digest() for t in texts]
        missing = {k: t for k, t in zip(keys, texts, strict=True) if k not in self.vectors}
        if missing:
            for key, vector in zip(missing, self.inner.embed_documents(list(missing.values())), strict=True):
                self.vectors[key] = vector
        self.misses += len(missing)
        self.hits += len(texts) - len(missing)
        return np.stack([self.vectors[k] for k in keys]) if keys else self.inner.embed_documents([])

    def save(self) -> None:
        if not self.misses:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, keys=np.array(keys, dtype="S32"), vectors=np.stack([self.vectors[k] for k in keys]),
                 model=np.array(self.name))  # fmt: skip
        partial.replace(self.path)


def chunk_count(db: Database, project: str = PROJECT) -> int:
    from knowledgebase.tools.insights import store_counts

    return sum(c.count for c in store_counts(db) if c.project == project and c.category == "chunks")


def grow(
    db: Database,
    embedder: CachedEmbedder,
    files: Iterator[tuple[Path, str]],
    tree: Path,
    target: int,
    settings: Any,
    project: str = PROJECT,
) -> int:
    """Copy corpus files into ``tree`` and index it as ``project`` until it has ``target`` chunks; the count."""
    count = chunk_count(db, project)
    while count < target:
        budget = (target - count) * BYTES_PER_CHUNK
        copied = 0
        for source, rel in files:
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, tree / rel)
            copied += source.stat().st_size
            if copied >= budget:
                break
        else:
            if not copied:
                raise SystemExit(f"bench_search: the corpus ran out at {count} chunks (target {target})")
        populate_project(db, embedder, tree, project=project, settings=settings)
        embedder.save()
        count = chunk_count(db, project)
        log(f"  {count} chunks ({embedder.misses} embedded, {embedder.hits} from the cache)")
    return count


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
    settings = Settings.from_env()
    if args.embed_backend:
        settings = settings.with_overrides(embed_backend=args.embed_backend)
    embedder = CachedEmbedder(embedder_from_settings(settings), args.home / "vectors.npz")
    embedder.embed_query("warm up")
    prompts = queries(REPO, args.queries)
    report: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "model": {"name": embedder.name, "backend": settings.embed_backend},
        "ef_search": EF_SEARCH,
        "queries": len(prompts),
        "corpus": [str(p.relative_to(REPO) if p.is_relative_to(REPO) else p.name) for p in CORPUS if p.is_dir()],
        "cached_vectors_at_start": len(embedder.vectors),
        "sizes": [],
    }
    log(f"{len(embedder.vectors)} vectors in the cache {embedder.path}")
    query_vectors = embedder.inner.embed_documents(prompts)
    files = corpus_files()
    with (
        tempfile.TemporaryDirectory(prefix="kb-bench-search-tree-") as tree,
        database(args.database_url) as url,
        Database(url, max_size=2) as db,
    ):
        try:
            for size in sorted(args.sizes):
                log(f"growing the store to {size} chunks with {embedder.name} ({settings.embed_backend}) ...")
                grown = time.perf_counter()
                chunks = grow(db, embedder, files, Path(tree), size, settings)
                log(f"{chunks} chunks: recall and latency ...")
                report["sizes"].append(
                    {
                        "chunks": chunks,
                        "files": sum(1 for p in Path(tree).rglob("*") if p.is_file()),
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
            report["vectors_embedded"] = embedder.misses
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
    print(f"model {report['model']['name']} ({report['model']['backend']}); {report['queries']} real queries")
    print(f"corpus: {', '.join(report['corpus'])}; {report['vectors_embedded']} chunks embedded in this run")
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
    parser.add_argument("--home", type=Path, default=DEFAULT_HOME, help=f"the kept vectors (default {DEFAULT_HOME})")
    parser.add_argument("--embed-backend", help="KB_EMBED_BACKEND for this run (default: the configured one)")
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
