"""How long a search takes for queries far longer than any question, on a store whose chunks share
the query's words (the worst case for full text): the work must stay bounded whatever the query.

    .venv/bin/python scripts/bench_query_bounds.py [--files 300] [--sizes 1000 20000 ...] [--json]

Indexes a synthetic project (every file drawn from one small vocabulary) into a private embedded
server with a deterministic bag-of-words embedder (no model: this measures the database side), then
times ``knowledgebase.search.retrieval.search`` for queries of the same words, from 1,000 characters
to 1 MB. Prints one line per query size: seconds, hits, and whether full text contributed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SIZES = (1_000, 20_000, 120_000, 1_000_000)
VOCABULARY = [f"term{n}" for n in range(400)]


class BagOfWordsEmbedder:
    """Feature-hashed word counts: deterministic, no model to load."""

    name = "bench-bag-of-words"
    dimension = 384

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dimension, dtype=np.float32)
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            vec[int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") % self.dimension] += 1
        norm = float(np.linalg.norm(vec))
        return vec / norm if norm else np.eye(1, self.dimension, dtype=np.float32)[0]

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self._vector(t) for t in texts]) if texts else np.zeros((0, self.dimension), np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    def count_tokens(self, text: str) -> int:
        return len(text.split()) * 2


def make_project(root: Path, files: int) -> None:
    rnd = random.Random(7)
    for n in range(files):
        paragraphs = ["\n".join(" ".join(rnd.choices(VOCABULARY, k=12)) for _ in range(6)) for _ in range(8)]
        (root / f"doc{n:04d}.txt").write_text("\n\n".join(paragraphs) + "\n")


def query_of(size: int) -> str:
    rnd = random.Random(size)
    return " ".join(rnd.choices(VOCABULARY, k=size // 6 + 1))[:size]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=300, help="synthetic files to index (8 chunks each)")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="query lengths in characters")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    from knowledgebase.config import Settings
    from knowledgebase.db import Database
    from knowledgebase.db.embedded import ensure_server, stop_server
    from knowledgebase.db.schema import upgrade
    from knowledgebase.index.ingest import populate_project
    from knowledgebase.search.retrieval import search

    base = Path(tempfile.mkdtemp(prefix="kb-bench-query-"))
    results = []
    try:
        url = ensure_server(base / "pgdata").url()
        upgrade(url)
        project = base / "shared-words"
        project.mkdir()
        make_project(project, args.files)
        embedder = BagOfWordsEmbedder()
        db = Database(url, max_size=2)
        try:
            settings = Settings(home=base / "home", database_url=url)
            report = populate_project(db, embedder, project, settings=settings)  # type: ignore[arg-type]
            print(f"indexed {report.files_indexed} files, {report.chunks_written} chunks", file=sys.stderr)
            for size in args.sizes:
                started = time.perf_counter()
                hits = search(db, embedder, query_of(size), project=project.name, limit=10)  # type: ignore[arg-type]
                seconds = time.perf_counter() - started
                full_text = any(hit.parts.text_rank > 0 for hit in hits)
                results.append(
                    {"query_chars": size, "seconds": round(seconds, 3), "hits": len(hits), "full_text": full_text}
                )
        finally:
            db.close()
    finally:
        stop_server(base / "pgdata")
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for row in results:
            full_text = "yes" if row["full_text"] else "no"
            print(f"{row['query_chars']:>9} chars: {row['seconds']:7.3f} s, {row['hits']} hits, full text {full_text}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
