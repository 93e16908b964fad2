"""BM25 over code tokens inside PostgreSQL: the weights, the counts the triggers keep, the search."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import psycopg
import pytest
from pgvector import SparseVector

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.index.backfill import index_missing
from knowledgebase.index.ingest import populate_project
from knowledgebase.ranking import DEFAULT_WEIGHTS, LEGACY, bm25_score, score
from knowledgebase.search.hits import ChunkHit
from knowledgebase.search.retrieval import search
from knowledgebase.util.bm25 import (
    AVERAGE_LENGTH,
    DIMENSIONS,
    K1,
    MAX_TERMS,
    B,
    code_tokens,
    document_weights,
    idf,
    query_weights,
    term_dimension,
)
from tests.support import HashingEmbedder

BM25_ONLY = DEFAULT_WEIGHTS.with_(vector=0.0, text=0.0, identifier=0.0, bm25=1.0, role_penalties=())


def test_code_tokens_split_identifiers_and_keep_them_whole() -> None:
    assert code_tokens("def resolve_envvar(HTTPError): return 42") == [
        "def",
        "resolve_envvar",
        "resolve",
        "envvar",
        "httperror",
        "http",
        "error",
        "return",
        "42",
    ]
    assert code_tokens("  ... !! ") == []


def test_document_weights_by_hand() -> None:
    # "load" twice, "cache" once: 3 tokens, dl / avgdl = 3 / AVERAGE_LENGTH
    norm = K1 * (1 - B + B * 3 / AVERAGE_LENGTH)
    weights = document_weights("load cache load")
    assert weights == {
        term_dimension("load"): pytest.approx(2 * (K1 + 1) / (2 + norm)),
        term_dimension("cache"): pytest.approx(1 * (K1 + 1) / (1 + norm)),
    }
    # with k1 1.2, b 0.75, avgdl 3: norm = 1.2, so "load" = 2 * 2.2 / 3.2 = 1.375, "cache" = 2.2 / 2.2 = 1
    assert document_weights("load cache load", k1=1.2, b=0.75, average_length=3.0) == {
        term_dimension("load"): pytest.approx(1.375),
        term_dimension("cache"): pytest.approx(1.0),
    }
    assert document_weights("") == {}
    assert all(0 <= term_dimension(t) < DIMENSIONS for t in ("a", "resolve_envvar_value", "ünïcode"))


def test_idf_by_hand() -> None:
    assert idf(0, 10) == pytest.approx(math.log(1 + 10.5 / 0.5))
    assert idf(10, 10) == pytest.approx(math.log(1 + 0.5 / 10.5))
    assert idf(3, 10) > idf(7, 10) > 0
    assert idf(50, 10) == idf(10, 10)  # a count above N (a hash collision) is clipped, never negative


CORPUS = {
    "a.py": "def load_config(path):\n    return read(path)\n",
    "b.py": "def save_config(config, path):\n    write(path, config)\n    return config\n",
    "c.py": "def parse(text):\n    tokens = text.split()\n    return tokens\n",
    "d.py": "class ConfigError(Exception):\n    pass\n",
    "e.py": "def read(path):\n    with open(path) as f:\n        return f.read()\n",
}


def _insert(conn: psycopg.Connection, project: str, files: dict[str, str]) -> dict[str, int]:
    """One chunk per file; returns chunk id by path."""
    p = store.ensure_project(conn, project)
    ids = {}
    for path, text in files.items():
        f = store.upsert_file(conn, store.NewFile(p.id, path, text, f"h-{project}-{path}", len(text), "python", 1))
        store.insert_chunks(
            conn, [store.NewChunk(f.id, p.id, 0, 1, max(1, text.count("\n")), "code", None, text, path, 5, None, None)]
        )
        ids[path] = store.list_chunks(conn, f.id)[0].id
    return ids


def _counts(conn: psycopg.Connection, project: str) -> dict[int, int]:
    project_id = store.get_project(conn, project).id
    rows = conn.execute("SELECT term, chunks FROM chunk_term_counts WHERE project_id = %s", (project_id,))
    return {int(t): int(n) for t, n in rows}


def _recount(conn: psycopg.Connection, project: str) -> dict[int, int]:
    """The counts computed from scratch from the chunks' texts (what the triggers must keep)."""
    project_id = store.get_project(conn, project).id
    rows = conn.execute("SELECT content FROM file_chunks WHERE project_id = %s AND lexical IS NOT NULL", (project_id,))
    counts: Counter[int] = Counter()
    documents = 0
    for (content,) in rows:
        documents += 1
        counts.update(document_weights(content).keys())
    return {**counts, -1: documents} if documents else {}


def test_database_scores_equal_rank_bm25(conn: psycopg.Connection) -> None:
    """The inner product in PostgreSQL is Okapi BM25: rank-bm25's scores on the same tokens, with the
    same average length and Lucene's idf from the counts the database keeps."""
    from rank_bm25 import BM25Okapi

    ids = _insert(conn, "alpha", CORPUS)
    _insert(conn, "beta", {"z.py": "config config config load\n"})  # another project's counts stay apart
    project_id = store.get_project(conn, "alpha").id
    query = ["load_config", "load", "config", "path"]
    dims = [term_dimension(t) for t in query]
    counts = store.term_counts(conn, project_id, [*dims, -1])
    assert counts[-1] == 5 and counts[term_dimension("config")] == 3 and counts[term_dimension("load_config")] == 1
    assert counts[term_dimension("path")] == 3  # a.py, b.py, e.py
    qvec = query_weights(query, {d: counts.get(d, 0) for d in dims}, counts[-1])
    scores = dict(
        conn.execute(
            "SELECT id, -(lexical <#> %s) FROM file_chunks WHERE project_id = %s",
            (SparseVector(qvec, DIMENSIONS), project_id),
        ).fetchall()
    )
    texts = list(CORPUS.values())
    reference = BM25Okapi([code_tokens(t) for t in texts], k1=K1, b=B)
    reference.avgdl = AVERAGE_LENGTH
    df = Counter(t for text in texts for t in set(code_tokens(text)))
    reference.idf = {t: idf(df[t], len(texts)) for t in df}
    expected = reference.get_scores(query)
    for (path, chunk_id), value in zip(ids.items(), expected, strict=True):
        assert scores[chunk_id] == pytest.approx(value, rel=1e-5), path
    assert max(scores, key=scores.__getitem__) == ids["a.py"]


def test_counts_follow_inserts_updates_deletes_and_cascades(conn: psycopg.Connection) -> None:
    ids = _insert(conn, "alpha", CORPUS)
    _insert(conn, "beta", {"z.py": "config load\n"})
    assert _counts(conn, "alpha") == _recount(conn, "alpha") and _counts(conn, "alpha")[-1] == 5
    # a chunk's text replaced by SQL with a new vector; another's vector cleared
    text = "def parse_tokens(text):\n    return text.split()\n"
    conn.execute(
        "UPDATE file_chunks SET content = %s, lexical = %s WHERE id = %s",
        (text, store.lexical_vector(text), ids["c.py"]),
    )
    conn.execute("UPDATE file_chunks SET lexical = NULL WHERE id = %s", (ids["d.py"],))
    conn.execute("UPDATE file_chunks SET token_count = 7")  # no vector changes: no count changes
    assert _counts(conn, "alpha") == _recount(conn, "alpha") and _counts(conn, "alpha")[-1] == 4
    # a file deleted (its chunks go by cascade), then the whole project
    store.delete_file(conn, store.get_project(conn, "alpha").id, "a.py")
    assert _counts(conn, "alpha") == _recount(conn, "alpha") and term_dimension("load_config") not in _counts(
        conn, "alpha"
    )
    beta = _counts(conn, "beta")
    store.delete_project(conn, "alpha")
    rows = conn.execute("SELECT DISTINCT project_id FROM chunk_term_counts").fetchall()
    assert rows == [(store.get_project(conn, "beta").id,)] and _counts(conn, "beta") == beta


def test_a_rare_exact_identifier_beats_a_common_word(db: Database) -> None:
    """Many chunks say "request" again and again; one names ``resolve_envvar_value`` once. BM25 puts
    that one first for a query with both (the common word alone still finds the chunks that say it)."""
    files = {
        f"handlers/h{i}.py": f"def handle_{i}(request):\n    request.check()\n    return request.reply(request.body)\n"
        for i in range(12)
    }
    files["settings.py"] = "def lookup(name):\n    return resolve_envvar_value(name) or default\n"
    with db.connection() as conn:
        _insert(conn, "app", files)
    query = "request resolve_envvar_value"
    hits = search(db, HashingEmbedder(), query, project="app", kinds=("chunk",), limit=3, weights=BM25_ONLY)
    assert isinstance(hits[0], ChunkHit) and hits[0].path == "settings.py"
    assert hits[0].parts.bm25 > 2 * hits[1].parts.bm25 > 0
    common = search(db, HashingEmbedder(), "request", project="app", kinds=("chunk",), limit=3, weights=BM25_ONLY)
    assert isinstance(common[0], ChunkHit) and common[0].path.startswith("handlers/") and common[0].parts.bm25 > 0


def test_bm25_in_the_score_and_its_explanation() -> None:
    weights = DEFAULT_WEIGHTS.with_(bm25=0.2, bm25_saturation=0.5)
    parts = score(similarity=0.5, bm25=0.5, weights=weights)
    assert bm25_score(0.5, weights) == pytest.approx(0.5)
    assert parts.relevance == pytest.approx(0.5 + 0.2 * 0.5) and "bm25 0.500" in parts.explain()
    linear = DEFAULT_WEIGHTS.with_(bm25=0.2, bm25_saturation=0.0)
    assert score(similarity=0.5, bm25=1.5, weights=linear).relevance == pytest.approx(0.5 + 0.2 * 1.5)
    for name in ("bm25", "bm25_saturation", "chunk_text"):
        with pytest.raises(ValueError, match=name):
            DEFAULT_WEIGHTS.with_(**{name: -0.1})


def test_a_chunk_with_more_terms_than_a_sparsevec_holds_keeps_its_heaviest(conn: psycopg.Connection) -> None:
    """pgvector stores at most 16,000 non-zero elements: a chunk of 20,000 distinct identifiers (a
    generated table) keeps the 16,000 weightiest and is stored."""
    text = " ".join(f"name{i}" for i in range(20_000)) + " repeated" * 50
    weights = document_weights(text)
    assert len(weights) == MAX_TERMS and term_dimension("repeated") in weights
    ids = _insert(conn, "big", {"table.py": text})
    stored = conn.execute("SELECT lexical FROM file_chunks WHERE id = %s", (ids["table.py"],)).fetchone()
    assert stored is not None and len(stored[0].indices()) == MAX_TERMS


def _project(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "config.py").write_text("def load_config(path):\n    return parse(read(path))\n")
    (root / "src" / "cache.py").write_text("class LruCache:\n    def get(self, key):\n        return self.items[key]\n")
    return root


def _lexical_in_step(db: Database, project: str) -> None:
    with db.connection() as conn:
        project_id = store.get_project(conn, project).id
        rows = conn.execute("SELECT content, lexical FROM file_chunks WHERE project_id = %s", (project_id,)).fetchall()
        assert rows and all(v is not None for _, v in rows)
        for content, vector in rows:
            expected = document_weights(content)
            assert dict(zip(vector.indices(), vector.values(), strict=True)) == pytest.approx(expected)
        assert _counts(conn, project) == _recount(conn, project)


def test_populate_fills_the_vectors_and_keeps_them_in_step(db: Database, settings: Settings, tmp_path: Path) -> None:
    root = _project(tmp_path / "shop")
    embedder = HashingEmbedder()
    populate_project(db, embedder, root, project="shop", settings=settings)
    _lexical_in_step(db, "shop")
    (root / "src" / "config.py").write_text("def save_settings(values):\n    write_file(values)\n")
    (root / "src" / "cache.py").unlink()
    (root / "src" / "queue.py").write_text("def enqueue_job(job):\n    jobs.append(job)\n")
    populate_project(db, embedder, root, project="shop", settings=settings)
    _lexical_in_step(db, "shop")
    with db.connection() as conn:
        counts = _counts(conn, "shop")
    assert term_dimension("load_config") not in counts and term_dimension("lrucache") not in counts
    assert counts[term_dimension("enqueue_job")] == 1 and counts[term_dimension("save_settings")] == 1
    hits = search(db, embedder, "enqueue_job", project="shop", kinds=("chunk",), limit=1, weights=BM25_ONLY)
    assert isinstance(hits[0], ChunkHit) and hits[0].path == "src/queue.py"


def test_chunks_stored_before_bm25_are_filled_without_a_model(db: Database, settings: Settings, tmp_path: Path) -> None:
    root = _project(tmp_path / "shop")
    embedder = HashingEmbedder()
    populate_project(db, embedder, root, project="shop", settings=settings)
    with db.connection() as conn:
        conn.execute("UPDATE file_chunks SET lexical = NULL")
        assert _counts(conn, "shop") == {}
    # unchanged files: populate re-chunks nothing, yet fills the vectors
    report = populate_project(db, embedder, root, project="shop", settings=settings)
    assert report.chunks_written == 0
    _lexical_in_step(db, "shop")
    with db.connection() as conn:
        conn.execute("UPDATE file_chunks SET lexical = NULL")
    assert index_missing(db, embedder, settings=settings).lexical_filled == 2
    _lexical_in_step(db, "shop")


def test_populate_as_the_agent_login_writes_the_counts(agent_db_url: str, settings: Settings, tmp_path: Path) -> None:
    root = _project(tmp_path / "shop")
    with Database(agent_db_url, max_size=2) as agent_db:
        populate_project(agent_db, HashingEmbedder(), root, project="shop", settings=settings)
        _lexical_in_step(agent_db, "shop")


def test_revision_0008_adds_bm25_and_takes_it_away(fresh_database_url: str) -> None:
    from alembic.script import ScriptDirectory

    from knowledgebase.db.schema import alembic_config, downgrade, upgrade

    # the revision before 0008, read from the migration (renumbering it changes one line there)
    previous = ScriptDirectory.from_config(alembic_config(fresh_database_url)).get_revision("0008").down_revision
    assert isinstance(previous, str)

    def schema() -> tuple[bool, bool]:
        with psycopg.connect(fresh_database_url) as conn:
            column = conn.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'file_chunks'"
                " AND column_name = 'lexical'"
            ).fetchone()
            table = conn.execute("SELECT to_regclass('chunk_term_counts') IS NOT NULL").fetchone()
            return bool(column and column[0]), bool(table and table[0])

    upgrade(fresh_database_url, previous)
    with psycopg.connect(fresh_database_url) as conn:
        p = conn.execute("INSERT INTO projects (name) VALUES ('old') RETURNING id").fetchone()
        assert p is not None
        f = conn.execute(
            "INSERT INTO project_files (project_id, path, content, content_hash, size_bytes)"
            " VALUES (%s, 'a.py', 'x', 'h', 1) RETURNING id",
            (p[0],),
        ).fetchone()
        assert f is not None
        conn.execute(
            "INSERT INTO file_chunks (file_id, project_id, chunk_index, start_line, end_line, content, content_hash)"
            " VALUES (%s, %s, 0, 1, 1, 'def old_function(): pass', 'c')",
            (f[0], p[0]),
        )
    assert schema() == (False, False)
    upgrade(fresh_database_url)
    assert schema() == (True, True)
    with psycopg.connect(fresh_database_url) as conn:
        # the old chunk is kept, without a vector (and not counted) until populate or reembed --missing
        assert conn.execute("SELECT count(*), count(lexical) FROM file_chunks").fetchone() == (1, 0)
        assert conn.execute("SELECT count(*) FROM chunk_term_counts").fetchone() == (0,)
        assert store.fill_lexical(conn) == 1
        assert conn.execute("SELECT chunks FROM chunk_term_counts WHERE term = -1").fetchone() == (1,)
    downgrade(fresh_database_url, previous)
    assert schema() == (False, False)
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT count(*) FROM file_chunks").fetchone() == (1,)


def test_a_query_with_no_terms_or_no_vectors_stored_has_no_bm25(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    embedder = HashingEmbedder()
    populate_project(db, embedder, _project(tmp_path / "shop"), project="shop", settings=settings)
    hits = search(db, embedder, "the of and", project="shop", kinds=("chunk",), limit=1)  # stop words only
    assert hits and hits[0].parts.bm25 == 0.0
    assert search(db, embedder, "load_config", project="shop", kinds=("chunk",), limit=1)[0].parts.bm25 > 0
    with db.connection() as conn:
        conn.execute("UPDATE file_chunks SET lexical = NULL")  # as after migration 0008, before populate
    hits = search(db, embedder, "load_config", project="shop", kinds=("chunk",), limit=1)
    assert hits and hits[0].parts.bm25 == 0.0 and np.isfinite(hits[0].score)


def test_chunks_weigh_bm25_where_facts_keep_ts_rank_cd() -> None:
    """For a chunk BM25 replaces ts_rank_cd (``chunk_text`` 0); facts and commands have no BM25 and
    keep their full-text bonus; the old ranking (LEGACY) is ts_rank_cd for chunks too."""
    chunk = score(similarity=0.5, text_rank=0.3, bm25=1.0, chunk=True)
    assert chunk.relevance == pytest.approx(0.5 + DEFAULT_WEIGHTS.bm25 * 0.5) and chunk.text_score > 0
    fact = score(similarity=0.5, text_rank=0.3)
    assert fact.relevance == pytest.approx(0.5 + DEFAULT_WEIGHTS.text * 0.5)
    legacy = DEFAULT_WEIGHTS.with_(**LEGACY)
    old = score(similarity=0.5, text_rank=0.3, bm25=1.0, chunk=True, weights=legacy)
    assert old.relevance == pytest.approx(0.5 + DEFAULT_WEIGHTS.text * 0.5)


def test_a_chunk_score_breakdown_adds_up_with_bm25_and_its_role_prior() -> None:
    from knowledgebase.tools import insights

    parts = score(similarity=0.6, text_rank=0.3, bm25=0.8, identifier_match=True, role_prior=-0.16, chunk=True)
    breakdown = insights.score_breakdown(parts)
    assert breakdown.text == pytest.approx(DEFAULT_WEIGHTS.bm25 * bm25_score(0.8)) and breakdown.role == -0.16
    total = breakdown.vector + breakdown.text + breakdown.identifier + breakdown.role
    assert total + breakdown.confidence + breakdown.recency == pytest.approx(parts.score)
