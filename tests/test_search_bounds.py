"""Searches whose work is bounded: huge queries, queries PostgreSQL could not parse, slow statements."""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from knowledgebase.cli import cli
from knowledgebase.db import Database
from knowledgebase.search.hits import ChunkHit
from knowledgebase.search.retrieval import search
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder
from tests.test_cli_store import KB, _env

SIZES = {"120KB": 120_000, "1MB": 1_000_000}


def huge_query(size: int) -> str:
    """A question followed by ``size`` characters of distinct words (each one a full-text term)."""
    words = (f"w{n:x}" for n in range(size))
    text = "send_invoice_email to the customer " + " ".join(words)
    return text[:size]


@pytest.fixture
def indexed(db: Database, fake_embedder: HashingEmbedder) -> Database:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    return db


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_a_huge_query_searches_by_its_head(indexed: Database, fake_embedder: HashingEmbedder, size: int) -> None:
    hits = search(indexed, fake_embedder, huge_query(size), project="alpha", limit=3)
    top = hits[0]
    assert isinstance(top, ChunkHit) and top.path == "src/mail.py"
    assert top.parts.identifier_match and top.parts.text_rank > 0  # the full text still ran, on the first terms


@pytest.mark.parametrize("size", SIZES.values(), ids=SIZES.keys())
def test_kb_search_of_a_huge_query_on_stdin_answers(
    indexed: Database, db_url: str, fake_embedder: HashingEmbedder, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    import knowledgebase.embedding

    monkeypatch.setattr(knowledgebase.embedding, "embedder_from_settings", lambda *_args, **_kwargs: fake_embedder)
    result = CliRunner().invoke(
        cli, ["search", "-", "--project", "alpha", "--json", "--database-url", db_url], input=huge_query(size)
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["path"] == "src/mail.py"


def test_a_search_stuck_past_its_timeout_is_one_line(db: Database, db_url: str, real_embedder, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with db.connection() as conn:
        index_files(conn, real_embedder, "alpha", SOURCES)  # the model `kb` loads
    locked = threading.Event()
    release = threading.Event()

    def hold_lock() -> None:  # another session holds file_chunks: every chunk statement waits
        with psycopg.connect(db_url) as conn:
            conn.execute("LOCK TABLE file_chunks IN ACCESS EXCLUSIVE MODE")
            locked.set()
            release.wait(120)

    holder = threading.Thread(target=hold_lock, daemon=True)
    holder.start()
    assert locked.wait(30)
    try:
        proc = subprocess.run(
            [*KB, "search", "invoice email", "--project", "alpha"],
            env=_env(KB_HOME=str(tmp_path / "home"), KB_DATABASE_URL=db_url),
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        release.set()
        holder.join(30)
    assert proc.returncode == 1, proc.stdout
    assert proc.stderr.strip().splitlines() == [
        "kb: error: the search did not finish within 2000 ms: narrow it (--project, --glob, --kind) "
        "or try again when the database is less busy"
    ]


def test_a_search_whose_full_text_runs_past_the_timeout_is_answered_by_vectors(
    indexed: Database, db_url: str, fake_embedder: HashingEmbedder
) -> None:
    """The first attempt waits on a lock until it is cancelled; the lock is released once the retry
    (without full text) waits in its turn, so the retry answers."""
    locker = psycopg.connect(db_url)
    locker.execute("LOCK TABLE file_chunks IN ACCESS EXCLUSIVE MODE")
    found: list[list[object]] = []
    worker = threading.Thread(
        target=lambda: found.append(search(indexed, fake_embedder, "send_invoice_email", project="alpha")), daemon=True
    )
    worker.start()
    waits: set[object] = set()
    try:
        with psycopg.connect(db_url, autocommit=True) as watcher:
            while len(waits) < 2 and worker.is_alive():  # two statements of the search have waited on the lock
                waits.update(
                    row[0]
                    for row in watcher.execute(
                        "SELECT query_start FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s",
                        (locker.info.dbname,),
                    )
                )
    finally:
        locker.rollback()
        locker.close()
    worker.join(60)
    (hits,) = found
    assert hits and all(hit.parts.text_rank == 0 for hit in hits)  # type: ignore[attr-defined]
    top = hits[0]
    assert isinstance(top, ChunkHit) and top.path == "src/mail.py"  # still found, by similarity
