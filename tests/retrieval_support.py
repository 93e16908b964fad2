"""Helpers for retrieval tests: put files into the store as chunks, without the ingestion pipeline."""

from __future__ import annotations

import hashlib

import psycopg

from knowledgebase import store
from knowledgebase.embedding import Embedder, bind_model

SOURCES = {
    "src/db.py": '''\
def open_pool(url, size=4):
    """Open a pool of PostgreSQL connections."""
    from psycopg_pool import ConnectionPool
    return ConnectionPool(url, max_size=size)


def run_migrations(url):
    """Upgrade the schema to the newest revision."""
    config = alembic_config(url)
    command.upgrade(config, "head")
''',
    "src/text.py": '''\
def slugify(title):
    """Turn a title into a lowercase url slug."""
    return "-".join(title.lower().split())


def word_count(text):
    """Count the words in a text."""
    return len(text.split())
''',
    "src/mail.py": '''\
def send_invoice_email(customer, invoice):
    """Email the invoice as a PDF attachment to the customer."""
    message = EmailMessage()
    message["To"] = customer.email
    message.add_attachment(invoice.pdf_bytes(), maintype="application", subtype="pdf")
    smtp.send_message(message)


class RetryPolicy:
    """How often to retry a failed delivery, with exponential backoff."""
    attempts = 5
    backoff_seconds = 2.0
''',
}


def blocks(source: str) -> list[tuple[int, int, str]]:
    """Top-level blocks of ``source`` separated by blank lines: (start_line, end_line, text), 1-based."""
    out: list[tuple[int, int, str]] = []
    lines = source.split("\n")
    start: int | None = None
    for number, line in enumerate([*lines, ""], start=1):
        if line.strip() and start is None:
            start = number
        elif not line.strip() and start is not None:
            end = number - 1
            if number < len(lines) and lines[number].startswith((" ", "\t")):
                continue  # a blank line inside an indented body
            out.append((start, end, "\n".join(lines[start - 1 : end])))
            start = None
    return out


def index_files(
    conn: psycopg.Connection,
    embedder: Embedder,
    project: str,
    files: dict[str, str],
    *,
    spans: dict[str, list[tuple[int, int]]] | None = None,
) -> store.Project:
    """Store ``files`` of ``project`` as chunks (one per top-level block, or the given line spans)."""
    proj = store.ensure_project(conn, project, f"/src/{project}")
    model_id = bind_model(conn, embedder)
    for path, source in files.items():
        digest = hashlib.sha256(source.encode()).hexdigest()
        file = store.upsert_file(
            conn, store.NewFile(proj.id, path, source, digest, len(source.encode()), "python", None)
        )
        store.delete_chunks(conn, file.id)
        lines = source.split("\n")
        if spans and path in spans:
            parts = [(s, e, "\n".join(lines[s - 1 : e])) for s, e in spans[path]]
        else:
            parts = blocks(source)
        vectors = embedder.embed_documents([text for _, _, text in parts])
        store.insert_chunks(
            conn,
            [
                store.NewChunk(
                    file_id=file.id,
                    project_id=proj.id,
                    chunk_index=i,
                    start_line=start,
                    end_line=end,
                    kind="code",
                    symbol=None,
                    content=text,
                    content_hash=hashlib.sha256(text.encode()).hexdigest(),
                    token_count=embedder.count_tokens(text),
                    embedding=vector,
                    embedding_model_id=model_id,
                )
                for i, ((start, end, text), vector) in enumerate(zip(parts, vectors, strict=True))
            ],
        )
    return proj
