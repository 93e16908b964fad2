"""HNSW recall@10 and index-scan time per ef_search (and index options), on the benchmark's real vectors.

    .venv/bin/python scripts/hnsw_sweep.py [--vectors build/bench/search/vectors.npz] [--size 100000]
        [--ef 40 100 200 400 800] [--index-options "m = 16, ef_construction = 64"] [--json]

Loads the first ``--size`` vectors kept by ``scripts/bench_search.py`` (real code embedded with the
real model; run it once first) into a bare table on a private embedded PostgreSQL, builds an HNSW index,
and asks the same natural-language queries as that benchmark (this repository's docstring summaries).
For each ``ef_search`` it prints recall@10 against the exact top 10 (numpy) and the mean time of the
index scan alone: the numbers behind ``EF_SEARCH`` in ``knowledgebase.search.retrieval``. It also prints how
far the queries sit from the chunks (median cosine of the 1st, 10th and 11th nearest): the closer the
10th and 11th, the harder for a graph index.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import psycopg
from bench_search import REPO, queries
from pgvector.psycopg import register_vector

from knowledgebase.config import Settings
from knowledgebase.db.embedded import ensure_server, stop_server
from knowledgebase.embedding import embedder_from_settings


def sweep(args: argparse.Namespace) -> dict:
    with np.load(args.vectors) as saved:
        vectors = saved["vectors"][: args.size].astype(np.float32)
    query_vectors = embedder_from_settings(Settings.from_env()).embed_documents(queries(REPO, args.queries))
    similarity = query_vectors @ vectors.T
    exact = np.argsort(-similarity, axis=1)[:, :10]
    nearest = -np.sort(-similarity, axis=1)
    report: dict = {
        "vectors": len(vectors),
        "queries": len(query_vectors),
        "index_options": args.index_options,
        "median_cosine": {f"rank_{k + 1}": round(float(np.median(nearest[:, k])), 3) for k in (0, 9, 10)},
        "ef_search": [],
    }
    base = Path(tempfile.mkdtemp(prefix="kb-hnsw-sweep-"))
    try:
        url = ensure_server(base / "pgdata").url()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            register_vector(conn)
            conn.execute(f"CREATE TABLE t (id int PRIMARY KEY, v vector({vectors.shape[1]}))")
            with conn.cursor().copy("COPY t (id, v) FROM STDIN WITH (FORMAT BINARY)") as copy:
                copy.set_types(["int4", "vector"])
                for i, vector in enumerate(vectors):
                    copy.write_row((i, vector))
            conn.execute("SET maintenance_work_mem = '1GB'")
            started = time.perf_counter()
            options = f" WITH ({args.index_options})" if args.index_options else ""
            conn.execute(f"CREATE INDEX ON t USING hnsw (v vector_cosine_ops){options}")
            report["index_build_s"] = round(time.perf_counter() - started, 1)
            conn.execute("VACUUM ANALYZE t")
            for ef in args.ef:
                recalls, started = [], time.perf_counter()
                with conn.transaction():
                    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", (str(ef),))
                    for i, qvec in enumerate(query_vectors):
                        rows = conn.execute("SELECT id FROM t ORDER BY v <=> %s LIMIT 10", (qvec,)).fetchall()
                        recalls.append(len({r[0] for r in rows} & set(exact[i].tolist())) / 10)
                seconds = time.perf_counter() - started
                report["ef_search"].append(
                    {"ef_search": ef, "recall@10": round(float(np.mean(recalls)), 4),
                     "ms_per_query": round(1000 * seconds / len(query_vectors), 1)}
                )  # fmt: skip
    finally:
        stop_server(base / "pgdata")
        shutil.rmtree(base, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=Path, default=REPO / "build" / "bench" / "search" / "vectors.npz")
    parser.add_argument("--size", type=int, default=100_000, help="how many of the kept vectors (default 100k)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[40, 100, 200, 400, 800])
    parser.add_argument("--index-options", default="", help='e.g. "m = 32, ef_construction = 128"')
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not args.vectors.exists():
        raise SystemExit(f"hnsw_sweep: no kept vectors at {args.vectors}: run scripts/bench_search.py first")
    report = sweep(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    near = report["median_cosine"]
    print(f"{report['vectors']} vectors, {report['queries']} queries, index built in {report['index_build_s']} s")
    print(f"median cosine of the 1st / 10th / 11th nearest: {near['rank_1']} / {near['rank_10']} / {near['rank_11']}")
    for row in report["ef_search"]:
        print(f"ef_search {row['ef_search']:>4}: recall@10 {row['recall@10']:.4f}, {row['ms_per_query']} ms per query")
    return 0


if __name__ == "__main__":
    sys.exit(main())
