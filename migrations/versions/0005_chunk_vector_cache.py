"""Vectors of deleted chunks, kept for a while so that indexing the same text again embeds nothing.

Revision ID: 0005
Revises: 0004

A populate that deletes files (they left the folder, or the project moved to another root) or
replaces a changed file's chunks releases their vectors into ``chunk_vector_cache``, keyed like the
reuse lookup: the chunk's ``content_hash`` (the SHA-256 of its embedded text) and the model. The
next populate that needs one of those hashes takes the vector from there instead of the model; rows
are pruned by ``released_at`` after ``knowledgebase.index.ingest.RELEASED_VECTOR_DAYS``. The column
has no fixed dimension, so moving the store to another model (``kb reembed``) leaves it alone: rows of
another model are never read, and age out. The agents' role (``kb_agent``, 0004) may refresh and
prune it: it holds copies of vectors, nothing of the audit trail.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE chunk_vector_cache (
    content_hash       TEXT NOT NULL,
    embedding_model_id INTEGER NOT NULL REFERENCES embedding_models(id) ON DELETE CASCADE,
    embedding          vector NOT NULL,
    released_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (content_hash, embedding_model_id)
);
CREATE INDEX chunk_vector_cache_released_at_idx ON chunk_vector_cache (released_at);
CREATE INDEX chunk_vector_cache_embedding_model_id_idx ON chunk_vector_cache (embedding_model_id);
-- kb populate runs as the agents' role (0004): it refreshes and prunes this cache
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kb_agent') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON chunk_vector_cache TO kb_agent;
    END IF;
END
$$;
"""

DOWNGRADE = "DROP TABLE IF EXISTS chunk_vector_cache;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
