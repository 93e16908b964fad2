"""The task queue in one process: lifecycle, ownership, leases, atomic context updates, bad input."""

from __future__ import annotations

import psycopg
import pytest

from knowledgebase import store
from knowledgebase.coordination import taskqueue
from knowledgebase.db import Database
from knowledgebase.errors import InputError, LeaseError, NotFound
from tests.support import as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)


def _expire_lease(db: Database, task_id: str) -> None:
    with db.connection() as conn:
        conn.execute("UPDATE tasks SET lease_expires_at = now() - interval '1 second' WHERE id = %s", (task_id,))


def test_claims_go_by_priority_then_age_and_each_task_once(db: Database) -> None:
    taskqueue.create_task(db, "old-low", title="a")
    taskqueue.create_task(db, "urgent", priority=5)
    taskqueue.create_task(db, "new-low")
    claimed = [taskqueue.claim_next_task(db, owner=f"w{i}", lease_seconds=60) for i in range(4)]
    assert [t.id if t else None for t in claimed] == ["urgent", "old-low", "new-low", None]
    first = claimed[0]
    assert first is not None and first.status == "running" and first.owner == "w0" and first.attempts == 1
    assert first.lease_expires_at is not None and first.started_at is not None


def test_generated_ids_and_duplicates(db: Database) -> None:
    task = taskqueue.create_task(db, title="generated", context={"goal": "x"})
    assert task.id.startswith("task-") and task.status == "pending" and task.context == {"goal": "x"}
    with pytest.raises(InputError, match="exists already"):
        taskqueue.create_task(db, task.id, title="overwritten?")
    assert taskqueue.get_task(db, task.id).title == "generated"


def test_the_owner_heartbeats_and_completes_with_its_context_in_one_update(db: Database) -> None:
    taskqueue.create_task(db, "T-1", context={"goal": "green CI", "step": 1})
    task = taskqueue.claim_next_task(db, owner="alice", lease_seconds=30)
    assert task is not None and task.lease_expires_at is not None
    renewed = taskqueue.heartbeat(db, "T-1", owner="alice", lease_seconds=600)
    assert renewed.lease_expires_at is not None and renewed.lease_expires_at > task.lease_expires_at
    with pytest.raises(LeaseError, match="held by 'alice'"):
        taskqueue.heartbeat(db, "T-1", owner="bob", lease_seconds=600)
    with pytest.raises(LeaseError, match="held by 'alice'"):
        taskqueue.complete_task(db, "T-1", owner="bob", result="stolen")
    updated = taskqueue.update_context(db, "T-1", {"step": 2, "notes": ["a"]}, owner="alice")
    assert updated.context == {"goal": "green CI", "step": 2, "notes": ["a"]}
    done = taskqueue.complete_task(db, "T-1", owner="alice", result="merged", context={"step": 3})
    assert done.status == "done" and done.result == "merged" and done.lease_expires_at is None
    assert done.context == {"goal": "green CI", "step": 3, "notes": ["a"]} and done.finished_at is not None
    with pytest.raises(LeaseError, match="done already"):
        taskqueue.complete_task(db, "T-1", owner="alice")
    with pytest.raises(LeaseError, match="done already"):
        taskqueue.release_task(db, "T-1", owner=None)


def test_release_and_requeue_make_a_task_claimable_again(db: Database) -> None:
    taskqueue.create_task(db, "T-1")
    taskqueue.claim_next_task(db, owner="a", lease_seconds=600)
    released = taskqueue.release_task(db, "T-1", owner="a")
    assert released.status == "pending" and released.owner is None and released.lease_expires_at is None
    again = taskqueue.claim_next_task(db, owner="b", lease_seconds=600)
    assert again is not None and again.owner == "b" and again.attempts == 2
    requeued = taskqueue.fail_task(db, "T-1", owner="b", reason="flaky network", requeue=True)
    assert requeued.status == "pending" and requeued.result == "flaky network"
    taskqueue.claim_next_task(db, owner="c", lease_seconds=600)
    failed = taskqueue.fail_task(db, "T-1", owner="c", reason="cannot reproduce")
    assert failed.status == "failed" and failed.finished_at is not None
    assert taskqueue.claim_next_task(db, owner="d", lease_seconds=600) is None
    taskqueue.create_task(db, "T-2")
    with pytest.raises(LeaseError, match="pending"):
        taskqueue.complete_task(db, "T-2", owner="d")


def test_an_expired_lease_lets_another_agent_take_the_task(db: Database) -> None:
    taskqueue.create_task(db, "T-1")
    taskqueue.claim_next_task(db, owner="crashed", lease_seconds=600)
    assert taskqueue.claim_next_task(db, owner="other", lease_seconds=600) is None  # the lease holds
    _expire_lease(db, "T-1")
    taken = taskqueue.claim_next_task(db, owner="other", lease_seconds=600)
    assert taken is not None and taken.id == "T-1" and taken.owner == "other" and taken.attempts == 2
    with pytest.raises(LeaseError, match="held by 'other'"):
        taskqueue.complete_task(db, "T-1", owner="crashed", result="late")
    assert taskqueue.get_task(db, "T-1").result is None


def test_an_expired_but_unclaimed_lease_is_still_its_owners(db: Database) -> None:
    taskqueue.create_task(db, "T-1")
    taskqueue.claim_next_task(db, owner="slow", lease_seconds=600)
    _expire_lease(db, "T-1")
    assert taskqueue.heartbeat(db, "T-1", owner="slow", lease_seconds=600).owner == "slow"


def test_an_operator_may_finish_any_task(db: Database) -> None:
    taskqueue.create_task(db, "T-1")
    taskqueue.claim_next_task(db, owner="agent", lease_seconds=600)
    done = taskqueue.complete_task(db, "T-1", owner=None, result="closed by hand")
    assert done.status == "done" and done.owner == "agent"


def test_claims_can_be_limited_to_a_project(db: Database) -> None:
    with db.connection() as conn:
        alpha = store.ensure_project(conn, "alpha").id
        beta = store.ensure_project(conn, "beta").id
    taskqueue.create_task(db, "A-1", project_id=alpha)
    taskqueue.create_task(db, "B-1", project_id=beta, priority=9)
    task = taskqueue.claim_next_task(db, owner="w", lease_seconds=60, project_id=alpha)
    assert task is not None and task.id == "A-1"


def test_open_task_is_outside_the_queue_and_resumable(db: Database) -> None:
    opened = taskqueue.open_task(db, "session-1", owner="gemini:s1", title="chat")
    assert opened.status == "running" and opened.lease_expires_at is None
    assert taskqueue.claim_next_task(db, owner="worker", lease_seconds=60) is None
    assert taskqueue.open_task(db, "session-1", owner="gemini:s1").created_at == opened.created_at
    taskqueue.complete_task(db, "session-1", owner="gemini:s1")
    resumed = taskqueue.open_task(db, "session-1", owner="gemini:s1")
    assert resumed.status == "running" and resumed.finished_at is None
    taskqueue.create_task(db, "Q-1")
    taskqueue.claim_next_task(db, owner="worker", lease_seconds=600)
    with pytest.raises(LeaseError, match="held by 'worker'"):
        taskqueue.open_task(db, "Q-1", owner="someone-else")


def test_bad_input_is_refused_and_nothing_changes(db: Database, conn: psycopg.Connection) -> None:
    with pytest.raises(InputError, match="must not be empty"):
        taskqueue.create_task(db, "  ")
    with pytest.raises(InputError, match="JSON object"):
        taskqueue.create_task(db, "T-1", context=["not", "an", "object"])  # type: ignore[arg-type]
    taskqueue.create_task(db, "T-1", context={"a": 1})
    with pytest.raises(InputError, match="more than 0 seconds"):
        taskqueue.claim_next_task(db, owner="w", lease_seconds=0)
    with pytest.raises(InputError, match="owner"):
        taskqueue.claim_next_task(db, owner="", lease_seconds=10)
    with pytest.raises(NotFound, match="kb tasks list"):
        taskqueue.complete_task(db, "missing", owner=None)
    with pytest.raises(NotFound):
        taskqueue.get_task(db, "missing")
    task = taskqueue.get_task(db, "T-1")
    assert task.status == "pending" and task.attempts == 0 and task.context == {"a": 1}
    row = conn.execute("SELECT count(*) FROM tasks").fetchone()
    assert row is not None and row[0] == 1


def _changes(task: store.Task) -> list[tuple[str, str | None, int, str | None]]:
    return [(c["status"], c.get("owner"), c["attempt"], c.get("note")) for c in task.history]


def test_every_change_of_status_owner_or_attempt_is_on_record(db: Database, conn: psycopg.Connection) -> None:
    taskqueue.create_task(db, "T-1", context={"goal": "x"})
    taskqueue.claim_next_task(db, owner="crashed", lease_seconds=600)
    taskqueue.heartbeat(db, "T-1", owner="crashed", lease_seconds=600)  # not a change of hands
    taskqueue.update_context(db, "T-1", {"step": 2}, owner="crashed")
    _expire_lease(db, "T-1")
    taskqueue.claim_next_task(db, owner="b", lease_seconds=600)  # takes over a dead claimer's task
    taskqueue.fail_task(db, "T-1", owner="b", reason="flaky network", requeue=True)
    taskqueue.claim_next_task(db, owner="c", lease_seconds=600)
    done = taskqueue.complete_task(db, "T-1", owner="c", result="merged")
    assert _changes(done) == [
        ("pending", None, 0, None),
        ("running", "crashed", 1, None),
        ("running", "b", 2, None),
        ("pending", None, 2, "flaky network"),
        ("running", "c", 3, None),
        ("done", "c", 3, "merged"),
    ]
    assert all(c["at"] for c in done.history)
    # the trigger keeps the record whoever writes: an UPDATE cannot rewrite it, a hand-made change is on it
    conn.execute("UPDATE tasks SET history = '[]', status = 'failed', result = %s WHERE id = 'T-1'", ("x" * 900,))
    conn.commit()
    after = taskqueue.get_task(db, "T-1")
    assert _changes(after)[:6] == _changes(done) and after.history[6]["status"] == "failed"
    assert after.history[6]["note"] == "x" * 500


def test_cancelled_tasks_are_never_claimed_again(db: Database) -> None:
    taskqueue.create_task(db, "T-1")
    cancelled = taskqueue.cancel_task(db, "T-1", owner=None, reason="not needed")
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    assert _changes(cancelled)[-1] == ("cancelled", None, 0, "not needed")
    assert taskqueue.claim_next_task(db, owner="w", lease_seconds=60) is None
    with pytest.raises(LeaseError, match="cancelled already"):
        taskqueue.cancel_task(db, "T-1", owner=None)
    taskqueue.create_task(db, "T-2")
    taskqueue.claim_next_task(db, owner="holder", lease_seconds=600)
    with pytest.raises(LeaseError, match="held by 'holder'"):
        taskqueue.cancel_task(db, "T-2", owner="someone-else")
    mine = taskqueue.cancel_task(db, "T-2", owner="holder")
    assert mine.status == "cancelled" and mine.lease_expires_at is None


def test_secrets_in_titles_contexts_and_results_are_redacted(db: Database, conn: psycopg.Connection) -> None:
    key = "AIza" + "B" * 35
    taskqueue.create_task(db, "T-1", title=f"rotate {key}", context={"env": {"GEMINI_API_KEY": key}})
    taskqueue.claim_next_task(db, owner="w", lease_seconds=600)
    taskqueue.update_context(db, "T-1", {"note": f"used {key}"}, owner="w")
    taskqueue.fail_task(db, "T-1", owner="w", reason=f"rejected key {key}")
    row = conn.execute("SELECT t::text FROM tasks t WHERE id = 'T-1'").fetchone()
    assert row is not None and key not in row[0] and "[REDACTED:google-api-key]" in row[0]


def test_a_task_whose_claimers_keep_dying_is_given_up(db: Database) -> None:
    taskqueue.create_task(db, "poison", priority=1)
    taskqueue.create_task(db, "next")
    for attempt in (1, 2):
        task = taskqueue.claim_next_task(db, owner=f"w{attempt}", lease_seconds=600, max_attempts=2)
        assert task is not None and task.id == "poison" and task.attempts == attempt
        _expire_lease(db, "poison")
    task = taskqueue.claim_next_task(db, owner="w3", lease_seconds=600, max_attempts=2)
    assert task is not None and task.id == "next" and task.owner == "w3"
    poison = taskqueue.get_task(db, "poison")
    assert poison.status == "failed" and poison.attempts == 2 and poison.finished_at is not None
    assert poison.result == "given up: claimed 2 times, and the lease of the last claim (by w2) ran out"
    assert _changes(poison)[-1] == ("failed", "w2", 2, poison.result)
    # a deliberate requeue is not a dead claimer: the task stays claimable
    taskqueue.fail_task(db, "next", owner="w3", reason="retry later", requeue=True)
    again = taskqueue.claim_next_task(db, owner="w4", lease_seconds=600, max_attempts=1)
    assert again is not None and again.id == "next" and again.attempts == 2
    with pytest.raises(InputError, match="at least 1"):
        taskqueue.claim_next_task(db, owner="w", lease_seconds=60, max_attempts=0)
