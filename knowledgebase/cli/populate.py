"""``kb populate`` (index a project directory) and ``kb reembed`` (move the store to another model)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, settings_from

if TYPE_CHECKING:
    from rich.progress import TaskID

    from knowledgebase.config import Settings
    from knowledgebase.embedding import Embedder
    from knowledgebase.index.backfill import BackfillProgress
    from knowledgebase.index.ingest import PopulateProgress, PopulateReport, ReembedProgress, ReembedReport


@click.command()
@click.argument("path", default=".", required=False)
@click.option("--project", metavar="NAME", help="Project name (default: the directory's name).")
@click.option(
    "--move-root",
    is_flag=True,
    help="Move the project to PATH when it was indexed from another folder (files not in PATH leave it).",
)
@database_url_option
@json_option
def populate(path: str, project: str | None, move_root: bool, database_url: str | None, as_json: bool) -> None:
    """Index PATH (default: here) for agents: scan, chunk and embed its files.

    Honours .gitignore and .kbignore; skips binary, huge, vendored, lock and secret files; redacts
    secrets. Re-runs only read changed files and only embed chunks whose content is new.

    \b
    Examples:
      kb populate                       # this folder, as a project named after it
      kb populate ~/src/shop --project shop --json
    """
    from knowledgebase.db import open_database
    from knowledgebase.embedding import embedder_from_settings
    from knowledgebase.index.ingest import populate_project
    from knowledgebase.index.scanning import resolve_root

    root = resolve_root(path)  # a bad path fails before any server is started
    settings = settings_from(database_url)
    embedder = embedder_from_settings(settings)
    with open_database(settings) as db:
        if as_json:
            report = populate_project(db, embedder, root, project=project, settings=settings, move_root=move_root)
        else:
            with _progress_bar() as update:
                report = populate_project(
                    db, embedder, root, project=project, settings=settings, progress=update, move_root=move_root
                )
    if as_json:
        print_json(report)
    else:
        _print_summary(report)
    if report.files_indexed == 0:
        click.echo(
            f"kb: warning: nothing to index under {report.root} ({len(report.skipped)} skipped): project "
            f"{report.project!r} is empty; remove it with `kb projects rm {report.project}`",
            err=True,
        )


@click.command()
@click.option(
    "--missing",
    is_flag=True,
    help="Only chunk and embed what has no vectors yet (rows written by plain SQL); keeps the store's model.",
)
@database_url_option
@json_option
def reembed(missing: bool, database_url: str | None, as_json: bool) -> None:
    """Re-embed every chunk and fact with KB_EMBED_MODEL and make it the store's model.

    When the new model's dimension differs, the vector columns are retyped and their HNSW indexes
    rebuilt. Safe to interrupt: running it again finishes the job.

    With --missing, chunk and embed the project_files rows that have no chunks and embed the facts
    that have no vector (what SQL written against the seed design inserts), redacting them first;
    `kb status` shows how many wait. Example: kb reembed --missing
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from knowledgebase.db import open_database
    from knowledgebase.embedding import embedder_from_settings
    from knowledgebase.index.ingest import reembed_store

    settings = settings_from(database_url)
    embedder = embedder_from_settings(settings)
    if missing:
        _index_missing(settings, embedder, as_json)
        return
    with open_database(settings, owner=True) as db:  # retyping columns and building indexes: the owner's work
        if as_json:
            report = reembed_store(db, embedder)
        else:
            console = Console(stderr=True)
            columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            with Progress(*columns, console=console) as bar:
                task = bar.add_task(f"re-embedding with {embedder.name}", total=None)

                def update(event: ReembedProgress) -> None:
                    bar.update(task, completed=event.done, total=event.total or None, description=event.phase)

                report = reembed_store(db, embedder, progress=update)
    if as_json:
        print_json(report)
    else:
        click.echo(_reembed_line(report))


def _index_missing(settings: Settings, embedder: Embedder, as_json: bool) -> None:
    from rich.console import Console

    from knowledgebase.db import open_database
    from knowledgebase.index.backfill import index_missing

    with open_database(settings) as db:
        if as_json:
            report = index_missing(db, embedder, settings=settings)
        else:
            with Console(stderr=True).status("chunking and embedding rows written without kb...") as status:

                def update(event: BackfillProgress) -> None:
                    status.update(f"{event.phase}: {event.done} done")

                report = index_missing(db, embedder, settings=settings, progress=update)
    if as_json:
        print_json(report)
        return
    click.echo(
        f"{report.files_chunked} files chunked ({report.chunks_written} chunks, {report.chunks_embedded} embedded), "
        f"{report.facts_embedded} facts embedded, {report.summaries_embedded} definition summaries embedded, "
        f"{report.secrets_redacted} secrets redacted"
    )
    for skip in report.skipped:
        click.echo(f"skipped {skip.path} (file #{skip.file_id}): {skip.reason}")


@contextmanager
def _progress_bar() -> Iterator[Callable[[PopulateProgress], None]]:
    """A rich progress bar on stderr and its updater: files while reading, then chunks while embedding,
    with the rate and the time left, and one line saying how much there is to embed and how long it takes."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("left"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as bar:
        tasks: list[TaskID] = []  # created on the first event, so an early error leaves no empty bar
        told: list[bool] = []

        def update(event: PopulateProgress) -> None:
            if not tasks:
                tasks.append(bar.add_task(event.phase, total=None, unit="", detail=""))
            task = tasks[0]
            if event.phase == "reading":
                bar.update(task, description="reading", completed=event.files_done, total=event.files_total or None,
                           unit="files", detail="")  # fmt: skip
            elif event.phase == "loading":
                bar.update(task, description="loading model", completed=0, total=None, unit="", detail="")
            elif event.phase == "embedding":
                rate = f"{event.chunks_per_second:.1f} chunks/s" if event.chunks_embedded else ""
                bar.update(task, description="embedding", completed=event.chunks_embedded,
                           total=event.chunks_to_embed or None, unit="chunks", detail=rate)  # fmt: skip
                if event.chunks_embedded and not told and event.chunks_to_embed > event.chunks_embedded:
                    told.append(True)
                    left = (event.chunks_to_embed - event.chunks_embedded) / max(event.chunks_per_second, 1e-9)
                    console.print(
                        f"{event.chunks_to_embed:,} chunks to embed ({event.chunks_reused:,} reused so far), "
                        f"about {left:.0f} s more at {event.chunks_per_second:.0f} chunks/s",
                        highlight=False,
                    )
            else:
                bar.update(task, description=event.phase, detail="")

        yield update


def _print_summary(report: PopulateReport) -> None:
    """The summary table, on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report.project}  ({report.root})", show_header=False, title_justify="left")
    table.add_column(justify="left")
    table.add_column(justify="right")
    for label, value in (
        ("added", report.added),
        ("changed", report.changed),
        ("unchanged", report.unchanged),
        ("deleted", report.deleted),
        ("files indexed", report.files_indexed),
        ("chunks written", report.chunks_written),
        ("  embedded", report.chunks_embedded),
        ("  reused (same content)", report.chunks_reused),
        ("definition summaries embedded", report.summaries_embedded),
        ("secrets redacted", report.secrets_redacted),
    ):
        table.add_row(label, str(value))
    for reason, count in report.skipped_by_reason.items():
        table.add_row(f"skipped: {reason}", str(count))
    if report.lossy_files:
        table.add_row("decoded with replacement characters", ", ".join(report.lossy_files[:5]))
    timings = report.timings
    texts = report.chunks_embedded + report.summaries_embedded  # chunks and their definitions' short texts
    rate = f" ({texts / timings.embed:.1f} texts/s)" if timings.embed else ""
    table.add_row("time", f"{timings.total:.1f} s, embedding {timings.embed:.1f} s{rate}")
    table.add_row("embedding backend", report.backend)
    Console().print(table)


def _reembed_line(report: ReembedReport) -> str:
    previous = f"{report.previous_model} ({report.previous_dimension} dims)" if report.previous_model else "no model"
    retyped = "; vector columns retyped and indexes rebuilt" if report.retyped else ""
    return (
        f"{previous} -> {report.model} ({report.dimension} dims): {report.chunks_embedded} chunks embedded, "
        f"{report.chunks_reused} reused, {report.facts_embedded} facts embedded in {report.seconds:.1f} s{retyped}"
    )
