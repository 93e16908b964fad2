"""Facts: add, reinforce, supersede, decay, stale-on-change, confirm, forget, and bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.errors import InputError, NotFound
from knowledgebase.facts import FactSource, add_fact, confirm_fact, forget_fact, get_fact, list_facts
from knowledgebase.ranking import DEFAULT_WEIGHTS
from knowledgebase.search.retrieval import search
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder, as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)


def count(db: Database, query: str = "SELECT count(*) FROM knowledge") -> int:
    with db.connection() as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return int(row[0])


def test_add_fact_is_stored_embedded_and_searchable(db: Database, fake_embedder: HashingEmbedder) -> None:
    fact = add_fact(
        db, fake_embedder, label="test command", value="make test", project="alpha", confidence=0.8, task_id="T-1"
    )
    assert fact.fact_label == "test command" and fact.fact_value == "make test" and fact.project == "alpha"
    assert fact.confidence_score == 0.8 and fact.effective_confidence == pytest.approx(0.8, abs=1e-3)
    assert fact.status == "active" and fact.confirmations == 1 and fact.task_id == "T-1"
    assert get_fact(db, fact.id) == fact
    with db.connection() as conn:
        row = conn.execute("SELECT embedding IS NOT NULL, embedding_model_id FROM knowledge").fetchone()
    assert row is not None and row[0] and row[1] is not None
    hits = search(db, fake_embedder, "which test command", project="alpha", kinds=("fact",))
    assert [h.id for h in hits] == [fact.id]
    assert hits[0].confidence_score == 0.8 and hits[0].fact_label == "test command"


def test_secrets_are_redacted_before_storing(db: Database, fake_embedder: HashingEmbedder) -> None:
    secret = "ghp_" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8"
    fact = add_fact(
        db,
        fake_embedder,
        label="deploy token",
        value=f"export GITHUB_TOKEN={secret}",
        extracted_from=f"cat .env {secret}",
    )
    assert secret not in fact.fact_value and "[REDACTED" in fact.fact_value
    assert fact.extracted_from is not None and secret not in fact.extracted_from
    with db.connection() as conn:
        dump = conn.execute("SELECT k::text FROM knowledge k").fetchone()
    assert dump is not None and secret not in dump[0] and secret.lower() not in dump[0]


def test_restating_reinforces_instead_of_duplicating(db: Database, fake_embedder: HashingEmbedder) -> None:
    first = add_fact(db, fake_embedder, label="test command", value="Run the tests with `make test`.", project="alpha")
    again = add_fact(db, fake_embedder, label="Test  Command", value="run the tests with make test", project="alpha")
    assert again.id == first.id
    assert again.confirmations == 2
    assert again.confidence_score > first.confidence_score
    assert again.last_confirmed_at > first.last_confirmed_at
    assert count(db) == 1
    # the same label in another project is another fact
    other = add_fact(db, fake_embedder, label="test command", value="make test", project="beta")
    assert other.id != first.id and count(db) == 2


def test_paraphrase_reinforces_but_a_changed_literal_supersedes(db: Database, real_embedder) -> None:  # type: ignore[no-untyped-def]
    first = add_fact(db, real_embedder, label="test command", value="run the tests with make test", project="alpha")
    paraphrase = add_fact(
        db, real_embedder, label="test command", value="the tests are run using make test", project="alpha"
    )
    assert paraphrase.id == first.id and paraphrase.confirmations == 2
    port = add_fact(db, real_embedder, label="db port", value="the database listens on port 5432", project="alpha")
    moved = add_fact(db, real_embedder, label="db port", value="the database listens on port 5433", project="alpha")
    assert moved.id != port.id and moved.supersedes == (port.id,)


def test_contradiction_supersedes_and_keeps_history(db: Database, fake_embedder: HashingEmbedder) -> None:
    old = add_fact(db, fake_embedder, label="test command", value="make test", project="alpha", confidence=0.9)
    new = add_fact(db, fake_embedder, label="test command", value="pytest -x", project="alpha", confidence=0.6)
    assert new.id != old.id and new.supersedes == (old.id,)
    kept = get_fact(db, old.id)
    assert kept.status == "superseded" and kept.superseded_by == new.id and kept.fact_value == "make test"
    assert [f.id for f in list_facts(db, project="alpha")] == [new.id]
    assert {f.id for f in list_facts(db, project="alpha", include_inactive=True)} == {old.id, new.id}
    hits = search(db, fake_embedder, "make test command", project="alpha", kinds=("fact",))
    assert [h.id for h in hits] == [new.id]  # the superseded value is not returned
    with pytest.raises(InputError, match=f"superseded by fact #{new.id}"):
        confirm_fact(db, old.id)


def test_confidence_decays_with_time_since_last_confirmation(db: Database, fake_embedder: HashingEmbedder) -> None:
    weights = DEFAULT_WEIGHTS.with_(confidence_half_life_days=30.0)
    fact = add_fact(db, fake_embedder, label="ci", value="github actions", confidence=0.8)
    with db.connection() as conn:
        conn.execute("UPDATE knowledge SET inserted_at = now() - interval '300 days', last_confirmed_at = now()")
    assert get_fact(db, fact.id, weights=weights).effective_confidence == pytest.approx(0.8, abs=1e-3)
    with db.connection() as conn:
        conn.execute("UPDATE knowledge SET last_confirmed_at = now() - interval '30 days'")
    decayed = get_fact(db, fact.id, weights=weights)
    assert decayed.effective_confidence == pytest.approx(0.4, abs=1e-3)
    assert decayed.confidence_score == 0.8  # the stored confidence is unchanged
    confirmed = confirm_fact(db, fact.id, weights=weights)
    assert confirmed.confirmations == 2 and confirmed.effective_confidence > 0.8


def test_fact_from_a_chunk_goes_stale_when_the_chunk_changes(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    fact = add_fact(
        db,
        fake_embedder,
        label="pool size default",
        value="open_pool uses 4 connections by default",
        project="alpha",
        source=FactSource.from_chunk("src/db.py", line=2),
        confidence=0.8,
    )
    assert fact.source_kind == "chunk" and fact.source_file_path == "src/db.py"
    with db.connection() as conn:
        chunk_hashes = [c.content_hash for c in store.list_chunks(conn, store.get_file(conn, 1, "src/db.py").id)]
    assert fact.source_chunk_hash == chunk_hashes[0]
    before = search(db, fake_embedder, "pool size default connections", project="alpha", kinds=("fact",))[0]
    # a later populate changed that chunk: the ingestion marks facts whose chunk hash is gone as stale
    changed = SOURCES["src/db.py"].replace("size=4", "size=8")
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", {"src/db.py": changed})
        conn.execute(
            "UPDATE knowledge SET is_stale = true, stale_since = now() WHERE source_file_id = %s"
            " AND source_chunk_hash <> ALL(SELECT content_hash FROM file_chunks WHERE file_id = %s)",
            (store.get_file(conn, 1, "src/db.py").id, store.get_file(conn, 1, "src/db.py").id),
        )
    stale = get_fact(db, fact.id)
    assert stale.is_stale
    assert stale.effective_confidence == pytest.approx(0.8 * DEFAULT_WEIGHTS.stale_factor, abs=1e-3)
    after = search(db, fake_embedder, "pool size default connections", project="alpha", kinds=("fact",))[0]
    assert after.is_stale and after.score < before.score and "stale" in after.citation()
    # someone checks it again: confirmation clears the flag
    assert not confirm_fact(db, fact.id).is_stale


def test_forget(db: Database, fake_embedder: HashingEmbedder) -> None:
    fact = add_fact(db, fake_embedder, label="flaky test", value="test_upload is flaky", project="alpha")
    forgotten = forget_fact(db, fact.id)
    assert forgotten.status == "forgotten"
    assert list_facts(db, project="alpha") == []
    assert search(db, fake_embedder, "flaky test upload", project="alpha", kinds=("fact",)) == []
    assert get_fact(db, fact.id).status == "forgotten"  # kept on record
    with pytest.raises(InputError, match="forgotten"):
        confirm_fact(db, fact.id)
    with pytest.raises(NotFound, match="fact #999"):
        forget_fact(db, 999)
    # stating it again starts a new fact
    assert add_fact(db, fake_embedder, label="flaky test", value="test_upload is flaky", project="alpha").id != fact.id


def test_sources(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        entry = store.insert_command_log(conn, store.NewCommandLog(kind="shell", command="make test"))
    from_command = add_fact(db, fake_embedder, label="tests", value="pass", source=FactSource.from_command(entry.id))
    assert from_command.source_kind == "command" and from_command.source_command_id == entry.id
    from_prompt = add_fact(
        db, fake_embedder, label="style", value="use tabs", source=FactSource.from_prompt("please always use tabs")
    )
    assert from_prompt.source_kind == "prompt" and from_prompt.extracted_from == "please always use tabs"


def test_concurrent_restatements_make_one_fact(db: Database, fake_embedder: HashingEmbedder) -> None:
    def state(_: int) -> int:
        return add_fact(db, fake_embedder, label="lint command", value="make lint", project="alpha").id

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = set(pool.map(state, range(4)))
    assert len(ids) == 1
    assert get_fact(db, ids.pop()).confirmations == 4
    assert count(db) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"label": "  ", "value": "x"}, InputError, "needs a label"),
        ({"label": "x", "value": ""}, InputError, "needs a value"),
        ({"label": "x", "value": "y", "confidence": 1.5}, InputError, "between 0 and 1"),
        ({"label": "x", "value": "y", "confidence": -0.1}, InputError, "between 0 and 1"),
        ({"label": "x", "value": "v" * 9000}, InputError, "at most"),
        ({"label": "x", "value": "y", "source": FactSource.from_command(12345)}, NotFound, "command"),
        (
            {"label": "x", "value": "y", "project": "alpha", "source": FactSource.from_chunk("nope.py", line=1)},
            NotFound,
            "not indexed",
        ),
        (
            {"label": "x", "value": "y", "project": "alpha", "source": FactSource.from_chunk("src/db.py", "bad")},
            NotFound,
            "no chunk",
        ),
        ({"label": "x", "value": "y", "source": FactSource.from_chunk("src/db.py", line=1)}, InputError, "project"),
        ({"label": "x", "value": "y", "source": FactSource(kind="rumour")}, InputError, "unknown fact source"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_stored(
    db: Database, fake_embedder: HashingEmbedder, kwargs: dict, error: type[Exception], message: str
) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    existing = add_fact(db, fake_embedder, label="x", value="original", project="alpha")
    with pytest.raises(error, match=message):
        add_fact(db, fake_embedder, **kwargs)
    assert count(db) == 1 and get_fact(db, existing.id) == existing


def test_reading_unknown_things(db: Database) -> None:
    with pytest.raises(NotFound, match="fact #7"):
        get_fact(db, 7)
    with pytest.raises(NotFound, match="fact #7"):
        confirm_fact(db, 7)
    with pytest.raises(NotFound, match="project 'ghost'"):
        list_facts(db, project="ghost")
    with pytest.raises(InputError, match="limit"):
        list_facts(db, limit=0)


def test_list_filters(db: Database, fake_embedder: HashingEmbedder, conn: psycopg.Connection) -> None:
    a = add_fact(db, fake_embedder, label="build", value="make", project="alpha", task_id="T-1")
    b = add_fact(db, fake_embedder, label="deploy", value="fly deploy", project="alpha")
    add_fact(db, fake_embedder, label="build", value="cargo build", project="beta")
    assert [f.id for f in list_facts(db, project="alpha")] == [b.id, a.id]
    assert [f.id for f in list_facts(db, project="alpha", label="BUILD")] == [a.id]
    assert [f.id for f in list_facts(db, task_id="T-1")] == [a.id]
    assert len(list_facts(db)) == 3
    assert list_facts(db, stale_only=True) == []


def test_populate_marks_facts_of_changed_code_stale_end_to_end(
    db: Database,
    fake_embedder: HashingEmbedder,
    settings,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    from knowledgebase.index.ingest import populate_project
    from knowledgebase.search.context import build_context

    root = tmp_path / "shop"
    (root / "src").mkdir(parents=True)
    for path, source in SOURCES.items():
        (root / path).write_text(source)
    populate_project(db, fake_embedder, root, project="shop", settings=settings)
    about_pool = add_fact(
        db, fake_embedder, label="pool size default", value="open_pool opens 4 connections unless told otherwise",
        project="shop", source=FactSource.from_chunk("src/db.py", line=3), confidence=0.9,
    )  # fmt: skip
    about_slugs = add_fact(
        db, fake_embedder, label="slug format", value="slugify joins lowercase words with dashes",
        project="shop", source=FactSource.from_chunk("src/text.py", line=2), confidence=0.9,
    )  # fmt: skip
    (root / "src/db.py").write_text(SOURCES["src/db.py"].replace("size=4", "size=16"))
    populate_project(db, fake_embedder, root, project="shop", settings=settings)
    stale, fresh = get_fact(db, about_pool.id), get_fact(db, about_slugs.id)
    assert stale.is_stale and not fresh.is_stale
    assert stale.effective_confidence == pytest.approx(0.9 * DEFAULT_WEIGHTS.stale_factor, abs=1e-3)
    assert fresh.effective_confidence == pytest.approx(0.9, abs=1e-3)
    pack = build_context(db, fake_embedder, "pool size default connections", project="shop", record=False)
    assert f"fact #{stale.id}, confidence {stale.effective_confidence:.2f}, stale" in pack.text


def test_a_correction_keeps_the_higher_confidence_unless_given(db: Database, fake_embedder: HashingEmbedder) -> None:
    old = add_fact(db, fake_embedder, label="db port", value="5432", project="alpha", confidence=0.85)
    new = add_fact(db, fake_embedder, label="db port", value="5433", project="alpha")
    assert new.supersedes == (old.id,) and new.confidence_score == 0.85
    stated = add_fact(db, fake_embedder, label="db port", value="5434", project="alpha", confidence=0.3)
    assert stated.supersedes == (new.id,) and stated.confidence_score == 0.3
    fresh = add_fact(db, fake_embedder, label="cache host", value="redis.internal", project="alpha")
    assert fresh.confidence_score == 0.5
    with pytest.raises(InputError, match="between 0 and 1"):
        add_fact(db, fake_embedder, label="db port", value="1", project="alpha", confidence=1.5)
