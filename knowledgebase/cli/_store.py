"""What every command that touches the store needs: the settings, the open database, the project.

``--database-url`` (or KB_DATABASE_URL) picks the database; ``--project`` the project, defaulting to
the indexed project whose root contains the current directory.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from knowledgebase.config import Settings, get_settings

if TYPE_CHECKING:
    from knowledgebase.db import Database
    from knowledgebase.embedding import Embedder

database_url_option = click.option(
    "--database-url",
    envvar="KB_DATABASE_URL",
    default=None,
    metavar="URL",
    help="PostgreSQL URL (default: KB_DATABASE_URL, else the embedded server under KB_HOME).",
)
project_option = click.option(
    "--project",
    metavar="NAME",
    help="Project to work in (default: the indexed project containing the current directory, else all projects).",
)


def settings_from(database_url: str | None = None) -> Settings:
    """The process settings, with a ``--database-url`` option applied when given."""
    return get_settings().with_overrides(database_url=database_url)


@contextmanager
def open_db(database_url: str | None) -> Iterator[Database]:
    """The configured database, checked (reachable, pgvector, schema revision) and open for one command."""
    from knowledgebase.db import open_database

    with open_database(settings_from(database_url)) as db:
        yield db


@contextmanager
def open_store(database_url: str | None) -> Iterator[tuple[Settings, Database, Embedder]]:
    """Settings, an open database and an embedder for a command that embeds a few texts: the warm
    process's model when it runs, else one that loads fast (``gemini.warm_embedder.query_embedder``)."""
    from knowledgebase.db import open_database
    from knowledgebase.gemini.warm_embedder import query_embedder

    settings = settings_from(database_url)
    with open_database(settings) as db:
        yield settings, db, query_embedder(settings)


def default_project(db: Database, explicit: str | None) -> str | None:
    """``explicit`` if that project exists (NotFound with a did-you-mean if not), else the indexed project
    whose root contains the current directory, else None (every project)."""
    import os

    from knowledgebase import store

    with db.connection() as conn:
        if explicit is not None:
            return store.get_project(conn, explicit).name
        project = store.project_for_path(conn, os.path.realpath(os.getcwd()))
    return project.name if project is not None else None


def say_searching_everywhere() -> None:
    """One line on stderr: the current directory is in no indexed project, so every project was searched."""
    import os

    click.echo(
        f"kb: {os.path.realpath(os.getcwd())} is not inside an indexed project: searched all projects "
        "(choose one with --project NAME; `kb projects list` shows them)",
        err=True,
    )
