"""Speed of populating project memory: cold ingest against pure embedding, and incremental re-scans.

    .venv/bin/python scripts/bench_ingest.py [--source DIR ...] [--rescan-files 2000] [--json]

Runs against a private embedded PostgreSQL in a temporary directory (stopped at the end), with the
configured model (KB_EMBED_MODEL, KB_EMBED_BACKEND, KB_EMBED_BATCH_SIZE). It measures:

1. cold ingest of a real repository (default: the alembic and psycopg sources installed in this venv,
   copied to a temporary tree), end to end through ``populate_project`` with the model already
   loaded: files/s and chunks/s, and the share of the time spent outside the model;
2. the raw embedding rate of the same model on the same chunk texts and definition summaries
   (``knowledgebase.index.summaries``; ``embed_documents``, which sorts by length; the summaries' share
   is reported), and the ratio of the two times (the target is a pipeline adding under 15% over pure
   embedding). The files arrive in ``--steps`` parts; each part is populated and its new chunk texts
   embedded raw, in alternating order, so that load from other processes weighs on both alike;
3. a re-scan of the same tree with nothing changed, and after editing one function in one file
   (reports how many chunks were embedded: the target is only that function's chunk);
4. a re-scan with nothing changed of a tree of ``--rescan-files`` real source files (target: under
   2 s for 2,000). That store is filled with a stand-in embedder (vectors from a hash of the text):
   an unchanged re-scan never calls the model, so its cost does not depend on which model filled it.

Both wall-clock and this process's CPU time are reported; the database server's CPU is not in the
latter. The machine may be shared: compare numbers from one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
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

from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.embedding import embedder_from_settings
from knowledgebase.index.ingest import PopulateReport, populate_project

SITE_PACKAGES = Path(np.__file__).resolve().parent.parent
DEFAULT_SOURCES = ("alembic", "psycopg")
RESCAN_SOURCES = ("sympy", "pygments", "sqlalchemy", "transformers", "torch")
RESCAN_MAX_FILE_BYTES = 8192
EDITABLE_FUNCTION = """
SELECT f.path, c.start_line, (SELECT count(*) FROM file_chunks x WHERE x.file_id = f.id) AS chunks
  FROM file_chunks c JOIN project_files f ON f.id = c.file_id
 WHERE c.kind = 'function' AND c.symbol NOT LIKE '%%,%%' AND f.language = 'python' AND c.end_line - c.start_line >= 6
 ORDER BY chunks DESC, f.path, c.start_line
 LIMIT 1
"""


def log(message: str) -> None:
    """Progress, to stderr (``scripts/bench.py`` keeps it in ``build/bench/logs/ingest.log``)."""
    print(message, file=sys.stderr, flush=True)


class StandInEmbedder:
    """Deterministic vectors from a hash of the text: fast filler for stores whose vectors are not measured."""

    name = "bench-stand-in"
    dimension = 384

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        rows = [np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:16], 16)).random(384) for t in texts]
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), 384)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-9)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def count_tokens(self, text: str) -> int:
        from knowledgebase.embedding import count_tokens

        return count_tokens("all-MiniLM-L6-v2", text)


@contextmanager
def private_server(base: Path) -> Iterator[Any]:
    from knowledgebase.db.embedded import ensure_server, stop_server

    pgdata = base / "pgdata"
    server = ensure_server(pgdata)
    try:
        yield server
    finally:
        stop_server(pgdata)


def new_database(server: Any, name: str) -> str:
    import psycopg
    from psycopg import sql

    from knowledgebase.db.schema import upgrade

    with psycopg.connect(server.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = str(server.url(name))
    upgrade(url)
    return url


def copy_sources(names: Sequence[str], target: Path) -> Path:
    for name in names:
        source = Path(name) if os.sep in name else SITE_PACKAGES / name
        if not source.is_dir():
            sys.exit(f"bench_ingest: no source directory {source}")
        shutil.copytree(source, target / source.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def build_rescan_tree(target: Path, count: int) -> int:
    """Copy ``count`` real source files (each at most 8 KB) from installed packages into ``target``."""
    copied = 0
    for package in RESCAN_SOURCES:
        for path in sorted((SITE_PACKAGES / package).rglob("*.py")):
            if copied >= count:
                return copied
            if "__pycache__" in path.parts or path.stat().st_size > RESCAN_MAX_FILE_BYTES:
                continue
            destination = target / package / path.relative_to(SITE_PACKAGES / package)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)  # keeps the mtime: fresh files would be re-hashed once
            copied += 1
    return copied


def timed_populate(db: Database, embedder: Any, root: Path, settings: Settings) -> tuple[PopulateReport, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    report = populate_project(db, embedder, root, settings=settings)
    return report, time.perf_counter() - wall, time.process_time() - cpu


def edit_one_function(db: Database, root: Path) -> dict[str, Any]:
    """Insert a comment line inside one function of a file with many chunks; return what was edited."""
    with db.connection() as conn:
        row = conn.execute(EDITABLE_FUNCTION).fetchone()
    if row is None:
        sys.exit("bench_ingest: no Python function to edit in the source tree")
    path, start_line, chunks = row
    file = root / path
    lines = file.read_text().split("\n")
    body_line = lines[start_line]  # the line after the `def` line
    indent = body_line[: len(body_line) - len(body_line.lstrip())] or "    "
    lines.insert(start_line, f"{indent}# edited by bench_ingest")
    file.write_text("\n".join(lines))
    return {"file": path, "line": start_line + 1, "chunks_in_file": int(chunks)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="kb-bench-ingest-"))
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    try:
        with private_server(base) as server:
            settings = Settings.from_env().with_overrides(home=base / "home", database_url=new_database(server, "cold"))
            embedder = embedder_from_settings(settings)
            results["model"] = {"name": embedder.name, "backend": settings.embed_backend}
            clock = time.perf_counter()
            embedder.embed_query("warm up")
            results["model"]["load_s"] = round(time.perf_counter() - clock, 2)
            log(f"model {embedder.name} ({settings.embed_backend}) loaded in {results['model']['load_s']} s")
            staging = copy_sources(args.source, base / "staging")
            tree = base / "repo"
            tree.mkdir()
            with Database(settings.database_url or "", max_size=4) as db:
                results.update(measure_cold(db, embedder, staging, tree, settings, args))
                log("re-scans of the same tree: nothing changed, then one function edited ...")
                results.update(measure_incremental(db, embedder, tree, settings))
                log(f"building and re-scanning an unchanged tree of {args.rescan_files} files ...")
            rescan_settings = settings.with_overrides(database_url=new_database(server, "rescan"))
            with Database(rescan_settings.database_url or "", max_size=4) as db:
                results["rescan_unchanged_large_tree"] = measure_large_rescan(db, base / "many", rescan_settings, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


def group_texts(
    root: Path, paths: Sequence[str], embedder: Any, settings: Settings
) -> tuple[dict[str, str], dict[str, str]]:
    """The embedded texts of these files' chunks (by content hash) and of their definitions' summaries
    (by summary hash), cut exactly as populate cuts them."""
    from knowledgebase.index.chunking import chunk_text, token_counter
    from knowledgebase.index.scanning import FileText, ScannedFile, language_for, read_scanned
    from knowledgebase.util.redact import redact_text

    count = token_counter(embedder)
    texts: dict[str, str] = {}
    summaries: dict[str, str] = {}
    for rel in paths:
        stat = (root / rel).stat()
        file = ScannedFile(root / rel, rel, stat.st_size, stat.st_mtime_ns, language_for(rel))
        result = read_scanned(file, max_bytes=settings.max_file_bytes)
        if isinstance(result, FileText):
            content = redact_text(result.text).text
            for chunk in chunk_text(content, rel, file.language, count_tokens=count, max_tokens=settings.chunk_tokens):
                texts[chunk.content_hash] = chunk.embedding_text
                summaries.update(chunk.summaries)
    return texts, summaries


def measure_cold(
    db: Database, embedder: Any, staging: Path, tree: Path, settings: Settings, args: argparse.Namespace
) -> dict[str, Any]:
    """Ingest the tree in ``args.steps`` parts, each timed against raw embedding of the same new chunks.

    The two are interleaved (in alternating order) so that load from other processes on a shared
    machine, which drifts over minutes, weighs on both alike.
    """
    paths = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
    known: set[str] = set()
    known_summaries: set[str] = set()
    totals = {"wall": 0.0, "cpu": 0.0, "raw_wall": 0.0, "raw_cpu": 0.0, "embed": 0.0, "raw_summaries_wall": 0.0}
    files = chunks_written = chunks_embedded = summaries_embedded = 0
    stages = dict.fromkeys(("scan", "read", "embed", "write"), 0.0)
    for step in range(args.steps):
        group = paths[step :: args.steps]
        for rel in group:  # os.renames keeps mtimes: the files look long settled
            os.renames(staging / rel, tree / rel)
        chunk_texts, summary_texts = group_texts(tree, group, embedder, settings)
        texts = {h: t for h, t in chunk_texts.items() if h not in known}
        summaries = {h: t for h, t in summary_texts.items() if h not in known and h not in texts}
        known.update(texts)
        known_summaries.update(summaries)
        known.update(summaries)

        for measure in ("pipeline", "raw") if step % 2 == 0 else ("raw", "pipeline"):
            if measure == "raw":
                wall, cpu = time.perf_counter(), time.process_time()
                embedder.embed_documents(list(texts.values()))
                middle = time.perf_counter()
                embedder.embed_documents(list(summaries.values()))  # populate embeds them too
                totals["raw_wall"] += time.perf_counter() - wall
                totals["raw_summaries_wall"] += time.perf_counter() - middle
                totals["raw_cpu"] += time.process_time() - cpu
                continue
            report, wall, cpu = timed_populate(db, embedder, tree, settings)
            assert report.chunks_embedded == len(texts), (report.chunks_embedded, len(texts))
            assert report.summaries_embedded == len(summaries), (report.summaries_embedded, len(summaries))
            summaries_embedded += report.summaries_embedded
            totals["wall"] += wall
            totals["cpu"] += cpu
            files += report.added
            chunks_written += report.chunks_written
            chunks_embedded += report.chunks_embedded
            for stage in stages:
                stages[stage] += getattr(report.timings, stage)
        log(f"cold ingest: part {step + 1}/{args.steps}, {len(known)} chunks, {totals['wall']:.0f} s in populate")
    wall, raw_wall = totals["wall"], totals["raw_wall"]
    return {
        "cold_ingest": {
            "sources": list(args.source),
            "steps": args.steps,
            "files": files,
            "chunks_written": chunks_written,
            "chunks_embedded": chunks_embedded,
            "summaries_embedded": summaries_embedded,
            "seconds": round(wall, 2),
            "cpu_seconds": round(totals["cpu"], 2),
            "files_per_s": round(files / wall, 2),
            "chunks_per_s": round(chunks_written / wall, 2),
            "stages_s": {stage: round(seconds, 2) for stage, seconds in stages.items()},
            "outside_the_model_percent": round(100 * (1 - stages["embed"] / wall), 1),
        },
        "raw_embedding": {
            "chunks": len(known) - len(known_summaries),
            "summaries": len(known_summaries),
            "summaries_seconds": round(totals["raw_summaries_wall"], 2),
            "summaries_percent": round(100 * totals["raw_summaries_wall"] / raw_wall, 1),
            "seconds": round(raw_wall, 2),
            "cpu_seconds": round(totals["raw_cpu"], 2),
            "chunks_per_s": round((len(known) - len(known_summaries)) / raw_wall, 2),
        },
        "pipeline_vs_raw_embedding": {
            "wall_ratio": round(wall / raw_wall, 3),
            "cpu_ratio": round(totals["cpu"] / totals["raw_cpu"], 3),
            "overhead_percent": round(100 * (wall / raw_wall - 1), 1),
            "target_percent": 15,
        },
    }


def measure_incremental(db: Database, embedder: Any, tree: Path, settings: Settings) -> dict[str, Any]:
    report, wall, _ = timed_populate(db, embedder, tree, settings)
    unchanged = {"files": report.unchanged, "changed": report.changed, "chunks_embedded": report.chunks_embedded}
    unchanged["seconds"] = round(wall, 3)
    edit = edit_one_function(db, tree)
    report, wall, _ = timed_populate(db, embedder, tree, settings)
    edit.update(changed=report.changed, chunks_embedded=report.chunks_embedded, seconds=round(wall, 3))
    return {"rescan_unchanged_same_tree": unchanged, "rescan_after_editing_one_function": edit}


def measure_large_rescan(db: Database, tree: Path, settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    files = build_rescan_tree(tree, args.rescan_files)
    filler = StandInEmbedder()
    fill, fill_wall, _ = timed_populate(db, filler, tree, settings)
    runs = [timed_populate(db, filler, tree, settings) for _ in range(args.rounds)]
    seconds = [wall for _, wall, _ in runs]
    assert all(r.unchanged == fill.files_indexed and r.chunks_written == 0 for r, _, _ in runs)
    return {
        "files": fill.files_indexed,
        "files_copied": files,
        "chunks": fill.chunks_written,
        "fill_seconds_with_stand_in_embedder": round(fill_wall, 1),
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds_all": [round(s, 3) for s in seconds],
        "files_per_s": round(fill.files_indexed / statistics.median(seconds)),
        "stages_s_last": {k: round(getattr(runs[-1][0].timings, k), 3) for k in ("scan", "read", "write", "total")},
        "target_seconds": 2.0,
    }


def print_human(results: dict[str, Any]) -> None:
    cold, raw, ratio = results["cold_ingest"], results["raw_embedding"], results["pipeline_vs_raw_embedding"]
    model = results["model"]
    print(f"machine: {results['machine']['cpus']} CPUs, {results['machine']['platform']}")
    print(f"model: {model['name']} ({model['backend']}), loaded in {model['load_s']} s (not in the times below)")
    print(
        f"cold ingest of {', '.join(cold['sources'])}: {cold['files']} files, {cold['chunks_written']} chunks "
        f"({cold['chunks_embedded']} embedded) in {cold['seconds']} s = {cold['files_per_s']} files/s, "
        f"{cold['chunks_per_s']} chunks/s; stages {cold['stages_s']}, "
        f"{cold['outside_the_model_percent']}% of the time outside the model"
    )
    print(
        f"raw embedding of the same {raw['chunks']} chunks and {raw.get('summaries', 0)} definition summaries: "
        f"{raw['seconds']} s = {raw['chunks_per_s']} chunks/s (the summaries {raw.get('summaries_percent', 0)}%)"
    )
    print(
        f"pipeline / raw embedding: {ratio['wall_ratio']} wall ({ratio['overhead_percent']}% overhead, "
        f"target < {ratio['target_percent']}%), {ratio['cpu_ratio']} CPU of this process"
    )
    same = results["rescan_unchanged_same_tree"]
    print(f"re-scan, nothing changed: {same['files']} files in {same['seconds']} s, {same['chunks_embedded']} embedded")
    edit = results["rescan_after_editing_one_function"]
    print(
        f"re-scan after editing one function in {edit['file']} ({edit['chunks_in_file']} chunks): "
        f"{edit['changed']} file changed, {edit['chunks_embedded']} chunk(s) embedded, {edit['seconds']} s"
    )
    large = results["rescan_unchanged_large_tree"]
    print(
        f"re-scan, nothing changed, {large['files']} files: median {large['seconds_median']} s of "
        f"{large['seconds_all']} ({large['files_per_s']} files/s; target < {large['target_seconds']} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source",
        nargs="+",
        default=list(DEFAULT_SOURCES),
        metavar="DIR",
        help="package names in this venv's site-packages, or directories (default: alembic psycopg)",
    )
    parser.add_argument(
        "--steps", type=int, default=8, help="parts of the cold ingest, each timed against raw embedding"
    )
    parser.add_argument("--rescan-files", type=int, default=2000, help="files in the large re-scan tree")
    parser.add_argument("--rounds", type=int, default=3, help="timed re-scans of the large tree")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_human(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
