"""Definition summaries: the short texts (name in words, signature) embedded beside a chunk, stored in
``chunk_summaries`` (migration 0009), kept in step with the chunks by populate, backfill and reembed,
and used by search as the better of a chunk's two similarities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import psycopg
import pytest

from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.db.schema import upgrade
from knowledgebase.index.ingest import populate_project, reembed_store
from knowledgebase.index.summaries import signature, summary_texts
from knowledgebase.ranking import DEFAULT_WEIGHTS, score
from knowledgebase.search.hits import ChunkHit
from knowledgebase.search.retrieval import rerank, search, search_candidates
from tests.support import HashingEmbedder

POOL = '''"""Connection pools."""


class Pool:
    """Keeps connections."""

    def status(self) -> str:
        return f"{self.size} open"

    def dispose(self) -> None:
        for conn in self._all:
            conn.close()

    def recreate(self) -> "Pool":
        return Pool(self.size)

    def _create_connection(self, dsn: str, timeout: float, retries: int, backoff: float) -> "Connection":
        """Open one connection, retrying with backoff (long enough that the class is cut into parts)."""
        attempt = 0
        while True:
            try:
                connection = self._dialect.connect(dsn, timeout=timeout)
                connection.execute("SET application_name = 'pool'")
                connection.execute("SET statement_timeout = 30000")
                self._all.append(connection)
                return connection
            except TimeoutError as error:
                attempt += 1
                if attempt > retries:
                    raise ConnectionError(f"could not connect to {dsn} after {retries} retries") from error
                self._sleep(backoff * 2**attempt)
            except OSError as error:
                self._log.warning("connection to %s failed: %s", dsn, error)
                attempt += 1
                if attempt > retries:
                    raise
                self._sleep(backoff * 2**attempt)
'''

BUSY = '''def render_page(template, context, *, strict=False, cache=None):
    """Render a template page."""
    source = template.load()
    tree = source.parse(strict=strict)
    for node in tree.walk():
        node.bind(context)
    html = tree.render()
    if cache is not None:
        cache[template.name] = html
    return html
'''


def pools(tmp_path: Path) -> Path:
    """A project of one file, ``pool.py``."""
    root = tmp_path / "pools"
    root.mkdir()
    (root / "pool.py").write_text(POOL)
    return root


def summaries_of(conn: psycopg.Connection) -> dict[str | None, list[tuple[int, str]]]:
    rows = conn.execute(
        "SELECT c.symbol, s.ordinal, s.summary_hash FROM chunk_summaries s JOIN file_chunks c ON c.id = s.chunk_id"
        " ORDER BY c.symbol, s.ordinal"
    ).fetchall()
    out: dict[str | None, list[tuple[int, str]]] = {}
    for symbol, ordinal, summary_hash in rows:
        out.setdefault(symbol, []).append((ordinal, summary_hash))
    return out


# --------------------------------------------------------------------------- the texts


def test_a_summary_names_the_definition_in_words_and_gives_its_signature() -> None:
    content = "    def get_current_heads(self,\n            revision: str) -> tuple:\n        return ()"
    (text,) = summary_texts("alembic/script/base.py", "ScriptDirectory.get_current_heads", content)
    assert text.split("\n") == [
        "alembic/script/base.py · ScriptDirectory.get_current_heads",
        "script directory get current heads",
        "def get_current_heads(self, revision: str) -> tuple:",
    ]


def test_a_chunk_of_several_definitions_gets_one_summary_each_and_folded_names_none() -> None:
    content = "def first(a):\n    return a\n\ndef second(b):\n    return b"
    texts = summary_texts("m.py", "first, second (+2)", content)
    assert [t.split("\n")[-1] for t in texts] == ["def first(a):", "def second(b):"]


def test_a_signature_is_not_taken_from_a_call_a_comment_a_return_or_a_decorator() -> None:
    lines = ["    # dispose of it", "    @dispose.setter", "    return dispose(x)", "    self.dispose()"]
    assert signature(lines, "Pool.dispose") is None
    assert signature([*lines, "    def dispose(self):"], "Pool.dispose") == "def dispose(self):"


def test_signatures_of_other_languages_and_sections_are_found_by_name() -> None:
    go = ["// Open opens it.", "func (s *Store) Open(path string,", "\tmode int) error {", "\treturn nil"]
    assert signature(go, "Store.Open") == "func (s *Store) Open(path string, mode int) error {"
    js = ["export async function loadConfig(dir) {", "  return dir", "}"]
    assert signature(js, "loadConfig") == "export async function loadConfig(dir) {"
    assert summary_texts("README.md", "Install > Linux", "Run make.") == ["README.md · Install > Linux\ninstall linux"]
    assert summary_texts("setup.cfg", None, "[metadata]") == []


# --------------------------------------------------------------------------- storage


def test_populate_stores_one_summary_per_definition_and_reuses_them(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = pools(tmp_path)
    embedder = HashingEmbedder()
    first = populate_project(db, embedder, root, settings=settings)
    with db.connection() as conn:
        stored = summaries_of(conn)
    merged = [symbol for symbol in stored if symbol and "Pool.dispose" in symbol]
    assert len(merged) == 1 and len(stored[merged[0]]) == len(merged[0].split(", "))
    assert first.summaries_embedded == sum(len(v) for v in stored.values())
    # an edit outside the definitions: every summary vector is found again by its hash, none embedded
    (root / "pool.py").write_text(POOL.replace('"""Connection pools."""', '"""Pools of connections."""'))
    calls = embedder.embedded
    second = populate_project(db, embedder, root, settings=settings)
    assert second.changed == 1 and second.summaries_embedded == 0
    assert embedder.embedded - calls == second.chunks_embedded
    with db.connection() as conn:
        assert summaries_of(conn) == stored
        # deleting the file releases them to the vector cache: adding it back embeds nothing
        (root / "pool.py").unlink()
        populate_project(db, embedder, root, settings=settings)
        assert summaries_of(conn) == {}
    (root / "pool.py").write_text(POOL)
    calls = embedder.embedded
    third = populate_project(db, embedder, root, settings=settings)
    assert third.added == 1 and embedder.embedded == calls


def test_chunks_stored_before_summaries_get_them_from_the_next_populate(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = pools(tmp_path)
    embedder = HashingEmbedder()
    populate_project(db, embedder, root, settings=settings)
    with db.connection() as conn:
        before = summaries_of(conn)
        conn.execute("DELETE FROM chunk_summaries")  # as a store migrated to 0009 holds them
    calls = embedder.embedded
    report = populate_project(db, embedder, root, settings=settings)
    assert report.unchanged == 1 and report.chunks_embedded == 0
    assert report.summaries_embedded == embedder.embedded - calls == sum(len(v) for v in before.values())
    with db.connection() as conn:
        assert summaries_of(conn) == before
    calls = embedder.embedded
    populate_project(db, embedder, root, settings=settings)
    assert embedder.embedded == calls  # done once
    with db.connection() as conn:
        conn.execute("DELETE FROM chunk_summaries")
    report = reembed_store(db, embedder)  # kb reembed, same model: the chunks' vectors are reused
    assert report.chunks_embedded == 0 and report.summaries_embedded == sum(len(v) for v in before.values())
    with db.connection() as conn:
        assert summaries_of(conn) == before


def test_reembed_to_another_dimension_writes_every_summary_again(
    private_db: Database, fresh_database_url: str, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", database_url=fresh_database_url)
    root = pools(tmp_path)
    populate_project(private_db, HashingEmbedder(), root, settings=settings)
    with private_db.connection() as conn:
        before = summaries_of(conn)
    new = HashingEmbedder(name="hashing-64", dimension=64)
    report = reembed_store(private_db, new)
    assert report.retyped and report.summaries_embedded == sum(len(v) for v in before.values())
    with private_db.connection() as conn:
        assert summaries_of(conn) == before
        rows = conn.execute(
            "SELECT f.path, c.symbol, c.content, s.ordinal, s.embedding FROM chunk_summaries s"
            " JOIN file_chunks c ON c.id = s.chunk_id JOIN project_files f ON f.id = c.file_id"
        ).fetchall()
    for path, symbol, content, ordinal, vector in rows:
        expected = new.embed_documents([summary_texts(path, symbol, content)[ordinal]])[0]
        np.testing.assert_allclose(vector.to_numpy(), expected, atol=1e-6)
    # searching with the new model reads summaries of its dimension only (a mix would raise)
    hits = search(private_db, new, "dispose pool", project="pools", kinds=("chunk",))
    assert hits and all(isinstance(h, ChunkHit) for h in hits)


def test_revision_0009_adds_summaries_and_takes_them_away(fresh_database_url: str) -> None:
    from knowledgebase.db.schema import downgrade

    upgrade(fresh_database_url)
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT to_regclass('chunk_summaries') IS NOT NULL").fetchone() == (True,)
    downgrade(fresh_database_url, "0008")
    with psycopg.connect(fresh_database_url) as conn:
        assert conn.execute("SELECT to_regclass('chunk_summaries') IS NOT NULL").fetchone() == (False,)
    upgrade(fresh_database_url)


# --------------------------------------------------------------------------- ranking


def test_relevance_uses_the_better_of_the_two_similarities_unless_summaries_are_off() -> None:
    on = score(similarity=0.3, summary_similarity=0.6)
    off = score(similarity=0.3, summary_similarity=0.6, weights=DEFAULT_WEIGHTS.with_(summaries=False))
    lower = score(similarity=0.5, summary_similarity=0.2)
    assert on.relevance == pytest.approx(0.6) and off.relevance == pytest.approx(0.3)
    assert lower.relevance == pytest.approx(0.5) and score(similarity=0.4).relevance == pytest.approx(0.4)
    assert "summary 0.600" in on.explain()


def test_a_small_method_merged_with_others_is_found_by_its_own_name(
    db: Database, settings: Settings, tmp_path: Path, real_embedder: object
) -> None:
    root = tmp_path / "app"
    root.mkdir()
    (root / "pool.py").write_text(POOL)
    (root / "pages.py").write_text(BUSY)
    populate_project(db, real_embedder, root, settings=settings)  # type: ignore[arg-type]
    query = "Dispose of this pool."
    candidates = search_candidates(db, real_embedder, query, project="app", kinds=("chunk",))  # type: ignore[arg-type]
    pool = next(h for h in candidates if isinstance(h, ChunkHit) and h.symbol and "Pool.dispose" in h.symbol)
    assert pool.parts.summary_similarity is not None
    assert pool.parts.summary_similarity > pool.parts.similarity + 0.05  # its short vector is nearer
    best = rerank(candidates, limit=1, query=query)[0]
    assert isinstance(best, ChunkHit) and best.id == pool.id
    assert best.parts.used_similarity == pytest.approx(pool.parts.summary_similarity)


def test_a_minified_line_gives_a_bounded_signature() -> None:
    line = "function render(a,b){" + "x=a+b;" * 200_000 + "}"  # 1.2 MB on one line
    (text,) = summary_texts("dist/app.min.js", "render", line)
    assert text.split("\n")[-1].startswith("function render(a,b){") and len(text) < 400
