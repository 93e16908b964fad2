"""The seed design's column names and types, and defaults so that plain SQL written against it runs.

Revision ID: 0003
Revises: 0002

``../shared/SEED_DESIGN.md`` defines ``command_log``, ``command_output``, ``project_files`` and
``knowledge``; its column names are a contract. This revision renames the columns 0001 had called
otherwise (no copy is kept, every row stays):

- ``knowledge``: ``label`` -> ``fact_label``, ``value`` -> ``fact_value``, ``created_at`` -> ``inserted_at``
- ``command_log``: ``created_at`` -> ``executed_at``, ``proposed_command`` -> ``command``
- ``project_files``: ``file_path`` -> ``path``, ``updated_at`` -> ``last_updated``, and the design's
  ``task_id`` (the task that wrote the row) is added back
- ``command_output.file_written`` is ``TEXT`` as in the design: one path, or several separated by
  newlines (the list 0001 kept as ``TEXT[]``; a newline inside a path is written as ``\\n``)

and adds BEFORE INSERT triggers that fill in what this project needs on top of the design's
columns, so an ``INSERT`` that names only the design's columns succeeds:

- ``project_files``: ``project_id`` from the task's project, else the project named ``default``
  (created when missing); ``content_hash`` (SHA-256 of the UTF-8 text) and ``size_bytes`` from
  ``content`` when not given, and again when an UPDATE changes ``content`` but not the hash. Such a
  row has no chunks until ``kb reembed --missing`` (``chunked_hash`` differs from ``content_hash``).
- ``knowledge``: ``project_id`` from the task's project; the full-text vector from label and value
  when none is given. The vector waits for ``kb reembed --missing``.
- ``command_log``: ``project_id`` from the task's project; ``kind`` is ``shell`` for a row with a
  ``command`` and no ``prompt`` (the design has no kind).
- ``command_output``: ``success`` from ``return_code`` when not given (NULL, unknown, when neither
  is: the design allows both to be missing, and nothing is invented).

The audit tables stay append-only: these triggers fire on INSERT only (and on UPDATE of
``project_files``, which is not an audit table).
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE knowledge RENAME COLUMN label TO fact_label;
ALTER TABLE knowledge RENAME COLUMN value TO fact_value;
ALTER TABLE knowledge RENAME COLUMN created_at TO inserted_at;
ALTER INDEX knowledge_label_idx RENAME TO knowledge_fact_label_idx;

ALTER TABLE command_log RENAME COLUMN created_at TO executed_at;
ALTER TABLE command_log RENAME COLUMN proposed_command TO command;
ALTER INDEX command_log_created_at_idx RENAME TO command_log_executed_at_idx;

ALTER TABLE project_files RENAME COLUMN file_path TO path;
ALTER TABLE project_files RENAME COLUMN updated_at TO last_updated;
ALTER TABLE project_files ADD COLUMN task_id TEXT REFERENCES tasks(id) ON DELETE SET NULL;
CREATE INDEX project_files_task_id_idx ON project_files (task_id) WHERE task_id IS NOT NULL;

ALTER TABLE command_output ALTER COLUMN file_written DROP DEFAULT;
ALTER TABLE command_output ALTER COLUMN file_written DROP NOT NULL;
CREATE FUNCTION pg_temp.kb_join_paths(paths TEXT[]) RETURNS TEXT LANGUAGE sql IMMUTABLE AS $$
    SELECT NULLIF(string_agg(replace(p, E'\n', '\n'), E'\n'), '') FROM unnest(paths) AS p
$$;
ALTER TABLE command_output ALTER COLUMN file_written TYPE TEXT USING pg_temp.kb_join_paths(file_written);

CREATE FUNCTION kb_task_project(task TEXT) RETURNS BIGINT LANGUAGE sql STABLE AS $$
    SELECT project_id FROM tasks WHERE id = task
$$;

CREATE FUNCTION kb_project_files_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.project_id IS NULL THEN
        NEW.project_id := kb_task_project(NEW.task_id);
    END IF;
    IF NEW.project_id IS NULL THEN
        INSERT INTO projects (name) VALUES ('default') ON CONFLICT (name) DO NOTHING;
        SELECT id INTO NEW.project_id FROM projects WHERE name = 'default';
    END IF;
    IF TG_OP = 'INSERT' THEN
        NEW.content_hash := coalesce(NEW.content_hash, encode(sha256(convert_to(NEW.content, 'UTF8')), 'hex'));
        NEW.size_bytes := coalesce(NEW.size_bytes, octet_length(NEW.content));
    ELSIF NEW.content IS DISTINCT FROM OLD.content AND NEW.content_hash IS NOT DISTINCT FROM OLD.content_hash THEN
        -- plain SQL changed the text only: the hash and size follow it, and the file waits for chunking
        NEW.content_hash := encode(sha256(convert_to(NEW.content, 'UTF8')), 'hex');
        NEW.size_bytes := octet_length(NEW.content);
        IF NEW.last_updated IS NOT DISTINCT FROM OLD.last_updated THEN
            NEW.last_updated := now();
        END IF;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER project_files_defaults BEFORE INSERT OR UPDATE ON project_files
    FOR EACH ROW EXECUTE FUNCTION kb_project_files_defaults();

CREATE FUNCTION kb_knowledge_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.project_id IS NULL AND NEW.task_id IS NOT NULL THEN
        NEW.project_id := kb_task_project(NEW.task_id);
    END IF;
    IF NEW.tsv = ''::tsvector THEN
        NEW.tsv := to_tsvector('simple', coalesce(NEW.fact_label, '') || ' ' || coalesce(NEW.fact_value, ''));
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER knowledge_defaults BEFORE INSERT ON knowledge
    FOR EACH ROW EXECUTE FUNCTION kb_knowledge_defaults();

CREATE FUNCTION kb_command_log_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.project_id IS NULL AND NEW.task_id IS NOT NULL THEN
        NEW.project_id := kb_task_project(NEW.task_id);
    END IF;
    IF NEW.kind = 'prompt' AND NEW.prompt IS NULL AND NEW.command IS NOT NULL THEN
        NEW.kind := 'shell';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER command_log_defaults BEFORE INSERT ON command_log
    FOR EACH ROW EXECUTE FUNCTION kb_command_log_defaults();

ALTER TABLE command_output ALTER COLUMN success DROP NOT NULL;
CREATE FUNCTION kb_command_output_defaults() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.success IS NULL THEN
        NEW.success := NEW.return_code = 0;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER command_output_defaults BEFORE INSERT ON command_output
    FOR EACH ROW EXECUTE FUNCTION kb_command_output_defaults();
"""

DOWNGRADE = r"""
DROP TRIGGER command_output_defaults ON command_output;
DROP FUNCTION kb_command_output_defaults();
DROP TRIGGER command_log_defaults ON command_log;
DROP FUNCTION kb_command_log_defaults();
DROP TRIGGER knowledge_defaults ON knowledge;
DROP FUNCTION kb_knowledge_defaults();
DROP TRIGGER project_files_defaults ON project_files;
DROP FUNCTION kb_project_files_defaults();
DROP FUNCTION kb_task_project(TEXT);

-- rows the design let in without a success flag: unknown becomes "did not succeed"
SET LOCAL kb.audit_maintenance = 'on';
UPDATE command_output SET success = false WHERE success IS NULL;
ALTER TABLE command_output ALTER COLUMN success SET NOT NULL;
CREATE FUNCTION pg_temp.kb_split_paths(paths TEXT) RETURNS TEXT[] LANGUAGE sql IMMUTABLE AS $$
    SELECT COALESCE(array_agg(replace(p, '\n', E'\n')), '{}') FROM unnest(string_to_array(paths, E'\n')) AS p
     WHERE p <> ''
$$;
ALTER TABLE command_output ALTER COLUMN file_written TYPE TEXT[] USING pg_temp.kb_split_paths(file_written);
ALTER TABLE command_output ALTER COLUMN file_written SET DEFAULT '{}';
ALTER TABLE command_output ALTER COLUMN file_written SET NOT NULL;

DROP INDEX project_files_task_id_idx;
ALTER TABLE project_files DROP COLUMN task_id;
ALTER TABLE project_files RENAME COLUMN last_updated TO updated_at;
ALTER TABLE project_files RENAME COLUMN path TO file_path;

ALTER INDEX command_log_executed_at_idx RENAME TO command_log_created_at_idx;
ALTER TABLE command_log RENAME COLUMN command TO proposed_command;
ALTER TABLE command_log RENAME COLUMN executed_at TO created_at;

ALTER INDEX knowledge_fact_label_idx RENAME TO knowledge_label_idx;
ALTER TABLE knowledge RENAME COLUMN inserted_at TO created_at;
ALTER TABLE knowledge RENAME COLUMN fact_value TO value;
ALTER TABLE knowledge RENAME COLUMN fact_label TO label;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
