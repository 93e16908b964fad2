"""Store statistics for exploring a store: counts, sizes, embeddings, commands, score breakdowns."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.coordination.audit import log_command, log_exchange
from knowledgebase.db import Database
from knowledgebase.errors import InputError
from knowledgebase.facts import FactSource, add_fact
from knowledgebase.ranking import DEFAULT_WEIGHTS, score
from knowledgebase.tools import insights
from tests.support import HashingEmbedder
from tests.test_ingest import make_project, populate, settle


@pytest.fixture
def shop(db: Database, settings: Settings, tmp_path: Path) -> Path:
    """Project ``shop`` (4 files in app/, web/ and the root) with facts, one of them stale, and commands."""
    root = make_project(tmp_path / "shop")
    embedder = HashingEmbedder()
    populate(db, embedder, root, settings)
    add_fact(db, embedder, label="entry point", value="app/main.py start_server", project="shop",
             source=FactSource.from_chunk("app/util.py", line=2))  # fmt: skip
    add_fact(db, embedder, label="port", value="8080", project="shop", confidence=0.9)
    add_fact(db, embedder, label="port", value="8081", project="shop", confidence=0.9)  # supersedes 8080
    add_fact(db, embedder, label="style", value="black", confidence=0.3)  # no project
    (root / "app" / "util.py").write_text("def slugify(value):\n    return value.lower()\n")
    populate(db, embedder, settle(root), settings)  # the entry-point fact's chunk changed: stale
    with db.connection() as conn:
        project_id = store.get_project(conn, "shop").id
    log_command(db, command="pytest -q", project_id=project_id, task_id="T-1", return_code=0, success=True)
    log_command(db, command="make lint", project_id=project_id, task_id="T-1", return_code=2, success=False)
    log_exchange(db, prompt="what does slugify do?", response="lower-cases", task_id="T-2")
    return root


def test_store_counts_per_project_and_kind(db: Database, shop: Path) -> None:
    counts = {(c.project, c.category, c.kind): c.count for c in insights.store_counts(db)}
    assert counts[("shop", "files", "python")] == 2
    assert counts[("shop", "files", "markdown")] == 1
    assert counts[("shop", "files", "javascript")] == 1
    assert counts[("shop", "facts", "stale")] == 1
    assert counts[("shop", "facts", "active")] == 1
    assert counts[("shop", "facts", "superseded")] == 1
    assert counts[(None, "facts", "active")] == 1
    assert counts[("shop", "commands", "shell")] == 2
    assert counts[(None, "commands", "prompt")] == 1
    chunks = sum(n for (project, category, _), n in counts.items() if project == "shop" and category == "chunks")
    assert chunks == len(insights.chunk_stats(db, "shop")) > 0


def test_file_and_chunk_sizes(db: Database, shop: Path) -> None:
    files = {f.path: f for f in insights.file_stats(db, "shop")}
    assert set(files) == {"README.md", "app/main.py", "app/util.py", "web/index.js"}
    for path, stat in files.items():
        assert stat.size_bytes == (shop / path).stat().st_size
    assert files["app/main.py"].directory == "app" and files["README.md"].directory == "."
    chunks = insights.chunk_stats(db, "shop")
    assert sum(f.chunks for f in files.values()) == len(chunks)
    assert sum(f.tokens for f in files.values()) == sum(c.tokens for c in chunks)
    main = [c for c in chunks if c.path == "app/main.py"]
    assert all(c.lines >= 1 and c.tokens > 0 and c.chars > 0 for c in main)
    assert insights.file_stats(db, "no-such-project") == []


def test_chunk_embeddings_and_their_two_dimensional_map(db: Database, shop: Path) -> None:
    embedded = insights.chunk_embeddings(db, "shop")
    assert embedded.vectors.shape == (len(embedded.ids), 384)
    assert set(embedded.directories) == {"app", "web", "."}
    projection = insights.pca_2d(embedded.vectors)
    assert projection.points.shape == (len(embedded.ids), 2)
    first, second = projection.explained_variance
    assert 1.0 >= first >= second >= 0.0
    assert insights.chunk_embeddings(db, "shop", limit=2).vectors.shape == (2, 384)


def test_pca_of_points_on_a_line_explains_everything_with_one_axis() -> None:
    line = np.outer(np.arange(5.0), [1.0, 2.0, 2.0])
    projection = insights.pca_2d(line)
    assert projection.explained_variance == pytest.approx((1.0, 0.0), abs=1e-9)
    assert np.abs(projection.points[:, 0]) == pytest.approx(3 * np.abs(np.arange(5.0) - 2))  # |(1, 2, 2)| = 3


def test_recent_commands_newest_first_with_their_outcome(db: Database, shop: Path) -> None:
    commands = insights.recent_commands(db)
    assert [c.command for c in commands] == ["what does slugify do?", "make lint", "pytest -q"]
    assert [c.success for c in commands] == [None, False, True]
    assert insights.success_rate(commands) == 0.5
    assert [c.command for c in insights.recent_commands(db, project="shop", limit=1)] == ["make lint"]
    assert [c.task_id for c in insights.recent_commands(db, task_id="T-2")] == ["T-2"]
    assert insights.success_rate([]) is None


def test_a_score_breakdown_adds_up_to_the_score() -> None:
    now = datetime.now(UTC)
    parts = score(
        similarity=0.62,
        text_rank=0.3,
        identifier_match=True,
        confidence=0.5,
        age_seconds=(now - (now - timedelta(days=45))).total_seconds(),
    )
    breakdown = insights.score_breakdown(parts)
    assert breakdown.vector == pytest.approx(0.62)
    assert breakdown.identifier == pytest.approx(DEFAULT_WEIGHTS.identifier)
    assert breakdown.confidence < 0 and breakdown.recency < 0
    total = breakdown.vector + breakdown.text + breakdown.identifier + breakdown.confidence + breakdown.recency
    assert total == pytest.approx(parts.score) and breakdown.score == parts.score
    plain = insights.score_breakdown(score(similarity=0.4))
    assert (plain.confidence, plain.recency, plain.score) == (0.0, 0.0, pytest.approx(0.4))


def test_bad_limits_and_too_few_vectors_are_refused(db: Database) -> None:
    with pytest.raises(InputError, match="limit 0 must be at least 1"):
        insights.recent_commands(db, limit=0)
    with pytest.raises(InputError, match="limit 0 must be at least 1"):
        insights.chunk_embeddings(db, limit=0)
    with pytest.raises(InputError, match="at least two vectors"):
        insights.pca_2d(insights.chunk_embeddings(db).vectors)  # an empty store
