"""The role of each indexed file: ``project_files.role``.

Revision ID: 0006
Revises: 0005

One of ``source``, ``test``, ``docs``, ``changelog``, ``config``, ``generated``, ``example``, ``vendored``
(``knowledgebase.util.roles``), given by the scanner from the file's path. Files indexed before this
revision have none (NULL) until the next ``kb populate`` of their project, which sets it without
re-reading them; until then a search derives it from the path. A column of an existing table: the
grants of 0004 on ``project_files`` cover it.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

ROLES = ("source", "test", "docs", "changelog", "config", "generated", "example", "vendored")


def upgrade() -> None:
    allowed = ", ".join(f"'{role}'" for role in ROLES)
    op.execute(
        "ALTER TABLE project_files ADD COLUMN role TEXT"
        f" CONSTRAINT project_files_role_check CHECK (role IN ({allowed}))"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE project_files DROP COLUMN IF EXISTS role")
