"""BM25 over code tokens: a sparse vector per chunk, and per-project document frequencies.

Revision ID: 0008
Revises: 0007

``file_chunks.lexical`` is the chunk's document side of Okapi BM25 (``knowledgebase.util.bm25``): at
the hashed dimension of each of its code tokens, the saturated term frequency. ``insert_chunks``
fills it; rows written before this revision have none (NULL) until ``kb populate`` of their project
or ``kb reembed --missing`` fills them (no model needed), and score 0 by BM25 meanwhile.

``chunk_term_counts`` holds, per project and dimension, how many chunks have that term (``term`` -1:
how many chunks have a ``lexical`` vector at all, N). Triggers on ``file_chunks`` keep it exact
whatever writes the chunks (populate, refresh, backfill, cascades from a deleted file or project):
statement-level, with transition tables, so a batch of chunks costs one grouped upsert. A search reads
the df of its few query terms from the primary key. The agents' role (0004) writes chunks, so it may
write the counts too.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE file_chunks ADD COLUMN lexical sparsevec(1048576);

CREATE TABLE chunk_term_counts (
    project_id BIGINT NOT NULL,
    term       INTEGER NOT NULL,
    chunks     INTEGER NOT NULL,
    PRIMARY KEY (project_id, term)
);
-- a search of every project sums a term over them
CREATE INDEX chunk_term_counts_term_idx ON chunk_term_counts (term);

-- the dimensions (0-based, as knowledgebase.util.bm25.term_dimension) of a sparse vector's non-zero
-- elements, and -1 once for the vector itself (it counts towards N)
CREATE FUNCTION kb_sparse_terms(v sparsevec) RETURNS SETOF integer LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (m[1])::integer - 1 FROM regexp_matches(v::text, '[{,]([0-9]+):', 'g') AS m
    UNION ALL SELECT -1
$$;

CREATE FUNCTION kb_chunk_terms_added() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO chunk_term_counts (project_id, term, chunks)
    SELECT n.project_id, t.term, count(*) FROM added n CROSS JOIN LATERAL kb_sparse_terms(n.lexical) AS t(term)
     GROUP BY n.project_id, t.term ORDER BY n.project_id, t.term
    ON CONFLICT (project_id, term) DO UPDATE SET chunks = chunk_term_counts.chunks + EXCLUDED.chunks;
    RETURN NULL;
END
$$;

CREATE FUNCTION kb_chunk_terms_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chunk_term_counts c SET chunks = c.chunks - d.n
      FROM (SELECT o.project_id, t.term, count(*) AS n
              FROM removed o CROSS JOIN LATERAL kb_sparse_terms(o.lexical) AS t(term)
             GROUP BY o.project_id, t.term ORDER BY o.project_id, t.term) d
     WHERE c.project_id = d.project_id AND c.term = d.term;
    DELETE FROM chunk_term_counts WHERE chunks <= 0 AND project_id IN (SELECT project_id FROM removed);
    RETURN NULL;
END
$$;

-- an UPDATE moves the counts only for rows whose vector (or project) changed: setting embeddings
-- (kb reembed) touches every row and must cost nothing here
CREATE FUNCTION kb_chunk_terms_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chunk_term_counts c SET chunks = c.chunks - d.n
      FROM (SELECT o.project_id, t.term, count(*) AS n
              FROM removed o JOIN added n ON n.id = o.id
              CROSS JOIN LATERAL kb_sparse_terms(o.lexical) AS t(term)
             WHERE o.lexical IS DISTINCT FROM n.lexical OR o.project_id <> n.project_id
             GROUP BY o.project_id, t.term ORDER BY o.project_id, t.term) d
     WHERE c.project_id = d.project_id AND c.term = d.term;
    INSERT INTO chunk_term_counts (project_id, term, chunks)
    SELECT n.project_id, t.term, count(*)
      FROM added n JOIN removed o ON o.id = n.id
      CROSS JOIN LATERAL kb_sparse_terms(n.lexical) AS t(term)
     WHERE o.lexical IS DISTINCT FROM n.lexical OR o.project_id <> n.project_id
     GROUP BY n.project_id, t.term ORDER BY n.project_id, t.term
    ON CONFLICT (project_id, term) DO UPDATE SET chunks = chunk_term_counts.chunks + EXCLUDED.chunks;
    DELETE FROM chunk_term_counts WHERE chunks <= 0 AND project_id IN (SELECT project_id FROM removed);
    RETURN NULL;
END
$$;

CREATE TRIGGER file_chunks_terms_added AFTER INSERT ON file_chunks
    REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION kb_chunk_terms_added();
CREATE TRIGGER file_chunks_terms_removed AFTER DELETE ON file_chunks
    REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION kb_chunk_terms_removed();
CREATE TRIGGER file_chunks_terms_changed AFTER UPDATE ON file_chunks
    REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION kb_chunk_terms_changed();

CREATE FUNCTION kb_chunk_terms_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM chunk_term_counts;  -- TRUNCATE would clash with a TRUNCATE naming both tables
    RETURN NULL;
END
$$;
CREATE TRIGGER file_chunks_terms_truncated AFTER TRUNCATE ON file_chunks
    FOR EACH STATEMENT EXECUTE FUNCTION kb_chunk_terms_truncated();

DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kb_agent') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON chunk_term_counts TO kb_agent;
    END IF;
END
$$;
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS file_chunks_terms_added ON file_chunks;
DROP TRIGGER IF EXISTS file_chunks_terms_removed ON file_chunks;
DROP TRIGGER IF EXISTS file_chunks_terms_changed ON file_chunks;
DROP TRIGGER IF EXISTS file_chunks_terms_truncated ON file_chunks;
DROP FUNCTION IF EXISTS kb_chunk_terms_truncated();
DROP FUNCTION IF EXISTS kb_chunk_terms_added();
DROP FUNCTION IF EXISTS kb_chunk_terms_removed();
DROP FUNCTION IF EXISTS kb_chunk_terms_changed();
DROP FUNCTION IF EXISTS kb_sparse_terms(sparsevec);
DROP TABLE IF EXISTS chunk_term_counts;
ALTER TABLE file_chunks DROP COLUMN IF EXISTS lexical;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
