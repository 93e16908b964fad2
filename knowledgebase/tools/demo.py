"""The demo: a real project indexed, a few facts about it with their sources, and the ranked context
for a prompt with the parts of every score.

``run_demo`` is what ``kb demo`` (and ``make demo``) does on the configured database: create or
upgrade the schema (as ``kb init``), index the project (this repository when run from its checkout),
record the facts of ``REPOSITORY_FACTS`` that can be read from its files, and assemble the context
for a prompt. Everything is idempotent: a second run finds every file unchanged and every fact
already recorded, so it embeds nothing and changes nothing.

``seed_project`` (index + facts), ``sample_project`` (a small copy of this package's own code) and
``demo_database`` (a throwaway database) also build the small demo stores of the notebooks and tests.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from knowledgebase.errors import InputError, NotFound

if TYPE_CHECKING:
    from knowledgebase.config import Settings
    from knowledgebase.db import Database
    from knowledgebase.embedding import Embedder
    from knowledgebase.facts import Fact
    from knowledgebase.index.ingest import PopulateReport, ProgressCallback
    from knowledgebase.search.context import ContextPack

DEFAULT_PROMPT = "How do I run the tests?"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # knowledgebase/, the parent of tools/
# folders of this package copied by ``sample_project`` (the migrations come from ``migrations_dir()``)
SAMPLE_FOLDERS = ("store",)


@dataclass(frozen=True)
class DemoFact:
    """A fact to record about a project, read from the first line of ``source_path`` (relative to
    the project root) that matches the regular expression ``source_line``."""

    label: str
    value: str
    source_path: str
    source_line: str
    confidence: float


# True statements about this repository; each cites the line it can be checked against.
REPOSITORY_FACTS: tuple[DemoFact, ...] = (
    DemoFact(
        "how to run the tests",
        "`make test` (the whole suite, against a real embedded PostgreSQL); "
        "one file: `.venv/bin/python -m pytest tests/test_demo.py -q`",
        "Makefile",
        r"^test:",
        0.9,
    ),
    DemoFact(
        "where the database schema is defined",
        "migrations/versions/0001_initial_schema.py (raw SQL in one alembic revision, applied by `kb init`)",
        "migrations/versions/0001_initial_schema.py",
        r"CREATE TABLE projects",
        0.8,
    ),
    DemoFact(
        "how to lint",
        "`make lint` (ruff check, then mypy)",
        "Makefile",
        r"^lint:",
        0.7,
    ),
    DemoFact(
        "where settings are read",
        "knowledgebase/config.py, Settings.from_env: one KB_* environment variable per setting",
        "knowledgebase/config.py",
        r"def from_env",
        0.6,
    ),
    DemoFact(
        "where secrets are redacted",
        "knowledgebase/util/redact.py, before anything is stored or embedded",
        "knowledgebase/util/redact.py",
        r"^def redact\(",
        0.5,
    ),
)

# True statements about the copy made by ``sample_project``.
SAMPLE_FACTS: tuple[DemoFact, ...] = (
    DemoFact(
        "schema",
        "Every table is created in migrations/versions/0001_initial_schema.py",
        "migrations/versions/0001_initial_schema.py",
        r"CREATE TABLE projects",
        0.9,
    ),
    DemoFact(
        "knowledge table",
        "A fact is a row of the knowledge table: label, value, source and a confidence_score between 0 and 1",
        "migrations/versions/0001_initial_schema.py",
        r"CREATE TABLE knowledge",
        0.4,
    ),
    DemoFact(
        "fact storage",
        "store/knowledge.py inserts and reads rows of the knowledge table (insert_knowledge, list_knowledge)",
        "store/knowledge.py",
        r"def insert_knowledge",
        0.7,
    ),
    DemoFact(
        "chunk storage",
        "store/files.py writes file chunks in batches (insert_chunks) and finds the nearest ones (nearest_chunks)",
        "store/files.py",
        r"def insert_chunks",
        0.5,
    ),
    DemoFact(
        "row helpers",
        "store/_rows.py fetches query results into frozen dataclasses (fetch_one, fetch_all)",
        "store/_rows.py",
        r"def fetch_all",
        0.3,
    ),
)


@dataclass(frozen=True)
class SkippedFact:
    """A demo fact that was not recorded, and why."""

    label: str
    reason: str


@dataclass(frozen=True)
class SeededProject:
    """A project indexed and given its facts: ``facts`` are active now (new or kept), ``facts_added``
    of them were recorded by this run."""

    populate: PopulateReport
    facts: tuple[Fact, ...]
    facts_added: int
    skipped_facts: tuple[SkippedFact, ...]


@dataclass(frozen=True)
class DemoResult:
    """What ``run_demo`` did and the context it assembled."""

    root: Path
    seeded: SeededProject
    prompt: str
    context: ContextPack


def checkout_root() -> Path | None:
    """The root of the source checkout this package runs from, or None when installed from a wheel."""
    root = PACKAGE_DIR.parent
    try:
        with (root / "pyproject.toml").open("rb") as file:
            name = tomllib.load(file).get("project", {}).get("name")
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if name == "knowledgebase" else None


def default_demo_root(cwd: Path | None = None) -> Path:
    """The project ``kb demo`` indexes without a PATH: this repository when run from its checkout,
    else the current directory if it is a git work tree."""
    checkout = checkout_root()
    if checkout is not None:
        return checkout
    here = (cwd or Path.cwd()).resolve()
    if (here / ".git").exists():
        return here
    raise InputError(
        "kb demo indexes the knowledgebase repository when run from its checkout; this one is installed "
        f"from a package and {here} is not a git work tree: pass the project to index, `kb demo PATH`"
    )


def sample_project(destination: Path) -> Path:
    """Copy a small real project into ``destination`` (created; it must not exist yet): this package's
    ``store/`` folder and its migrations. ``SAMPLE_FACTS`` hold for the copy."""
    from knowledgebase.db.schema import migrations_dir

    if destination.exists():
        raise InputError(f"{destination} exists already; give sample_project a new folder")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in SAMPLE_FOLDERS:
        shutil.copytree(PACKAGE_DIR / folder, destination / folder, ignore=ignore)
    shutil.copytree(migrations_dir(), destination / "migrations", ignore=ignore)
    return destination


@contextmanager
def demo_database(url: str | None = None) -> Iterator[str]:
    """A database for a demo store, at the head revision: ``url`` when given, else a throwaway
    embedded server in a temporary folder, stopped and removed on exit."""
    from knowledgebase.db.schema import upgrade

    if url:
        upgrade(url)
        yield url
        return
    from knowledgebase.db.embedded import ensure_server, stop_server

    with tempfile.TemporaryDirectory(prefix="kb-demo-") as folder:
        pgdata = Path(folder) / "pgdata"
        try:
            server_url = ensure_server(pgdata).url()
            upgrade(server_url)
            yield server_url
        finally:
            stop_server(pgdata)


def seed_project(
    db: Database,
    embedder: Embedder,
    root: Path | str,
    *,
    settings: Settings,
    project: str | None = None,
    facts: Sequence[DemoFact] = REPOSITORY_FACTS,
    progress: ProgressCallback | None = None,
) -> SeededProject:
    """Index ``root`` (incrementally) and record each of ``facts`` whose source line is found, citing
    that line; a fact already recorded with the same value is left as it is."""
    from knowledgebase.facts import FactSource, add_fact, list_facts
    from knowledgebase.index.ingest import populate_project

    report = populate_project(db, embedder, root, project=project, settings=settings, progress=progress)
    recorded: list[Fact] = []
    skipped: list[SkippedFact] = []
    added = 0
    for fact in facts:
        line = _source_line(Path(report.root), fact)
        if isinstance(line, SkippedFact):
            skipped.append(line)
            continue
        same = [f for f in list_facts(db, project=report.project, label=fact.label) if f.fact_value == fact.value]
        if same:
            recorded.append(same[0])
            continue
        try:
            stored = add_fact(
                db,
                embedder,
                label=fact.label,
                value=fact.value,
                project=report.project,
                confidence=fact.confidence,
                source=FactSource.from_chunk(fact.source_path, line=line),
            )
        except NotFound as exc:  # the source file is not indexed (ignored, too large...)
            skipped.append(SkippedFact(fact.label, str(exc)))
            continue
        recorded.append(stored)
        added += 1
    return SeededProject(report, tuple(recorded), added, tuple(skipped))


def _source_line(root: Path, fact: DemoFact) -> int | SkippedFact:
    """The 1-based number of the first line of the fact's source that matches, or why there is none."""
    path = root / fact.source_path
    if not path.is_file():
        return SkippedFact(fact.label, f"{fact.source_path} is not in this project")
    pattern = re.compile(fact.source_line)
    with path.open(encoding="utf-8", errors="replace") as lines:
        for number, text in enumerate(lines, start=1):
            if pattern.search(text):
                return number
    return SkippedFact(fact.label, f"no line of {fact.source_path} matches {fact.source_line!r}")


def run_demo(
    settings: Settings,
    *,
    path: Path | str | None = None,
    prompt: str = DEFAULT_PROMPT,
    embedder: Embedder | None = None,
    progress: ProgressCallback | None = None,
) -> DemoResult:
    """Upgrade the schema, seed the project at ``path`` (default ``default_demo_root()``) and assemble
    the context for ``prompt`` (not recorded in ``context_log``, so the demo leaves no trace there)."""
    from knowledgebase.db import database_url, open_database
    from knowledgebase.db.schema import upgrade
    from knowledgebase.embedding import embedder_from_settings
    from knowledgebase.index.scanning import resolve_root
    from knowledgebase.search.context import build_context

    if not prompt.strip():
        raise InputError("the demo prompt is empty; say what you want context for")
    root = resolve_root(path) if path is not None else default_demo_root()
    upgrade(database_url(settings, owner=True))
    embedder = embedder or embedder_from_settings(settings)
    with open_database(settings) as db:
        seeded = seed_project(db, embedder, root, settings=settings, progress=progress)
        pack = build_context(
            db,
            embedder,
            prompt,
            project=seeded.populate.project,
            budget=settings.context_budget,
            record=False,
        )
    return DemoResult(root=root, seeded=seeded, prompt=prompt, context=pack)
