"""Task history: every change of a task's status, owner or attempt, recorded by the database.

Revision ID: 0002
Revises: 0001

``tasks.history`` is a JSON array, oldest first, of ``{"at", "status", "owner", "attempt", "note"}``
(``owner`` and ``note`` left out when empty). A trigger appends an entry when a task is created and
whenever an UPDATE changes its status, owner or attempt count (a claim, a takeover after a lease ran
out, a release, a requeue, the end), so every path that changes a task, the task queue or an
operator's SQL, is on record, and no UPDATE can rewrite what is there. ``note`` is the task's result
or failure reason when that changed, clipped to 500 characters. What an agent did while it held the
task (prompts, commands, outputs) stays in ``command_log``: see ``audit.task_history``.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
ALTER TABLE tasks ADD COLUMN history JSONB NOT NULL DEFAULT '[]'::jsonb;
-- tasks created before this revision start their history with what they are now
UPDATE tasks SET history = jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
    'at', updated_at, 'status', status, 'owner', owner, 'attempt', attempts, 'note', left(result, 500))));

CREATE FUNCTION kb_task_history() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    note TEXT;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        NEW.history := OLD.history;  -- only this trigger writes the history
        IF NEW.status IS NOT DISTINCT FROM OLD.status AND NEW.owner IS NOT DISTINCT FROM OLD.owner
           AND NEW.attempts IS NOT DISTINCT FROM OLD.attempts THEN
            RETURN NEW;
        END IF;
        IF NEW.result IS DISTINCT FROM OLD.result THEN
            note := left(NEW.result, 500);
        END IF;
    ELSE
        NEW.history := '[]'::jsonb;
        note := left(NEW.result, 500);
    END IF;
    NEW.history := NEW.history || jsonb_build_array(jsonb_strip_nulls(jsonb_build_object(
        'at', now(), 'status', NEW.status, 'owner', NEW.owner, 'attempt', NEW.attempts, 'note', note)));
    RETURN NEW;
END
$$;

CREATE TRIGGER tasks_history BEFORE INSERT OR UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION kb_task_history();
"""

DOWNGRADE = """
DROP TRIGGER IF EXISTS tasks_history ON tasks;
DROP FUNCTION IF EXISTS kb_task_history();
ALTER TABLE tasks DROP COLUMN IF EXISTS history;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
