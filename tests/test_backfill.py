"""`kb reembed --missing`: rows that plain SQL (written against the seed design) inserted become searchable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.db.status import store_status
from knowledgebase.embedding import Embedder
from knowledgebase.errors import ModelMismatch
from knowledgebase.index.backfill import index_missing
from knowledgebase.index.ingest import populate_project
from knowledgebase.search.retrieval import search
from tests.support import HashingEmbedder

AWS_KEY = "AKIAIOSFODNN7EXAMPLE"
MAILER = '''"""Outgoing mail."""


def send_invoice_email(customer, invoice):
    """Email the invoice PDF to the customer's billing address."""
    message = render_invoice(invoice)
    return smtp_send(customer.billing_email, message)
'''


def _design_rows(url: str) -> None:
    """What the design's populate_context.py / db_utils.py would write: design columns only."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO tasks (id) VALUES ('T-sql')")
        conn.execute(
            "INSERT INTO project_files (task_id, path, content) VALUES ('T-sql', 'billing/mailer.py', %s)", (MAILER,)
        )
        conn.execute(
            "INSERT INTO project_files (path, content) VALUES ('deploy.env', %s)",
            (f"AWS_ACCESS_KEY_ID={AWS_KEY}\nREGION=eu-west-1\n",),
        )
        conn.execute(
            "INSERT INTO knowledge (task_id, fact_label, fact_value, extracted_from, confidence_score)"
            " VALUES ('T-sql', 'deploy region', 'production runs in eu-west-1, key ' || %s, 'prompt', 0.9)",
            (AWS_KEY,),
        )


def test_rows_written_by_plain_sql_become_searchable(
    db: Database, db_url: str, settings: Settings, real_embedder: Embedder
) -> None:
    _design_rows(db_url)
    assert store_status(settings).waiting == {"files": 2, "facts": 1, "summaries": 0}
    assert search(db, real_embedder, "which function emails invoices to customers?") == []

    report = index_missing(db, real_embedder, settings=settings)

    assert (report.files_chunked, report.facts_embedded, report.skipped) == (2, 1, ())
    assert report.chunks_written >= 2 and report.secrets_redacted == 2
    assert store_status(settings).waiting == {"files": 0, "facts": 0, "summaries": 0}
    hits = search(db, real_embedder, "which function emails invoices to customers?", limit=3)
    assert hits[0].kind == "chunk" and hits[0].path == "billing/mailer.py"  # type: ignore[attr-defined]
    facts = search(db, real_embedder, "in which AWS region does production run?", kinds=("fact",), limit=1)
    assert facts[0].fact_label == "deploy region"  # type: ignore[attr-defined]
    with db.connection() as conn:
        stored = " ".join(
            str(value)
            for row in conn.execute(
                "SELECT f.content, k.fact_value, c.content FROM project_files f, knowledge k, file_chunks c"
            )
            for value in row
        )
        language = conn.execute("SELECT language FROM project_files WHERE path = 'billing/mailer.py'").fetchone()
    assert AWS_KEY not in stored and "[REDACTED" in stored
    assert language == ("python",)

    again = index_missing(db, real_embedder, settings=settings)  # idempotent: nothing waits
    assert (again.files_chunked, again.facts_embedded, again.chunks_embedded) == (0, 0, 0)


def test_a_file_changed_by_sql_is_chunked_again_and_populate_agrees_afterwards(
    db: Database, db_url: str, settings: Settings, tmp_path: Path
) -> None:
    embedder = HashingEmbedder()
    root = tmp_path / "shop"
    root.mkdir()
    (root / "app.py").write_text("def total(items):\n    return sum(items)\n")
    populate_project(db, embedder, root, settings=settings)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE project_files SET content = 'def total(items):\n    return 0\n'")
    report = index_missing(db, embedder, settings=settings)
    assert report.files_chunked == 1
    with db.connection() as conn:
        assert conn.execute("SELECT content FROM file_chunks").fetchone()[0].endswith("return 0")  # type: ignore[index]
    (root / "app.py").write_text("def total(items):\n    return 0\n")  # the disk now says the same
    again = populate_project(db, embedder, root, settings=settings)
    assert (again.changed, again.unchanged, again.chunks_embedded) == (0, 1, 0)


def test_huge_and_binary_rows_are_skipped_with_their_reason_and_keep_waiting(
    db: Database, db_url: str, settings: Settings
) -> None:
    small = Settings(home=settings.home, database_url=db_url, max_file_bytes=1000)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("INSERT INTO project_files (path, content) VALUES ('big.log', repeat('line of log\n', 500))")
        conn.execute("INSERT INTO project_files (path, content) VALUES ('blob.bin', repeat(chr(1) || chr(2), 400))")
        conn.execute("INSERT INTO project_files (path, content) VALUES ('bad.txt', repeat(chr(65533), 20))")
        conn.execute("INSERT INTO project_files (path, content) VALUES ('ok.txt', 'fine')")
    report = index_missing(db, HashingEmbedder(), settings=small)
    reasons = {skip.path: skip.reason for skip in report.skipped}
    assert reasons.keys() == {"big.log", "blob.bin", "bad.txt"} and report.files_chunked == 1
    assert reasons["big.log"].startswith("too large") and reasons["blob.bin"].startswith("binary")
    assert store_status(small).waiting["files"] == 3


def test_missing_refuses_a_model_that_is_not_the_store_s(db: Database, db_url: str, settings: Settings) -> None:
    index_missing(db, HashingEmbedder(), settings=settings)  # binds the store to the hashing model
    other = HashingEmbedder(name="another-model")
    with pytest.raises(ModelMismatch, match="kb reembed"):
        index_missing(db, other, settings=settings)


@pytest.mark.slow
def test_kb_status_and_reembed_missing_from_the_command_line(db_url: str, tmp_path: Path) -> None:
    _design_rows(db_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")} | {"KB_HOME": str(tmp_path)}
    kb = [sys.executable, "-m", "knowledgebase"]

    def run(*args: str) -> str:
        proc = subprocess.run(
            [*kb, *args, "--database-url", db_url], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "2 files to chunk, 1 facts to embed, 0 chunks without definition summaries" in run("status")
    report = json.loads(run("reembed", "--missing", "--json"))
    assert (report["files_chunked"], report["facts_embedded"]) == (2, 1)
    assert json.loads(run("status", "--json"))["waiting"] == {"files": 0, "facts": 0, "summaries": 0}


def test_missing_gives_chunks_stored_before_summaries_theirs(
    db: Database, settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "lib"
    root.mkdir()
    (root / "pool.py").write_text("def dispose(pool):\n    pool.close()\n\n\ndef status(pool):\n    return pool.size\n")
    embedder = HashingEmbedder()
    populate_project(db, embedder, root, settings=settings)
    with db.connection() as conn:
        before = conn.execute("SELECT count(*) FROM chunk_summaries").fetchone()
        conn.execute("DELETE FROM chunk_summaries")  # as a store migrated to 0009 holds them
    assert before is not None and before[0] > 0
    assert store_status(settings).waiting["summaries"] > 0
    report = index_missing(db, embedder, settings=settings)
    assert report.summaries_embedded == before[0] and report.files_chunked == 0
    with db.connection() as conn:
        assert conn.execute("SELECT count(*) FROM chunk_summaries").fetchone() == before
    assert store_status(settings).waiting["summaries"] == 0
