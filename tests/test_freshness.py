"""Fresh after every edit: AfterTool queues written files for a background re-index in the warm process.

Real database; the HashingEmbedder (no test here claims semantic behaviour: the new text is found by
its words).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from knowledgebase import store
from knowledgebase.config import Settings
from knowledgebase.db import Database
from knowledgebase.db.locks import POPULATE_LOCK, Lock, hold_locks
from knowledgebase.gemini.freshness import Freshener
from knowledgebase.gemini.hooks import HookCall, handle_hook
from knowledgebase.gemini.serve import WarmStore
from knowledgebase.index.ingest import populate_project
from knowledgebase.index.refresh import refresh_files
from knowledgebase.index.scanning import SkipReason
from knowledgebase.search.retrieval import search
from tests.support import HashingEmbedder, as_agent

SESSION = "5e55f0aa-067b-41ab-8c43-e6ef7fee6001"
OLD = "def price(order):\n    return order.total * ancient_multiplier\n"
NEW = "def price(order):\n    return order.total * zanzibar_discount_factor\n"


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb`, the hooks and their warm process reach the store by default: the agent login."""
    return as_agent(db_url)


def settle(root: Path, seconds_ago: int = 10) -> None:
    past = time.time_ns() - seconds_ago * 1_000_000_000
    for path in root.rglob("*"):
        if path.is_file():
            os.utime(path, ns=(past, past))


@pytest.fixture
def project_dir(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / ".git").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "pricing.py").write_text(OLD)
    (root / "src" / "other.py").write_text("def other():\n    return 1\n")
    settle(root)
    return root


@pytest.fixture
def indexed(db: Database, fake_embedder: HashingEmbedder, project_dir: Path, settings: Settings) -> str:
    populate_project(db, fake_embedder, project_dir, project="shop", settings=settings)
    return "shop"


@pytest.fixture
def services(settings: Settings, fake_embedder: HashingEmbedder) -> Iterator[WarmStore]:
    warm = WarmStore(settings, embedder=fake_embedder)
    yield warm
    warm.close()


def write_call(project_dir: Path, path: Path, content: str) -> HookCall:
    payload = {
        "session_id": SESSION,
        "cwd": str(project_dir),
        "hook_event_name": "AfterTool",
        "tool_name": "write_file",
        "tool_input": {"file_path": str(path), "content": content},
        "tool_response": {"llmContent": f"Successfully wrote to {path}"},
    }
    return HookCall(event="AfterTool", payload=payload, gemini_pid=os.getpid())


def poll(condition: Callable[[], bool], deadline_s: float = 20.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def found(db: Database, embedder: HashingEmbedder, word: str) -> bool:
    hits = search(db, embedder, word, project="shop", kinds=("chunk",), limit=5)
    return any(word in hit.text for hit in hits)


def chunk_texts(db: Database, rel: str) -> list[tuple[int, str]]:
    with db.connection() as conn:
        rows = conn.execute(
            "SELECT c.chunk_index, c.content FROM file_chunks c JOIN project_files f ON f.id = c.file_id"
            " WHERE f.path = %s ORDER BY c.chunk_index",
            (rel,),
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


def file_count(db: Database, rel: str) -> int:
    with db.connection() as conn:
        row = conn.execute("SELECT count(*) FROM project_files WHERE path = %s", (rel,)).fetchone()
    assert row is not None
    return int(row[0])


def test_an_edited_file_is_searchable_with_its_new_text_after_the_hook(
    services: WarmStore, db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str
) -> None:
    assert found(db, fake_embedder, "ancient_multiplier")
    path = project_dir / "src" / "pricing.py"
    path.write_text(NEW)
    result = handle_hook(services, write_call(project_dir, path, NEW))
    assert "refresh-queued=1" in result.note
    assert poll(lambda: found(db, fake_embedder, "zanzibar_discount_factor"))
    assert not found(db, fake_embedder, "ancient_multiplier")
    assert services.freshener.stats().failures == 0


def test_a_burst_of_twenty_edits_to_one_file_triggers_one_or_few_refreshes(
    services: WarmStore, db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str
) -> None:
    path = project_dir / "src" / "pricing.py"
    for n in range(20):
        text = NEW.replace("zanzibar_discount_factor", f"burst_word_{n}")
        path.write_text(text)
        handle_hook(services, write_call(project_dir, path, text))
    assert services.freshener.wait_idle(20.0)
    stats = services.freshener.stats()
    assert 1 <= stats.refreshes <= 3, stats
    assert found(db, fake_embedder, "burst_word_19")
    assert not found(db, fake_embedder, "burst_word_0")


def test_the_hook_answers_without_waiting_for_the_refresh(
    services: WarmStore, db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str
) -> None:
    path = project_dir / "src" / "pricing.py"
    path.write_text(NEW)
    with db.connection() as conn:
        project_id = store.get_project(conn, "shop").id
    answered: list[Any] = []
    with hold_locks(db, [Lock(POPULATE_LOCK, project_id)]):  # a populate is running: the refresh must wait
        hook = write_call(project_dir, path, NEW)
        worker = threading.Thread(target=lambda: answered.append(handle_hook(services, hook)))
        worker.start()
        worker.join(10.0)
        assert answered and not worker.is_alive(), "the hook waited for the re-index"
        time.sleep(1.0)  # past the debounce: the refresh is blocked on the lock, not merely not started
        assert not found(db, fake_embedder, "zanzibar_discount_factor")
    assert poll(lambda: found(db, fake_embedder, "zanzibar_discount_factor"))


def test_files_outside_the_root_binary_huge_or_ignored_are_skipped_and_deleted_files_leave(
    db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str, settings: Settings, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.py"
    outside.write_text("def elsewhere_secret_word():\n    pass\n")
    (project_dir / "src" / "blob.py").write_bytes(b"\x00\x01\x02binary\x00" * 100)
    (project_dir / "src" / "huge.py").write_text("x = 1\n" * 400)
    (project_dir / ".gitignore").write_text("ignored.py\n")
    (project_dir / "ignored.py").write_text("def ignored_word():\n    pass\n")
    (project_dir / "src" / "other.py").unlink()
    small = dataclasses.replace(settings, max_file_bytes=1000)
    report = refresh_files(
        db,
        fake_embedder,
        "shop",
        [
            str(outside),
            str(project_dir / ".." / "elsewhere.py"),
            str(project_dir / "src" / "blob.py"),
            str(project_dir / "src" / "huge.py"),
            str(project_dir / "ignored.py"),
            str(project_dir / "src" / "other.py"),
        ],
        settings=small,
    )
    assert report.outside == (str(outside), str(project_dir / ".." / "elsewhere.py"))
    reasons = {s.rel_path: s.reason for s in report.skipped}
    assert reasons == {
        "src/blob.py": SkipReason.BINARY,
        "src/huge.py": SkipReason.TOO_LARGE,
        "ignored.py": SkipReason.IGNORED,
    }
    assert report.removed == ("src/other.py",)
    assert report.indexed == ()
    for rel in ("src/blob.py", "src/huge.py", "ignored.py", "src/other.py", "elsewhere.py"):
        assert file_count(db, rel) == 0, rel
    assert file_count(db, "src/pricing.py") == 1


def test_a_refresh_leaves_what_a_populate_would_and_marks_facts_of_changed_chunks_stale(
    db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str, settings: Settings, tmp_path: Path
) -> None:
    path = project_dir / "src" / "pricing.py"
    path.write_text(NEW + "\n\ndef extra():\n    return 2\n")
    report = refresh_files(db, fake_embedder, "shop", [str(path)], settings=settings)
    assert report.indexed == ("src/pricing.py",)
    refreshed = chunk_texts(db, "src/pricing.py")
    again = populate_project(db, fake_embedder, project_dir, project="shop", settings=settings)
    assert again.changed == 0 and again.added == 0 and again.deleted == 0
    assert again.chunks_written == 0
    assert chunk_texts(db, "src/pricing.py") == refreshed
    # unchanged file again: nothing is rewritten
    assert refresh_files(db, fake_embedder, "shop", [str(path)], settings=settings).unchanged == ("src/pricing.py",)


def test_a_concurrent_populate_of_the_same_project_does_not_duplicate_rows(
    db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str, settings: Settings
) -> None:
    paths = []
    for n in range(30):
        p = project_dir / "src" / f"mod{n}.py"
        p.write_text(f"def function_{n}():\n    return {n}\n" * 20)
        paths.append(str(p))
    errors: list[BaseException] = []

    def run(target: Callable[[], object]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    def refresh() -> object:
        return refresh_files(db, fake_embedder, "shop", paths, settings=settings)

    def populate() -> object:
        return populate_project(db, fake_embedder, project_dir, project="shop", settings=settings)

    threads = [threading.Thread(target=run, args=(refresh,)), threading.Thread(target=run, args=(populate,))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for n in range(30):
        rel = f"src/mod{n}.py"
        assert file_count(db, rel) == 1
        indexes = [index for index, _ in chunk_texts(db, rel)]
        assert indexes == list(range(len(indexes))) and indexes, rel


def test_session_start_populates_an_indexed_project_in_the_background(
    services: WarmStore, db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str
) -> None:
    (project_dir / "src" / "added.py").write_text("def quokka_added_later():\n    pass\n")
    payload = {"session_id": SESSION, "cwd": str(project_dir), "hook_event_name": "SessionStart", "source": "startup"}
    handle_hook(services, HookCall(event="SessionStart", payload=payload, gemini_pid=os.getpid()))
    assert poll(lambda: found(db, fake_embedder, "quokka_added_later"))
    assert services.freshener.wait_idle(20.0)
    assert services.freshener.stats().populates == 1


def test_session_start_does_not_index_a_project_never_populated(
    settings: Settings, db: Database, fake_embedder: HashingEmbedder, tmp_path: Path
) -> None:
    root = tmp_path / "fresh"
    (root / ".git").mkdir(parents=True)
    (root / "a.py").write_text("def never_indexed():\n    pass\n")
    warm = WarmStore(settings, embedder=fake_embedder)
    freshener = Freshener(warm, debounce_s=0.05)
    with db.connection() as conn:
        store.ensure_project(conn, "fresh")
    freshener.queue_populate("fresh")
    assert freshener.wait_idle(10.0)
    warm.close()
    assert freshener.stats().populates == 0 and freshener.stats().failures == 0
    assert file_count(db, "a.py") == 0


def test_facts_from_a_refreshed_files_changed_chunks_go_stale_as_with_populate(
    db: Database, fake_embedder: HashingEmbedder, project_dir: Path, indexed: str, settings: Settings
) -> None:
    path = project_dir / "src" / "two.py"
    body = "".join(f"    step_{n} = compute_{n}(value, {n})\n" for n in range(60))
    alpha = f"def alpha(value):\n{body}    return 'alpha body'\n"
    path.write_text(f"{alpha}\n\ndef beta(value):\n{body}    return 'beta body'\n")
    refresh_files(db, fake_embedder, "shop", [str(path)], settings=settings)
    with db.connection() as conn:
        project_id = store.get_project(conn, "shop").id
        file_id, other_id = (store.get_file(conn, project_id, rel).id for rel in ("src/two.py", "src/other.py"))
        hashes = {
            row[0]: row[1]
            for row in conn.execute("SELECT symbol, content_hash FROM file_chunks WHERE file_id = %s", (file_id,))
        }
        assert {"alpha", "beta"} <= set(hashes), hashes

        def fact(file: int, chunk_hash: str | None, label: str) -> int:
            new = store.NewKnowledge(
                fact_label=label, fact_value="v", project_id=project_id, source_kind="chunk",
                source_file_id=file, source_chunk_hash=chunk_hash,
            )  # fmt: skip
            return store.insert_knowledge(conn, new).id

        edited, untouched = fact(file_id, hashes["alpha"], "a"), fact(file_id, hashes["beta"], "b")
        gone = fact(other_id, None, "other")
    path.write_text(path.read_text().replace("alpha body", "alpha body, edited"))
    (project_dir / "src" / "other.py").unlink()
    refresh_files(db, fake_embedder, "shop", [str(path), str(project_dir / "src" / "other.py")], settings=settings)
    with db.connection() as conn:
        stale = dict(conn.execute("SELECT id, is_stale FROM knowledge").fetchall())
    assert stale == {edited: True, untouched: False, gone: True}
