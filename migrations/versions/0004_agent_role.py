"""The least-privilege role of the agents: ``kb_agent`` may add to the audit log, never rewrite it.

Revision ID: 0004
Revises: 0003

``kb_agent`` is a NOLOGIN group role. Its members (the embedded server's ``kb_agent_login``, or the
login an operator gives the agents on an external server) may:

- read every table;
- add to the audit tables (``command_log``, ``command_output``, ``usage_log``) and ``context_log``,
  with no UPDATE, DELETE, TRUNCATE, REFERENCES or TRIGGER on them;
- read and change the working tables (projects, files, chunks, knowledge, tasks, keys, models), and
  delete what the code deletes (projects, files, chunks, key grants), never a task or a key, whose
  deletion would detach log entries from it;
- use the sequences behind the ids;
- read and add to the tables later migrations create (default privileges of the migrating role;
  such a migration grants UPDATE or DELETE itself where agents need them).

It owns nothing, so it can neither disable a trigger nor prune in maintenance mode (the trigger lets
only members of the tables' owner do that). Deleting a task, project or key clears the references to
it (ON DELETE SET NULL): PostgreSQL runs that cascade as the owner of the audit table, so no UPDATE
right is needed for it; ``kb_audit_append_only`` now tells it from a direct ``UPDATE ... SET task_id =
NULL`` (which detaches an entry from its task and is refused) by the trigger depth: a cascade runs
from the foreign key's own trigger.

Creating the role needs CREATEROLE; where the migrating user lacks it and ``kb_agent`` does not exist,
the grants are skipped with a NOTICE (README, "Running on your own server: roles and grants").
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

AUDIT_TABLES = ("command_log", "command_output", "usage_log")
APPEND_ONLY_TABLES = (*AUDIT_TABLES, "context_log")
WORKING_TABLES = (
    "projects",
    "embedding_models",
    "api_keys",
    "api_key_grants",
    "tasks",
    "project_files",
    "file_chunks",
    "knowledge",
)
# what the code deletes; not tasks or keys: deleting one would detach log entries from it (SET NULL)
DELETABLE_TABLES = ("projects", "api_key_grants", "project_files", "file_chunks")

GRANTS = f"""
    GRANT USAGE ON SCHEMA public TO kb_agent;
    GRANT SELECT ON alembic_version TO kb_agent;
    GRANT SELECT, INSERT ON {", ".join(APPEND_ONLY_TABLES)} TO kb_agent;
    GRANT SELECT, INSERT, UPDATE ON {", ".join(WORKING_TABLES)} TO kb_agent;
    GRANT DELETE ON {", ".join(DELETABLE_TABLES)} TO kb_agent;
    GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO kb_agent;
    -- tables later migrations add: readable and appendable (a migration grants UPDATE or DELETE itself)
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO kb_agent;
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO kb_agent;"""

UPGRADE = f"""
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kb_agent') THEN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
            RAISE NOTICE 'role kb_agent does not exist and % may not create it: agents keep the rights of '
                         'their own login (create kb_agent NOLOGIN and run kb init again)', current_user;
            RETURN;
        END IF;
        CREATE ROLE kb_agent NOLOGIN;
    END IF;
{GRANTS}
END
$$;

CREATE OR REPLACE FUNCTION kb_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
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
    -- a reference may only be cleared by ON DELETE SET NULL, which runs from the foreign key's
    -- trigger (depth 2 here); a direct UPDATE (depth 1) would detach the entry from its task
    IF TG_OP = 'UPDATE' AND pg_trigger_depth() > 1 THEN
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
"""

# 0001's function: clearing a reference to NULL was let through however it was made
DOWNGRADE = """
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'kb_agent') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA public FROM kb_agent;
        REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM kb_agent;
        REVOKE ALL ON SCHEMA public FROM kb_agent;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON TABLES FROM kb_agent;
        ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE ALL ON SEQUENCES FROM kb_agent;
        BEGIN
            DROP ROLE kb_agent;
        EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
            RAISE NOTICE 'role kb_agent is kept: other databases of this server still grant it rights';
        END;
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION kb_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
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
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
