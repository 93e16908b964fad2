"""A second, short vector per definition: the names and signature of each definition a chunk holds.

Revision ID: 0009
Revises: 0008

``chunk_summaries`` holds, for each chunk with a symbol, one row per definition or section it holds
(``ordinal`` in symbol order): the vector of ``knowledgebase.index.summaries.summary_texts`` under the
chunk's model (the rows are always written with the chunk's own vector, in the same transaction, by
the same model), and the SHA-256 of that text, under which a vector is reused as a chunk's is under
its ``content_hash``. A search scores a chunk by the best of its own similarity and its summaries'.
The column has no fixed dimension: ``kb reembed`` to a model of another dimension deletes every
summary with the chunks' vectors and writes them again. Chunks stored before this revision have none
until ``kb populate`` of their project, ``kb reembed --missing`` or ``kb reembed`` writes them (the
chunks' vectors are reused, only the short texts are embedded). No HNSW index: summaries re-score
candidates, they do not find them. The agents' role (0004) writes chunks, so it writes their summaries
too.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE chunk_summaries (
    chunk_id     BIGINT NOT NULL REFERENCES file_chunks(id) ON DELETE CASCADE,
    ordinal      SMALLINT NOT NULL,
    summary_hash TEXT NOT NULL,
    embedding    vector NOT NULL,
    PRIMARY KEY (chunk_id, ordinal)
);
CREATE INDEX chunk_summaries_summary_hash_idx ON chunk_summaries (summary_hash);
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kb_agent') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON chunk_summaries TO kb_agent;
    END IF;
END
$$;
"""

DOWNGRADE = "DROP TABLE IF EXISTS chunk_summaries;"


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
