"""Facts proposed from the audit trail: ``knowledge.proposed`` and ``knowledge.proposed_in``.

Revision ID: 0007
Revises: 0006

At the end of a Gemini CLI session, ``knowledgebase.search.trail_facts`` proposes facts from what the
session's commands showed (the test command that worked, what a failing command needed first). Such a
fact is ``proposed`` until someone confirms it (``kb fact confirm``, MCP ``confirm_fact``) or states it
(``kb fact add``, ``remember``); ``proposed_in`` lists the session tasks that proposed it, so a session
that ends twice reinforces it once. Columns of an existing table: the grants of 0004 on ``knowledge``
cover them, and the seed design's columns are untouched.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE knowledge
            ADD COLUMN proposed BOOLEAN NOT NULL DEFAULT false,
            ADD COLUMN proposed_in TEXT[] NOT NULL DEFAULT '{}';
        CREATE INDEX knowledge_proposed_idx ON knowledge (project_id) WHERE proposed;
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP INDEX IF EXISTS knowledge_proposed_idx;
        ALTER TABLE knowledge DROP COLUMN IF EXISTS proposed_in, DROP COLUMN IF EXISTS proposed;
        """
    )
