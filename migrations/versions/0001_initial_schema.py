"""Initial schema: projects, embedding models, files and chunks, knowledge, audit log, tasks, API keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The vector columns are typed with the default model's dimension (all-MiniLM-L6-v2, 384).
# `kb reembed` changes the type when a store moves to a model of another dimension; the model
# that produced every stored vector is recorded in embedding_models.
UPGRADE = """
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE projects (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    root_path   TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE embedding_models (
    id          SERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    dimension   INTEGER NOT NULL CHECK (dimension > 0),
    is_active   BOOLEAN NOT NULL DEFAULT false,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (name, dimension)
);
-- at most one model is the store's active one
CREATE UNIQUE INDEX embedding_models_one_active ON embedding_models (is_active) WHERE is_active;

CREATE TABLE api_keys (
    id                  BIGSERIAL PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    provider            TEXT NOT NULL DEFAULT 'gemini',
    env_var             TEXT NOT NULL,
    fingerprint         TEXT,
    rpm_limit           INTEGER CHECK (rpm_limit > 0),
    tpm_limit           INTEGER CHECK (tpm_limit > 0),
    rpd_limit           INTEGER CHECK (rpd_limit > 0),
    cooldown_until      TIMESTAMPTZ,
    disabled            BOOLEAN NOT NULL DEFAULT false,
    disabled_reason     TEXT,
    last_used_at        TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- one row per request granted on a key: the sliding minute and day windows are counted from here
-- (under the key's row lock), so no 60-second or 24-hour window ever holds more than the limits
CREATE TABLE api_key_grants (
    id            BIGSERIAL PRIMARY KEY,
    api_key_id    BIGINT NOT NULL REFERENCES api_keys(id) ON DELETE CASCADE,
    granted_at    TIMESTAMPTZ NOT NULL,
    tokens        INTEGER NOT NULL DEFAULT 0 CHECK (tokens >= 0),
    released_at   TIMESTAMPTZ
);
CREATE INDEX api_key_grants_window_idx ON api_key_grants (api_key_id, granted_at);

CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,
    project_id       BIGINT REFERENCES projects(id) ON DELETE SET NULL,
    title            TEXT NOT NULL DEFAULT '',
    context          JSONB NOT NULL DEFAULT '{}'::jsonb,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'running', 'done', 'failed', 'cancelled')),
    priority         INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,
    lease_expires_at TIMESTAMPTZ,
    attempts         INTEGER NOT NULL DEFAULT 0,
    result           TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ
);
CREATE INDEX tasks_project_id_idx ON tasks (project_id);
CREATE INDEX tasks_claimable_idx ON tasks (status, priority DESC, created_at) WHERE status IN ('pending', 'running');
CREATE INDEX tasks_owner_idx ON tasks (owner);

CREATE TABLE command_log (
    id                BIGSERIAL PRIMARY KEY,
    task_id           TEXT REFERENCES tasks(id) ON DELETE SET NULL,
    project_id        BIGINT REFERENCES projects(id) ON DELETE SET NULL,
    session_id        TEXT,
    agent_id          TEXT,
    kind              TEXT NOT NULL DEFAULT 'prompt'
                      CHECK (kind IN ('prompt', 'shell', 'tool', 'note')),
    prompt            TEXT,
    response          TEXT,
    proposed_command  TEXT,
    tool_name         TEXT,
    tool_input        JSONB,
    permissions       TEXT,
    user_confirmation BOOLEAN,
    agent_mode        TEXT,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX command_log_task_id_idx ON command_log (task_id, id);
CREATE INDEX command_log_project_id_idx ON command_log (project_id);
CREATE INDEX command_log_session_id_idx ON command_log (session_id);
CREATE INDEX command_log_created_at_idx ON command_log (created_at);

CREATE TABLE command_output (
    id               BIGSERIAL PRIMARY KEY,
    command_log_id   BIGINT NOT NULL REFERENCES command_log(id) ON DELETE CASCADE,
    stdout           TEXT,
    stderr           TEXT,
    return_code      INTEGER,
    file_written     TEXT[] NOT NULL DEFAULT '{}',
    success          BOOLEAN NOT NULL,
    duration_ms      INTEGER,
    stdout_bytes     BIGINT,
    stderr_bytes     BIGINT,
    truncated        BOOLEAN NOT NULL DEFAULT false,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX command_output_command_log_id_idx ON command_output (command_log_id);

CREATE TABLE usage_log (
    id               BIGSERIAL PRIMARY KEY,
    request_type     TEXT NOT NULL,
    model            TEXT,
    prompt_tokens    INTEGER NOT NULL DEFAULT 0,
    response_tokens  INTEGER NOT NULL DEFAULT 0,
    total_tokens     INTEGER NOT NULL DEFAULT 0,
    api_key_id       BIGINT REFERENCES api_keys(id) ON DELETE SET NULL,
    task_id          TEXT REFERENCES tasks(id) ON DELETE SET NULL,
    command_log_id   BIGINT REFERENCES command_log(id) ON DELETE SET NULL,
    latency_ms       INTEGER,
    success          BOOLEAN NOT NULL DEFAULT true,
    error            TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX usage_log_api_key_id_idx ON usage_log (api_key_id);
CREATE INDEX usage_log_task_id_idx ON usage_log (task_id);
CREATE INDEX usage_log_command_log_id_idx ON usage_log (command_log_id);
CREATE INDEX usage_log_created_at_idx ON usage_log (created_at);

-- The audit tables are append-only: rows cannot be changed or deleted, except that deleting a task,
-- project, key or log entry may clear a reference to it (ON DELETE SET NULL). The owner of the
-- tables (or a superuser) may do retention work after `SET kb.audit_maintenance = 'on'`.
CREATE FUNCTION kb_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    refs     text[] := TG_ARGV;
    old_row  jsonb := to_jsonb(OLD);
    new_row  jsonb;
    col      text;
BEGIN
    IF current_setting('kb.audit_maintenance', true) = 'on'
       AND pg_has_role(current_user, (SELECT relowner FROM pg_class WHERE oid = TG_RELID), 'MEMBER') THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        new_row := to_jsonb(NEW);
        IF (old_row - refs) = (new_row - refs) THEN
            FOREACH col IN ARRAY refs LOOP
                IF new_row -> col IS DISTINCT FROM old_row -> col AND new_row -> col <> 'null'::jsonb THEN
                    RAISE EXCEPTION '% is append-only: % cannot be changed', TG_TABLE_NAME, col
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
            END LOOP;
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only: rows cannot be changed or deleted', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'log a new entry instead; retention jobs run as the table owner '
                     'after SET kb.audit_maintenance = on';
END
$$;
CREATE TRIGGER command_log_append_only BEFORE UPDATE OR DELETE ON command_log
    FOR EACH ROW EXECUTE FUNCTION kb_audit_append_only('task_id', 'project_id');
CREATE TRIGGER command_output_append_only BEFORE UPDATE OR DELETE ON command_output
    FOR EACH ROW EXECUTE FUNCTION kb_audit_append_only();
CREATE TRIGGER usage_log_append_only BEFORE UPDATE OR DELETE ON usage_log
    FOR EACH ROW EXECUTE FUNCTION kb_audit_append_only('api_key_id', 'task_id', 'command_log_id');

CREATE TABLE project_files (
    id            BIGSERIAL PRIMARY KEY,
    project_id    BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    file_path     TEXT NOT NULL,
    content       TEXT NOT NULL,
    content_hash  TEXT NOT NULL,
    size_bytes    BIGINT NOT NULL,
    language      TEXT,
    mtime_ns      BIGINT,
    lossy_decode  BOOLEAN NOT NULL DEFAULT false,
    chunked_hash  TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (project_id, file_path)
);

CREATE TABLE file_chunks (
    id                 BIGSERIAL PRIMARY KEY,
    file_id            BIGINT NOT NULL REFERENCES project_files(id) ON DELETE CASCADE,
    project_id         BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    chunk_index        INTEGER NOT NULL,
    start_line         INTEGER NOT NULL CHECK (start_line >= 1),
    end_line           INTEGER NOT NULL CHECK (end_line >= start_line),
    kind               TEXT NOT NULL DEFAULT 'window',
    symbol             TEXT,
    content            TEXT NOT NULL,
    content_hash       TEXT NOT NULL,
    token_count        INTEGER NOT NULL DEFAULT 0,
    embedding          vector(384),
    embedding_model_id INTEGER REFERENCES embedding_models(id),
    tsv                tsvector NOT NULL DEFAULT ''::tsvector,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (file_id, chunk_index)
);
CREATE INDEX file_chunks_file_id_idx ON file_chunks (file_id);
CREATE INDEX file_chunks_project_id_idx ON file_chunks (project_id);
CREATE INDEX file_chunks_content_hash_idx ON file_chunks (content_hash);
CREATE INDEX file_chunks_embedding_model_id_idx ON file_chunks (embedding_model_id);
CREATE INDEX file_chunks_embedding_hnsw ON file_chunks USING hnsw (embedding vector_cosine_ops);
CREATE INDEX file_chunks_tsv_idx ON file_chunks USING gin (tsv);

CREATE TABLE knowledge (
    id                  BIGSERIAL PRIMARY KEY,
    project_id          BIGINT REFERENCES projects(id) ON DELETE CASCADE,
    task_id             TEXT REFERENCES tasks(id) ON DELETE SET NULL,
    label               TEXT NOT NULL,
    value               TEXT NOT NULL,
    extracted_from      TEXT,
    confidence_score    NUMERIC(4, 3) NOT NULL DEFAULT 0.5
                        CHECK (confidence_score >= 0 AND confidence_score <= 1),
    source_kind         TEXT NOT NULL DEFAULT 'manual'
                        CHECK (source_kind IN ('manual', 'command', 'chunk', 'prompt', 'agent')),
    source_command_id   BIGINT REFERENCES command_log(id) ON DELETE SET NULL,
    source_file_id      BIGINT REFERENCES project_files(id) ON DELETE SET NULL,
    source_chunk_hash   TEXT,
    status              TEXT NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'superseded', 'forgotten')),
    superseded_by       BIGINT REFERENCES knowledge(id) ON DELETE SET NULL,
    is_stale            BOOLEAN NOT NULL DEFAULT false,
    stale_since         TIMESTAMPTZ,
    pinned              BOOLEAN NOT NULL DEFAULT false,
    confirmations       INTEGER NOT NULL DEFAULT 1,
    embedding           vector(384),
    embedding_model_id  INTEGER REFERENCES embedding_models(id),
    tsv                 tsvector NOT NULL DEFAULT ''::tsvector,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_confirmed_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX knowledge_project_id_idx ON knowledge (project_id);
CREATE INDEX knowledge_task_id_idx ON knowledge (task_id);
CREATE INDEX knowledge_label_idx ON knowledge (project_id, label) WHERE status = 'active';
CREATE INDEX knowledge_source_command_id_idx ON knowledge (source_command_id);
CREATE INDEX knowledge_source_file_id_idx ON knowledge (source_file_id);
CREATE INDEX knowledge_superseded_by_idx ON knowledge (superseded_by);
CREATE INDEX knowledge_embedding_model_id_idx ON knowledge (embedding_model_id);
CREATE INDEX knowledge_embedding_hnsw ON knowledge USING hnsw (embedding vector_cosine_ops);
CREATE INDEX knowledge_tsv_idx ON knowledge USING gin (tsv);

-- every context block handed to an agent, with the items it contained and their scores
CREATE TABLE context_log (
    id           BIGSERIAL PRIMARY KEY,
    project_id   BIGINT REFERENCES projects(id) ON DELETE SET NULL,
    task_id      TEXT REFERENCES tasks(id) ON DELETE SET NULL,
    prompt       TEXT NOT NULL,
    budget       INTEGER NOT NULL,
    token_count  INTEGER NOT NULL,
    items        JSONB NOT NULL DEFAULT '[]'::jsonb,
    text         TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX context_log_project_id_idx ON context_log (project_id);
CREATE INDEX context_log_task_id_idx ON context_log (task_id);
"""

DOWNGRADE = """
DROP TABLE IF EXISTS context_log;
DROP TABLE IF EXISTS knowledge;
DROP TABLE IF EXISTS file_chunks;
DROP TABLE IF EXISTS project_files;
DROP TABLE IF EXISTS usage_log;
DROP TABLE IF EXISTS command_output;
DROP TABLE IF EXISTS command_log;
DROP TABLE IF EXISTS tasks;
DROP TABLE IF EXISTS api_key_grants;
DROP TABLE IF EXISTS api_keys;
DROP TABLE IF EXISTS embedding_models;
DROP TABLE IF EXISTS projects;
DROP FUNCTION IF EXISTS kb_audit_append_only();
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    # The vector extension is left installed: other schemas in the database may use it.
    op.execute(DOWNGRADE)
