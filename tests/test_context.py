"""Context assembly: within budget, cited, recorded, Markdown without tags; bad budgets refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.errors import InputError, NotFound
from knowledgebase.facts import add_fact
from knowledgebase.index.ingest import populate_project
from knowledgebase.ranking import DEFAULT_WEIGHTS
from knowledgebase.search.context import build_context
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder, as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)

TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(\s[^<>]*)?/?>")
LONG_FUNCTION = "def export_report(rows):\n" + "".join(
    f"    total_{i} = sum(row[{i}] for row in rows)\n" for i in range(60)
)


def records(db: Database) -> list[store.ContextRecord]:
    with db.connection() as conn:
        return store.list_context_records(conn)


@pytest.fixture
def alpha(db: Database, fake_embedder: HashingEmbedder) -> Database:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES | {"src/report.py": LONG_FUNCTION})
    add_fact(
        db, fake_embedder, label="invoice emails", value="sent with send_invoice_email", project="alpha", confidence=0.9
    )
    add_fact(db, fake_embedder, label="mail server", value="smtp.internal:25", project="alpha", confidence=0.6)
    return db


def test_context_cites_every_item_in_markdown(alpha: Database, fake_embedder: HashingEmbedder) -> None:
    pack = build_context(alpha, fake_embedder, "how are invoice emails sent to the customer?", project="alpha")
    assert pack.items and pack.token_count <= pack.budget == 1500
    assert pack.token_count == fake_embedder.count_tokens(pack.text)
    assert pack.text.startswith("# Context from the knowledgebase")
    assert not TAG.search(pack.text)
    for item in pack.items:
        assert item.citation in pack.text
        if item.kind == "chunk":
            assert re.fullmatch(r"src/\w+\.py:\d+-\d+", item.citation)
            assert f"### {item.citation}" in pack.text
        else:
            assert re.fullmatch(r"fact #\d+, confidence 0\.\d\d", item.citation)
    assert next(i.citation for i in pack.items if i.kind == "chunk") == "src/mail.py:1-6"
    scores = [item.score for item in pack.items]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("budget", [1, 10, 30, 60, 100, 150, 250, 400, 1000])
def test_budget_is_never_exceeded(alpha: Database, fake_embedder: HashingEmbedder, budget: int) -> None:
    every_hit = DEFAULT_WEIGHTS.with_(min_score=0.0)
    for prompt in ["export the report totals", "send invoice email", "open a pool", "slugify a title"]:
        pack = build_context(
            alpha, fake_embedder, prompt, project="alpha", budget=budget, record=False, weights=every_hit
        )
        assert pack.token_count <= budget
        assert fake_embedder.count_tokens(pack.text) == pack.token_count


def test_a_long_chunk_is_cut_at_a_line_boundary(alpha: Database, fake_embedder: HashingEmbedder) -> None:
    every_hit = DEFAULT_WEIGHTS.with_(min_score=0.0)  # the bag-of-words test embedder scores low
    pack = build_context(
        alpha, fake_embedder, "export report totals of rows", project="alpha", budget=300, weights=every_hit
    )
    cut = [i for i in pack.items if i.path == "src/report.py"]
    assert cut and cut[0].truncated and cut[0].start_line == 1 and cut[0].end_line is not None
    assert 1 < cut[0].end_line < 61
    shown = LONG_FUNCTION.split("\n")[: cut[0].end_line]
    assert "\n".join(shown) + "\n```" in pack.text
    assert f"src/report.py:1-{cut[0].end_line}" in pack.text


def test_context_is_recorded(alpha: Database, fake_embedder: HashingEmbedder) -> None:
    pack = build_context(
        alpha,
        fake_embedder,
        "send invoice email, token ghp_a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8",
        project="alpha",
        task_id="T-1",
        budget=500,
    )
    [record] = records(alpha)
    assert record.id == pack.record_id and record.task_id == "T-1"
    assert record.text == pack.text and record.token_count == pack.token_count and record.budget == 500
    assert "ghp_" not in record.prompt  # prompts are redacted before they are stored
    assert [(i["kind"], i["id"], i["citation"]) for i in record.items] == [
        (i.kind, i.id, i.citation) for i in pack.items
    ]
    first = record.items[0]
    assert first["score"] == pytest.approx(pack.items[0].score, abs=1e-6)
    assert set(first["parts"]) >= {"similarity", "text_score", "confidence", "recency", "score"}
    build_context(alpha, fake_embedder, "send invoice email", project="alpha", record=False)
    assert len(records(alpha)) == 1


def test_empty_store_gives_an_empty_block(db: Database, fake_embedder: HashingEmbedder) -> None:
    pack = build_context(db, fake_embedder, "anything at all")
    assert pack.text == "" and pack.items == () and pack.token_count == 0
    assert len(records(db)) == 1


def test_min_score_leaves_out_weak_hits(alpha: Database, fake_embedder: HashingEmbedder) -> None:
    weights = DEFAULT_WEIGHTS.with_(min_score=0.3)
    pack = build_context(alpha, fake_embedder, "send invoice email", project="alpha", weights=weights)
    assert pack.items and all(i.parts.relevance >= 0.3 for i in pack.items)


def test_tag_like_fact_values_stay_in_code_spans(db: Database, fake_embedder: HashingEmbedder) -> None:
    add_fact(db, fake_embedder, label="template root", value="wrap pages in <main> tags", project="alpha")
    pack = build_context(db, fake_embedder, "template root main tags", project="alpha")
    assert "`` wrap pages in <main> tags ``" in pack.text or "` wrap pages in <main> tags `" in pack.text


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"budget": 0}, InputError, "positive number of tokens"),
        ({"budget": -5}, InputError, "positive number of tokens"),
        ({"prompt": "  "}, InputError, "query is empty"),
        ({"project": "ghost"}, NotFound, "project 'ghost'"),
    ],
)
def test_bad_input_records_nothing(
    alpha: Database, fake_embedder: HashingEmbedder, kwargs: dict, error: type[Exception], message: str
) -> None:
    arguments = {"prompt": "send invoice email", "project": "alpha"} | kwargs
    with pytest.raises(error, match=message):
        build_context(alpha, fake_embedder, **arguments)
    assert records(alpha) == []


def test_a_block_shows_a_definition_once_and_says_which_items_are_tests(
    db: Database, fake_embedder: HashingEmbedder, settings: Settings, tmp_path: Path
) -> None:
    root = tmp_path / "beta"
    (root / "src").mkdir(parents=True)
    (root / "tests").mkdir()
    (root / "src/report.py").write_text(LONG_FUNCTION)  # one definition cut into several chunks
    (root / "tests/test_report.py").write_text("def test_export_report():\n    assert export_report(rows)\n")
    populate_project(db, fake_embedder, root, settings=settings)
    with db.connection() as conn:
        chunks = conn.execute("SELECT count(*) FROM file_chunks WHERE symbol = 'export_report'").fetchone()
    assert chunks is not None and chunks[0] > 1
    every_hit = DEFAULT_WEIGHTS.with_(min_score=0.0)
    pack = build_context(db, fake_embedder, "export report rows total", project="beta", weights=every_hit, record=False)
    headings = [line for line in pack.text.split("\n") if line.startswith("### ")]
    assert sum("`export_report`" in h for h in headings) == 1
    tests = [h for h in headings if h.startswith("### tests/")]
    assert len(tests) == 1 and tests[0].endswith("`test_export_report` (test)")
    assert all(h.endswith("`export_report`") for h in headings if h.startswith("### src/"))
