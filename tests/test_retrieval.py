"""Search over chunks, facts and commands: meaning, identifiers, filters, diversity, explanations, errors."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg
import pytest

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.errors import InputError, ModelMismatch, NotFound
from knowledgebase.facts import FactSource, add_fact
from knowledgebase.ranking import DEFAULT_WEIGHTS, LEGACY, score
from knowledgebase.search.hits import ChunkHit, CommandHit, FactHit
from knowledgebase.search.retrieval import MAX_EMBED_CHARS, embedded_query, rerank, search, search_candidates
from knowledgebase.util.lexical import code_identifiers, tsquery_text
from knowledgebase.util.pathglob import glob_matches, glob_to_regex
from tests.retrieval_support import SOURCES, index_files
from tests.support import HashingEmbedder


@pytest.mark.parametrize(
    ("query", "path", "start"),
    [
        ("email a PDF invoice to a customer", "src/mail.py", 1),
        ("create a database connection pool", "src/db.py", 1),
        ("make a URL-friendly version of a heading", "src/text.py", 1),
        ("retry failed deliveries with exponential backoff", "src/mail.py", 9),
        ("apply schema migrations", "src/db.py", 7),
    ],
)
def test_real_model_finds_the_right_function_among_distractors(
    db: Database,
    real_embedder,
    query: str,
    path: str,
    start: int,  # type: ignore[no-untyped-def]
) -> None:
    with db.connection() as conn:
        index_files(conn, real_embedder, "alpha", SOURCES)
    hits = search(db, real_embedder, query, project="alpha", kinds=("chunk",), limit=3)
    assert (hits[0].path, hits[0].start_line) == (path, start), [h.explain() for h in hits]


def test_identifiers_are_findable_by_full_text(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    for query, path, start in [
        ("send_invoice_email", "src/mail.py", 1),
        ("where is RetryPolicy", "src/mail.py", 9),
        ("retry policy", "src/mail.py", 9),  # CamelCase split into words
        ("open pool", "src/db.py", 1),  # snake_case split into words
    ]:
        hits = search(db, fake_embedder, query, project="alpha", kinds=("chunk",), limit=1)
        assert (hits[0].path, hits[0].start_line) == (path, start), query
    hit = search(db, fake_embedder, "send_invoice_email", project="alpha", limit=1)[0]
    assert hit.parts.identifier_match and hit.parts.text_rank > 0


def test_hit_fields_and_explanation(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    hit = search(db, fake_embedder, "word count of a text", project="alpha", limit=1)[0]
    assert hit.kind == "chunk" and hit.path == "src/text.py" and (hit.start_line, hit.end_line) == (6, 8)
    assert hit.text == "\n".join(SOURCES["src/text.py"].split("\n")[5:8])
    assert hit.project == "alpha" and hit.citation() == "src/text.py:6-8"
    assert hit.score == hit.parts.score
    explained = hit.explain()
    assert explained.startswith("chunk src/text.py:6-8: similarity") and "score" in explained


def test_every_kind_of_hit_as_json() -> None:
    """One JSON shape per kind (the ``kb search --json`` contract), with the hit's citation."""
    parts = score(similarity=0.5)
    common = {"score": 0.1234567, "parts": parts, "project": "alpha", "created_at": datetime(2025, 1, 2, tzinfo=UTC)}
    chunk = ChunkHit(
        id=1,
        text="x = 1",
        path="src/x.py",
        start_line=3,
        end_line=4,
        symbol="x",
        language="python",
        content_hash="h",
        role="source",
        definition_start=1,
        definition_end=9,
        **common,
    )
    assert chunk.to_json() == {
        "kind": "chunk",
        "id": 1,
        "project": "alpha",
        "score": 0.123457,
        "path": "src/x.py",
        "start_line": 3,
        "end_line": 4,
        "symbol": "x",
        "language": "python",
        "role": "source",
        "definition_start": 1,
        "definition_end": 9,
        "text": "x = 1",
        "citation": "src/x.py:1-9",
    }
    fact = FactHit(
        id=2,
        text="db port: 5432",
        fact_label="db port",
        fact_value="5432",
        confidence_score=0.9,
        effective_confidence=0.8123,
        is_stale=True,
        pinned=False,
        source_path=None,
        task_id=None,
        **common,
    )
    assert list(fact.to_json()) == [
        "kind", "id", "project", "score", "fact_label", "fact_value", "confidence_score", "effective_confidence",
        "is_stale", "source_path", "text", "citation",
    ]  # fmt: skip
    assert fact.to_json()["citation"] == "fact #2, confidence 0.81, stale"
    command = CommandHit(
        id=3,
        text="make test\n(exit code 2)",
        command="make test",
        success=False,
        return_code=2,
        task_id="T-1",
        **common,
    )
    data = command.to_json(explain=True)
    assert data["executed_at"] == "2025-01-02T00:00:00+00:00" and data["citation"] == "command #3, exit 2"
    assert data["parts"]["similarity"] == 0.5 and data["explain"] == parts.explain()
    assert "parts" not in command.to_json()


def test_filters_never_leak_another_projects_rows(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
        index_files(conn, fake_embedder, "beta", SOURCES)
        beta = store.get_project(conn, "beta")
        entry = store.insert_command_log(
            conn, store.NewCommandLog(kind="shell", project_id=beta.id, command="make invoice-email")
        )
        store.insert_command_output(conn, store.NewCommandOutput(command_log_id=entry.id, success=True, return_code=0))
    add_fact(db, fake_embedder, label="invoice email", value="sent by send_invoice_email", project="beta")
    shared = add_fact(db, fake_embedder, label="invoice email format", value="PDF attachments only")
    for query in ["invoice email", "send_invoice_email", "make invoice-email", "pool"]:
        hits = search(db, fake_embedder, query, project="alpha", kinds=("chunk", "fact", "command"), limit=50)
        assert hits and all(h.project in ("alpha", None) for h in hits), query
        assert all(h.kind != "fact" or h.id == shared.id for h in hits)
        assert not any(h.kind == "command" for h in hits)
    everywhere = search(db, fake_embedder, "invoice email", kinds=("chunk", "fact", "command"), limit=50)
    assert {h.project for h in everywhere} == {"alpha", "beta", None}


def test_filtered_vector_search_is_not_shrunk_by_hnsw(db_url: str, fake_embedder: HashingEmbedder) -> None:
    """With the HNSW index forced, a selective filter still fills the limit (iterative index scans)."""
    rng = np.random.default_rng(7)
    with Database(db_url) as setup, setup.connection() as conn:
        model_id = store.activate_model(conn, store.upsert_model(conn, fake_embedder.name, 384).id).id
        for name, files in (("big", 40), ("small", 1)):
            project = store.ensure_project(conn, name)
            for n in range(files):
                file = store.upsert_file(conn, store.NewFile(project.id, f"f{n}.py", "x", f"h{n}", 1, "python", None))
                vectors = rng.normal(size=(30, 384)).astype(np.float32)
                vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
                store.insert_chunks(
                    conn,
                    [
                        store.NewChunk(
                            file.id,
                            project.id,
                            i,
                            i + 1,
                            i + 1,
                            "code",
                            None,
                            f"row {i}",
                            f"{name}{n}:{i}",
                            2,
                            vectors[i],
                            model_id,
                        )
                        for i in range(30)
                    ],
                )
        conn.execute("ANALYZE file_chunks")
    forced = db_url + ("&" if "?" in db_url else "?") + "options=-c%20enable_seqscan%3Doff%20-c%20enable_sort%3Doff"
    with Database(forced) as db, db.connection() as conn:
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM file_chunks WHERE project_id = 2 ORDER BY embedding <=> %s LIMIT 30",
                (np.ones(384, dtype=np.float32),),
            ).fetchall()
        )
        assert "file_chunks_embedding_hnsw" in plan
    with Database(forced) as db:
        hits = search(db, fake_embedder, "nearest vectors", project="small", kinds=("chunk",), limit=30)
        assert len(hits) == 30 and {h.project for h in hits} == {"small"}
        globbed = search(
            db, fake_embedder, "nearest vectors", project="big", path_glob="f7.py", kinds=("chunk",), limit=25
        )
        assert len(globbed) == 25 and {h.path for h in globbed} == {"f7.py"}


def test_terms_common_in_a_large_store_are_dropped_from_full_text(
    db: Database, fake_embedder: HashingEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A word in most chunks (like ``return`` in code) is left out of the full-text query once the
    planner's statistics say so; rare words and whole identifiers still match."""
    import knowledgebase.search.retrieval

    files = {f"src/m{i}.py": f"def widget_{i}(value):\n    return widget(value) + {i}\n" for i in range(40)}
    files["src/special.py"] = "def sprocket_gear(widget):\n    return sprocket(widget)\n"
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", files)
        conn.execute("ANALYZE file_chunks")
    text_only = DEFAULT_WEIGHTS.with_(vector=0.0, identifier=0.0, text=1.0)
    monkeypatch.setattr(knowledgebase.search.retrieval, "COMMON_TERMS_MIN_ROWS", 0)
    hits = search(db, fake_embedder, "widget sprocket", project="alpha", weights=text_only, limit=50)
    assert [h.path for h in hits if h.parts.text_rank > 0] == ["src/special.py"]
    assert search(db, fake_embedder, "widget_7", project="alpha", weights=text_only, limit=1)[0].path == "src/m7.py"
    monkeypatch.setattr(knowledgebase.search.retrieval, "COMMON_TERMS_MIN_ROWS", 10_000)  # small store: every term
    hits = search(db, fake_embedder, "widget sprocket", project="alpha", weights=text_only, limit=50)
    assert len([h for h in hits if h.parts.text_rank > 0]) == 41


def test_path_glob_kind_task_and_time_filters(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    in_db = add_fact(
        db,
        fake_embedder,
        label="pool",
        value="pool size 4",
        project="alpha",
        source=FactSource.from_chunk("src/db.py", line=1),
    )
    task_fact = add_fact(db, fake_embedder, label="pool note", value="pool is shared", project="alpha", task_id="T-9")
    hits = search(db, fake_embedder, "pool", project="alpha", path_glob="src/d*.py", limit=20)
    assert hits and {h.path or h.source_path for h in hits} == {"src/db.py"}
    assert [h.id for h in hits if h.kind == "fact"] == [in_db.id]
    assert {h.kind for h in search(db, fake_embedder, "pool", project="alpha", kinds=("fact",))} == {"fact"}
    assert [h.id for h in search(db, fake_embedder, "pool", task_id="T-9", kinds=("fact",))] == [task_fact.id]
    assert search(db, fake_embedder, "pool", project="alpha", since=datetime.now(UTC) + timedelta(hours=1)) == []
    assert search(db, fake_embedder, "pool", project="alpha", since=timedelta(hours=1))


def test_rerank_reorders_candidates_as_search_would(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    add_fact(db, fake_embedder, label="pool size", value="open_pool uses 4 connections", project="alpha")
    query = "open_pool connections"
    candidates = search_candidates(db, fake_embedder, query, project="alpha", limit=5)
    assert len(candidates) >= 5
    for weights in (
        DEFAULT_WEIGHTS,
        DEFAULT_WEIGHTS.with_(text=0.0, identifier=0.0),
        DEFAULT_WEIGHTS.with_(vector=0.0),
    ):
        expected = search(db, fake_embedder, query, project="alpha", limit=5, weights=weights)
        assert [(h.kind, h.id) for h in rerank(candidates, weights=weights, limit=5)] == [
            (h.kind, h.id) for h in expected
        ]
    # no priors either: the score is the similarity
    vector_only = rerank(candidates, weights=DEFAULT_WEIGHTS.with_(text=0.0, identifier=0.0, **LEGACY), limit=5)
    assert all(
        h.score == pytest.approx(h.parts.similarity * h.parts.confidence_factor * h.parts.recency_factor)
        for h in vector_only
    )


def test_overlapping_spans_of_one_file_are_collapsed(db: Database, fake_embedder: HashingEmbedder) -> None:
    spans = {"src/mail.py": [(1, 7), (1, 4), (3, 7), (9, 12)]}
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", {"src/mail.py": SOURCES["src/mail.py"]}, spans=spans)
    hits = search(db, fake_embedder, "send invoice email message attachment", project="alpha", limit=10)
    ranges = [(h.start_line, h.end_line) for h in hits]
    assert len(ranges) == 2 and (9, 12) in ranges
    assert not any(a[0] <= b[1] and b[0] <= a[1] for i, a in enumerate(ranges) for b in ranges[i + 1 :])


def test_diversity_demotes_near_duplicates(db: Database, fake_embedder: HashingEmbedder) -> None:
    copy = {"src/mail.py": SOURCES["src/mail.py"], "vendor/mail.py": SOURCES["src/mail.py"]}
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", copy | {"src/text.py": SOURCES["src/text.py"]})
    query = "send invoice email"
    plain = search(db, fake_embedder, query, project="alpha", kinds=("chunk",), limit=3)
    assert plain[0].text == plain[1].text  # the vendored copy ranks second
    diverse = search(
        db,
        fake_embedder,
        query,
        project="alpha",
        kinds=("chunk",),
        limit=3,
        weights=DEFAULT_WEIGHTS.with_(diversity=1.0),
    )
    assert diverse[0].text != diverse[1].text


def test_commands_with_their_outcome(db: Database, fake_embedder: HashingEmbedder, conn: psycopg.Connection) -> None:
    project = store.ensure_project(conn, "alpha")
    failed = store.insert_command_log(
        conn,
        store.NewCommandLog(kind="shell", project_id=project.id, task_id=None, command="pytest tests/test_mail.py"),
    )
    store.insert_command_output(
        conn, store.NewCommandOutput(command_log_id=failed.id, success=False, return_code=1, stderr="1 failed")
    )
    conn.commit()
    hits = search(db, fake_embedder, "run the mail tests with pytest", project="alpha", kinds=("command",))
    assert [h.id for h in hits] == [failed.id]
    assert (
        hits[0].success is False and hits[0].return_code == 1 and hits[0].citation() == f"command #{failed.id}, exit 1"
    )
    assert hits[0].parts.recency is not None


def test_the_store_model_is_enforced(db: Database, fake_embedder: HashingEmbedder) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    with pytest.raises(ModelMismatch, match="kb reembed"):
        search(db, HashingEmbedder(name="another-model"), "pool", project="alpha")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"query": ""}, InputError, "query is empty"),
        ({"query": "   \n"}, InputError, "query is empty"),
        ({"query": "pool", "project": "ghost"}, NotFound, "project 'ghost'"),
        ({"query": "pool", "path_glob": "src/[abc"}, InputError, "without its closing"),
        ({"query": "pool", "path_glob": ""}, InputError, "glob is empty"),
        ({"query": "pool", "kinds": ("chunk", "tweet")}, InputError, "unknown kind tweet"),
        ({"query": "pool", "kinds": ()}, InputError, "unknown kind"),
        ({"query": "pool", "limit": 0}, InputError, "limit 0"),
    ],
)
def test_bad_input_gives_a_clear_error(
    db: Database, fake_embedder: HashingEmbedder, kwargs: dict, error: type[Exception], message: str
) -> None:
    with db.connection() as conn:
        index_files(conn, fake_embedder, "alpha", SOURCES)
    with pytest.raises(error, match=message):
        search(db, fake_embedder, **kwargs)
    assert search(db, fake_embedder, "pool", project="alpha")  # the store is as it was


def test_path_globs() -> None:
    cases = [
        ("*.py", "a/b/c.py", True),
        ("*.py", "c.pyc", False),
        ("src/**/*.py", "src/x.py", True),
        ("src/**/*.py", "src/a/b/x.py", True),
        ("src/*.py", "src/a/x.py", False),
        ("tests/", "tests/a/b.py", True),
        ("/README.md", "docs/README.md", False),
        ("[!a]*.md", "b.md", True),
        ("[!a]*.md", "a.md", False),
        ("file?.txt", "file1.txt", True),
        ("a+b (1).txt", "a+b (1).txt", True),
    ]
    for glob, path, expected in cases:
        assert glob_matches(glob, path) is expected, (glob, path)
        assert re.compile(glob_to_regex(glob))


def test_query_helpers() -> None:
    assert tsquery_text("Where is the populate_project function?") == "populate_project | populate | project | function"
    assert tsquery_text("what is it") is None
    versions = code_identifiers("what changed in 0.47.0 and in v3.1, since 2.0rc1? not 12 or x2.5y")
    assert versions == ["0.47.0", "3.1", "2.0rc1"]
    assert code_identifiers("call os.path.join, populate_project and ContextPack, e.g. not plain words") == [
        "os.path.join",
        "populate_project",
        "ContextPack",
    ]


@pytest.mark.parametrize(
    ("query", "embedded"),
    [
        ("How does the session middleware sign the cookie?", "the session middleware sign the cookie"),
        ("where is a setting read from the environment", "a setting read from the environment"),
        ("how do I run the tests?", "run the tests"),
        ("What changed in 0.47.0?", "changed in 0.47.0"),
        ("Return the current head revisions.", "Return the current head revisions."),  # not a question
        ("  populate_project  ", "populate_project"),
        ("how?", "how?"),  # nothing but the opening: kept whole
        ("however the pool is disposed", "however the pool is disposed"),  # a word, not the opening
    ],
)
def test_the_model_embeds_a_question_without_its_opening_words(query: str, embedded: str) -> None:
    assert embedded_query(query) == embedded
    assert len(embedded_query("x" * 10_000)) == MAX_EMBED_CHARS
