"""Alembic environment for knowledgebase.

Run through ``kb init`` (which passes the URL in ``config.attributes``) or plainly with
``alembic upgrade head`` from the checkout, which uses KB_DATABASE_URL or the embedded server.
Migrations take a transaction-scoped advisory lock first, so concurrent runs serialise: the
second one waits, then finds the schema at head and does nothing.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from knowledgebase.db.schema import MIGRATION_LOCK_KEY, sqlalchemy_url

config = context.config


def _url() -> str:
    url = config.attributes.get("url")
    if url is None:
        from knowledgebase.config import Settings
        from knowledgebase.db import database_url

        url = database_url(Settings.from_env())
    return sqlalchemy_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
