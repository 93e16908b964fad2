"""kb reembed: moving a store to another model, retyping vector columns and rebuilding HNSW indexes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

import knowledgebase.index.reembed as reembed
from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.embedding import bind_model
from knowledgebase.errors import ModelMismatch
from knowledgebase.index.chunking import embedding_text
from knowledgebase.index.ingest import ReembedProgress, populate_project, reembed_store
from tests.support import HashingEmbedder
from tests.test_ingest import make_project

DIMENSIONS = """
SELECT attrelid::regclass::text, atttypmod FROM pg_attribute
 WHERE attname = 'embedding' AND attrelid IN ('file_chunks'::regclass, 'knowledge'::regclass) ORDER BY 1
"""
HNSW = "SELECT indexname FROM pg_indexes WHERE indexdef LIKE '%hnsw%' ORDER BY 1"


def _fill(db: Database, embedder: HashingEmbedder, root: Path, settings: Settings) -> int:
    populate_project(db, embedder, make_project(root), settings=settings)
    with db.connection() as conn:
        project_id = store.get_project(conn, root.name).id
        model_id = bind_model(conn, embedder)
        fact = store.insert_knowledge(
            conn,
            store.NewKnowledge(
                fact_label="deploy",
                fact_value="run make release",
                project_id=project_id,
                embedding=embedder.embed_documents(["deploy: run make release"])[0],
                embedding_model_id=model_id,
            ),
        )
    return fact.id


def _assert_embedded_by(db: Database, embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        model = store.active_model(conn)
        assert model is not None and (model.name, model.dimension) == (embedder.name, embedder.dimension)
        rows = conn.execute(
            "SELECT f.path, c.symbol, c.content, c.embedding, c.embedding_model_id"
            " FROM file_chunks c JOIN project_files f ON f.id = c.file_id"
        ).fetchall()
        facts = conn.execute("SELECT fact_label, fact_value, embedding, embedding_model_id FROM knowledge").fetchall()
    assert rows and facts
    for path, symbol, content, vector, model_id in rows:
        assert model_id == model.id
        expected = embedder.embed_documents([embedding_text(path, symbol, content)])[0]
        np.testing.assert_allclose(vector.to_numpy(), expected, rtol=1e-6, atol=1e-6)
    for label, value, vector, model_id in facts:
        assert model_id == model.id
        np.testing.assert_allclose(vector.to_numpy(), embedder.embed_query(f"{label}: {value}"), atol=1e-6)


def test_reembed_to_another_dimension_retypes_columns_and_rebuilds_indexes(
    private_db: Database, fresh_database_url: str, tmp_path: Path
) -> None:
    settings = Settings(home=tmp_path / "home", database_url=fresh_database_url)
    old = HashingEmbedder()
    _fill(private_db, old, tmp_path / "demo", settings)
    new = HashingEmbedder(name="hashing-64", dimension=64)
    events: list[ReembedProgress] = []
    report = reembed_store(private_db, new, progress=events.append)
    assert report.retyped and (report.previous_model, report.previous_dimension) == ("test-hashing", 384)
    assert (report.model, report.dimension) == ("hashing-64", 64)
    assert report.facts_embedded == 1 and report.chunks_embedded > 0
    assert events[-1].phase == "done" and events[-1].done == events[-1].total
    with private_db.connection() as conn:
        assert conn.execute(DIMENSIONS).fetchall() == [("file_chunks", 64), ("knowledge", 64)]
        assert [r[0] for r in conn.execute(HNSW).fetchall()] == [
            "file_chunks_embedding_hnsw",
            "knowledge_embedding_hnsw",
        ]
        project_id = store.get_project(conn, "demo").id
        matches = store.nearest_chunks(conn, project_id, new.embed_query("start server detail"), 1)
        assert matches and matches[0].symbol == "start_server"
        with pytest.raises(ModelMismatch, match="kb reembed"):
            bind_model(conn, old)
    _assert_embedded_by(private_db, new)
    again = populate_project(private_db, new, tmp_path / "demo", settings=settings)
    assert again.unchanged == 4 and again.chunks_embedded == 0


def test_reembed_to_a_model_of_the_same_dimension_keeps_the_indexes(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    old = HashingEmbedder()
    _fill(db, old, tmp_path / "demo", settings)
    populate_project(db, old, tmp_path / "demo", settings=settings, project="copy")  # the same chunks twice
    new = HashingEmbedder(name="hashing-b")
    report = reembed_store(db, new)
    assert not report.retyped
    with db.connection() as conn:
        unique = conn.execute("SELECT count(DISTINCT content_hash), count(*) FROM file_chunks").fetchone()
        assert unique is not None and len(conn.execute(HNSW).fetchall()) == 2
    assert report.chunks_embedded == unique[0] and report.chunks_reused == unique[1] - unique[0]
    assert report.summaries_embedded > 0  # the definitions' short texts, once each
    assert new.embedded == unique[0] + report.summaries_embedded + 1  # every distinct chunk once, plus the fact
    _assert_embedded_by(db, new)


def test_reembed_with_the_current_model_does_nothing(db: Database, settings: Settings, tmp_path: Path) -> None:
    embedder = HashingEmbedder()
    _fill(db, embedder, tmp_path / "demo", settings)
    calls = embedder.calls
    report = reembed_store(db, embedder)
    assert (report.chunks_embedded, report.facts_embedded, report.retyped) == (0, 0, False)
    assert embedder.calls == calls


class CrashingEmbedder(HashingEmbedder):
    def __init__(self, name: str, dimension: int, survive: int) -> None:
        super().__init__(name=name, dimension=dimension)
        self.survive = survive

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if self.calls >= self.survive:
            raise RuntimeError("simulated crash")
        return super().embed_documents(texts)


def test_an_interrupted_reembed_is_finished_by_the_next_run(
    private_db: Database, fresh_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(home=tmp_path / "home", database_url=fresh_database_url)
    _fill(private_db, HashingEmbedder(), tmp_path / "demo", settings)
    monkeypatch.setattr(reembed, "BATCH", 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        reembed_store(private_db, CrashingEmbedder("hashing-64", 64, survive=2))
    with private_db.connection() as conn:
        model = store.active_model(conn)
        assert model is not None and model.name == "hashing-64"  # the store moved; old-model agents are refused
        done = conn.execute("SELECT count(*) FROM file_chunks WHERE embedding IS NOT NULL").fetchone()
        assert done == (4,)
        assert conn.execute(HNSW).fetchall() == []
    finisher = HashingEmbedder(name="hashing-64", dimension=64)
    report = reembed_store(private_db, finisher)
    assert not report.retyped and report.chunks_embedded > 0 and report.facts_embedded == 1
    with private_db.connection() as conn:
        assert len(conn.execute(HNSW).fetchall()) == 2
    _assert_embedded_by(private_db, finisher)


def test_reembed_an_empty_store_prepares_it_for_the_model(private_db: Database) -> None:
    report = reembed_store(private_db, HashingEmbedder(name="tiny", dimension=8))
    assert report.retyped and report.previous_model is None
    with private_db.connection() as conn:
        assert conn.execute(DIMENSIONS).fetchall() == [("file_chunks", 8), ("knowledge", 8)]
        assert bind_model(conn, HashingEmbedder(name="tiny", dimension=8)) > 0
