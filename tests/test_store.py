"""Every function of the data-access layer against the real schema."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from knowledgebase import store
from knowledgebase.errors import InputError, ModelMismatch, NotFound
from tests.support import HashingEmbedder, as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)


def test_projects(conn: psycopg.Connection) -> None:
    p = store.ensure_project(conn, "alpha", "/src/alpha")
    again = store.ensure_project(conn, "alpha")
    assert again.id == p.id and again.root_path == "/src/alpha"
    assert store.get_project(conn, "alpha") == again
    assert store.get_project_by_id(conn, p.id).name == "alpha"
    assert [x.name for x in store.list_projects(conn)] == ["alpha"]
    assert store.find_project(conn, "beta") is None
    with pytest.raises(NotFound, match="kb populate"):
        store.get_project(conn, "beta")
    with pytest.raises(InputError):
        store.ensure_project(conn, "  ")
    assert store.delete_project(conn, "alpha")
    assert not store.delete_project(conn, "alpha")


def test_files_and_chunks(conn: psycopg.Connection) -> None:
    p = store.ensure_project(conn, "alpha")
    new = store.NewFile(p.id, "src/a.py", "def a():\n    return 1\n", "h1", 22, "python", 123)
    f = store.upsert_file(conn, new)
    assert f.path == "src/a.py" and f.chunked_hash is None
    assert store.file_content(conn, f.id).startswith("def a")
    f2 = store.upsert_file(conn, store.NewFile(p.id, "src/a.py", "x = 2\n", "h2", 6, "python", 456))
    assert f2.id == f.id and f2.content_hash == "h2"
    vec = np.ones(384, dtype=np.float32) / np.sqrt(384)
    model_id = store.activate_model(conn, store.upsert_model(conn, "m", 384).id).id
    store.insert_chunks(
        conn,
        [
            store.NewChunk(f.id, p.id, 0, 1, 1, "code", None, "x = 2", "c1", 3, vec, model_id),
            store.NewChunk(f.id, p.id, 1, 1, 1, "code", "ContextPack", "class ContextPack", "c2", 3, None, None),
        ],
    )
    chunks = store.list_chunks(conn, f.id)
    assert [c.chunk_index for c in chunks] == [0, 1]
    assert store.get_chunk(conn, chunks[0].id).content_hash == "c1"
    # identifiers are split for full-text search
    hit = conn.execute(
        "SELECT count(*) FROM file_chunks WHERE tsv @@ to_tsquery('simple', 'context & pack')"
    ).fetchone()
    assert hit == (1,)
    store.mark_chunked(conn, f.id, "h2")
    assert store.get_file(conn, p.id, "src/a.py").chunked_hash == "h2"
    assert [x.path for x in store.list_files(conn, p.id)] == ["src/a.py"]
    assert store.delete_chunks(conn, f.id) == 2
    assert store.delete_file(conn, p.id, "src/a.py")
    assert store.find_file(conn, p.id, "src/a.py") is None
    with pytest.raises(NotFound):
        store.get_file(conn, p.id, "src/a.py")


def test_search_candidates(conn: psycopg.Connection) -> None:
    p = store.ensure_project(conn, "alpha")
    f = store.upsert_file(conn, store.NewFile(p.id, "src/pool.py", "def open_pool(): ...\n", "h1", 21, "python", 1))
    vec = np.ones(384, dtype=np.float32) / np.sqrt(384)
    model_id = store.activate_model(conn, store.upsert_model(conn, "m", 384).id).id
    store.insert_chunks(
        conn, [store.NewChunk(f.id, p.id, 0, 1, 1, "code", "open_pool", "def open_pool(): ...", "c1", 5, vec, model_id)]
    )
    fact = store.insert_knowledge(
        conn,
        store.NewKnowledge(
            fact_label="pool", fact_value="size 4", project_id=p.id, embedding=vec, embedding_model_id=model_id
        ),
    )
    logged = store.insert_command_log(
        conn, store.NewCommandLog(kind="shell", project_id=p.id, task_id=None, command="pytest pool")
    )
    store.insert_command_output(conn, store.NewCommandOutput(command_log_id=logged.id, success=False, return_code=1))
    store.set_search_options(conn, ef_search=100)
    assert conn.execute("SELECT current_setting('hnsw.ef_search')").fetchone() == ("100",)
    query = store.CandidateQuery(
        query_vector=vec, tsquery="pool", limit=5, scan_rows=100, recent_commands=0, project_id=p.id, with_vectors=True
    )
    (chunk,) = store.chunk_candidates(conn, query)
    assert (chunk.name, chunk.path, chunk.symbol) == ("alpha", "src/pool.py", "open_pool")
    assert chunk.similarity == pytest.approx(1.0) and chunk.text_rank > 0 and chunk.embedding is not None
    (fact_row,) = store.fact_candidates(conn, query)
    assert (fact_row.id, fact_row.fact_label, fact_row.path) == (fact.id, "pool", None) and fact_row.text_rank > 0
    (command,) = store.command_candidates(conn, query)
    assert (command.id, command.command, command.success, command.return_code) == (logged.id, "pytest pool", False, 1)
    assert store.common_terms(conn, ["pool"], share=0.05, min_rows=0) == set()  # no statistics before ANALYZE


def test_knowledge(conn: psycopg.Connection) -> None:
    p = store.ensure_project(conn, "alpha")
    fact = store.insert_knowledge(
        conn,
        store.NewKnowledge(fact_label="test command", fact_value="make test", project_id=p.id, confidence_score=0.8),
    )
    assert float(fact.confidence_score) == 0.8 and fact.status == "active"
    assert store.get_knowledge(conn, fact.id).fact_label == "test command"
    assert [k.id for k in store.list_knowledge(conn, project_id=p.id)] == [fact.id]
    assert store.list_knowledge(conn, fact_label="other") == []
    with pytest.raises(psycopg.errors.CheckViolation):
        store.insert_knowledge(conn, store.NewKnowledge(fact_label="x", fact_value="y", confidence_score=1.5))


def test_tasks(conn: psycopg.Connection) -> None:
    t = store.insert_task(conn, "T-1", title="fix bug", context={"goal": "green CI"})
    assert t.status == "pending" and t.context == {"goal": "green CI"}
    assert store.ensure_task(conn, "T-1").created_at == t.created_at
    assert store.ensure_task(conn, "T-2").status == "pending"
    assert {x.id for x in store.list_tasks(conn, status="pending")} == {"T-1", "T-2"}
    assert store.find_task(conn, "nope") is None
    with pytest.raises(NotFound):
        store.get_task(conn, "nope")
    with pytest.raises(InputError):
        store.list_tasks(conn, status="weird")
    with pytest.raises(InputError):
        store.insert_task(conn, "")


def test_audit(conn: psycopg.Connection) -> None:
    store.insert_task(conn, "T-1")
    entry = store.insert_command_log(
        conn,
        store.NewCommandLog(
            kind="shell",
            task_id="T-1",
            command="ls",
            tool_input={"command": "ls"},
            user_confirmation=True,
            agent_mode="yolo",
        ),
    )
    assert store.get_command_log(conn, entry.id).tool_input == {"command": "ls"}
    out = store.insert_command_output(
        conn, store.NewCommandOutput(entry.id, success=True, stdout="a\n", return_code=0, files_written=["x.txt"])
    )
    assert out.files_written == ["x.txt"] and out.file_written == "x.txt"
    assert store.list_command_output(conn, entry.id) == [out]
    assert [e.id for e in store.list_command_log(conn, task_id="T-1")] == [entry.id]
    usage = store.insert_usage(
        conn,
        store.NewUsage(
            "generate", model="gemini-2.5-flash", prompt_tokens=3, response_tokens=4, total_tokens=7, task_id="T-1"
        ),
    )
    assert store.list_usage(conn, task_id="T-1") == [usage]


def test_api_keys_store_a_reference_never_the_key(conn: psycopg.Connection) -> None:
    fp = store.key_fingerprint("AIza-secret-value")
    assert "secret" not in fp and fp.startswith("sha256:")
    key = store.upsert_api_key(conn, "main", env_var="GEMINI_API_KEY", fingerprint=fp, rpm_limit=15)
    again = store.upsert_api_key(conn, "main", env_var="GEMINI_API_KEY", rpm_limit=30)
    assert again.id == key.id and again.rpm_limit == 30 and again.fingerprint == fp
    assert store.set_api_key_disabled(conn, "main", True, "revoked").disabled
    assert [k.name for k in store.list_api_keys(conn)] == ["main"]
    assert store.get_api_key(conn, "main").disabled_reason == "revoked"
    with pytest.raises(InputError):
        store.upsert_api_key(conn, "bad", env_var="X", rpm_limit=0)
    with pytest.raises(NotFound, match="kb keys add"):
        store.get_api_key(conn, "missing")


def test_context_log(conn: psycopg.Connection) -> None:
    rec = store.insert_context_record(
        conn, prompt="why?", budget=100, token_count=10, items=[{"kind": "fact", "id": 1, "score": 0.5}], text="..."
    )
    assert store.get_context_record(conn, rec.id).items == [{"kind": "fact", "id": 1, "score": 0.5}]
    assert store.list_context_records(conn) == [rec]


def test_bind_model_records_and_enforces_the_model(conn: psycopg.Connection) -> None:
    from knowledgebase.embedding import bind_model

    first = bind_model(conn, HashingEmbedder("model-a"))
    assert bind_model(conn, HashingEmbedder("model-a")) == first
    assert store.active_model(conn).name == "model-a"  # type: ignore[union-attr]
    with pytest.raises(ModelMismatch, match="kb reembed"):
        bind_model(conn, HashingEmbedder("model-b"))
    with pytest.raises(ModelMismatch, match="768"):
        bind_model(conn, HashingEmbedder("model-a", dimension=768))


def test_bind_model_refuses_a_dimension_the_columns_cannot_hold(conn: psycopg.Connection) -> None:
    from knowledgebase.embedding import bind_model

    with pytest.raises(ModelMismatch, match="384 dimensions"):
        bind_model(conn, HashingEmbedder("wide", dimension=768))
    assert store.list_models(conn) == []
