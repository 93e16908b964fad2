"""The API-key pool in one process: keys by reference, limits, waiting, cooldown, `kb keys`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from knowledgebase.coordination import keypool
from knowledgebase.db import Database
from knowledgebase.errors import CapacityExhausted, ConfigError, InputError, NotFound
from tests.support import as_agent


@pytest.fixture
def db_url(db_url: str) -> str:
    """As `kb` and the agents reach the store by default: the least-privilege agent login."""
    return as_agent(db_url)

SECRET_A = "AIza" + "SyKEY-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SECRET_B = "AIza" + "SyKEY-BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"
ENV = {"KB_TEST_KEY_A": SECRET_A, "KB_TEST_KEY_B": SECRET_B}


def _db_now(db: Database):  # type: ignore[no-untyped-def]
    with db.connection() as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


def test_keys_are_stored_by_reference_with_a_fingerprint(db: Database, conn: psycopg.Connection) -> None:
    key = keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", rpm=15, tpm=1_000_000, rpd=1500, environ=ENV)
    assert key.env_var == "KB_TEST_KEY_A" and key.fingerprint and key.fingerprint.startswith("sha256:")
    unset = keypool.add_key(db, "later", env_var="KB_TEST_KEY_UNSET", environ=ENV)
    assert unset.fingerprint is None
    dump = json.dumps([list(map(str, r)) for r in conn.execute("SELECT * FROM api_keys").fetchall()])
    assert SECRET_A not in dump and SECRET_A[4:20] not in dump
    with pytest.raises(InputError, match="not the key itself"):
        keypool.add_key(db, "oops", env_var=SECRET_A, environ=ENV)
    with pytest.raises(InputError, match="NAME of the environment variable"):
        keypool.add_key(db, "oops", env_var="not a name", environ=ENV)
    with pytest.raises(InputError, match="positive"):
        keypool.add_key(db, "oops", env_var="X", rpm=0, environ=ENV)
    assert {u.name for u in keypool.key_usage(db, environ=ENV)} == {"a", "later"}


def test_the_rpm_limit_holds_and_the_error_says_when_capacity_returns(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", rpm=3, environ=ENV)
    leases = [keypool.acquire_key(db, 100, timeout=0, environ=ENV) for _ in range(3)]
    assert [lease.secret for lease in leases] == [SECRET_A] * 3
    assert SECRET_A not in repr(leases[0])
    with pytest.raises(CapacityExhausted, match="capacity returns at") as refused:
        keypool.acquire_key(db, 100, timeout=5, environ=ENV)
    assert refused.value.retry_at == leases[0].granted_at + timedelta(seconds=60)
    (usage,) = keypool.key_usage(db, environ=ENV)
    assert (usage.minute_requests, usage.day_requests, usage.available_here) == (3, 3, "yes")


def test_requests_spread_over_keys_and_the_pool_skips_keys_without_room(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", rpm=2, environ=ENV)
    keypool.add_key(db, "b", env_var="KB_TEST_KEY_B", rpm=2, environ=ENV)
    names = sorted(keypool.acquire_key(db, 1, timeout=0, environ=ENV).name for _ in range(4))
    assert names == ["a", "a", "b", "b"]
    with pytest.raises(CapacityExhausted):
        keypool.acquire_key(db, 1, timeout=0, environ=ENV)


def test_tokens_per_minute_count_the_tokens_actually_used(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", tpm=1000, environ=ENV)
    lease = keypool.acquire_key(db, 900, timeout=0, environ=ENV)
    with pytest.raises(CapacityExhausted):
        keypool.acquire_key(db, 200, timeout=0, environ=ENV)
    keypool.release(db, lease, tokens_used=150)  # the answer was shorter than estimated
    assert keypool.acquire_key(db, 800, timeout=0, environ=ENV).name == "a"
    (usage,) = keypool.key_usage(db, environ=ENV)
    assert usage.minute_tokens == 950
    with pytest.raises(CapacityExhausted, match="split the request"):
        keypool.acquire_key(db, 5000, timeout=60, environ=ENV)


def test_a_grant_given_back_unused_frees_its_slot(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", rpm=1, environ=ENV)
    lease = keypool.acquire_key(db, 10, timeout=0, environ=ENV)
    keypool.release(db, lease, sent=False)
    assert keypool.acquire_key(db, 10, timeout=0, environ=ENV).name == "a"


def test_requests_per_day(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", rpd=2, environ=ENV)
    first = keypool.acquire_key(db, 1, timeout=0, environ=ENV)
    keypool.acquire_key(db, 1, timeout=0, environ=ENV)
    with pytest.raises(CapacityExhausted) as refused:
        keypool.acquire_key(db, 1, timeout=0, environ=ENV)
    assert refused.value.retry_at == first.granted_at + timedelta(days=1)


def test_a_cooling_key_is_skipped_and_waited_for(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", environ=ENV)
    keypool.add_key(db, "b", env_var="KB_TEST_KEY_B", environ=ENV)
    lease = keypool.acquire_key(db, 1, timeout=0, environ=ENV)
    until = keypool.cool_down(db, lease, 600)
    assert {keypool.acquire_key(db, 1, timeout=0, environ=ENV).name for _ in range(3)} == {
        "b" if lease.name == "a" else "a"
    }
    other = keypool.acquire_key(db, 1, timeout=0, environ=ENV)
    short = keypool.cool_down(db, other, 1.5)
    with pytest.raises(CapacityExhausted) as refused:
        keypool.acquire_key(db, 1, timeout=0, environ=ENV)
    assert refused.value.retry_at == short
    waited = keypool.acquire_key(db, 1, timeout=30, environ=ENV)  # waits for the short cooldown to end
    assert waited.name == other.name and waited.granted_at >= short
    assert _db_now(db) < until


def test_disabled_keys_and_keys_this_process_cannot_use(db: Database) -> None:
    keypool.add_key(db, "a", env_var="KB_TEST_KEY_A", environ=ENV)
    keypool.disable_key(db, "a", "leaked")
    with pytest.raises(CapacityExhausted, match="kb keys add"):
        keypool.acquire_key(db, 1, timeout=0, environ=ENV)
    keypool.enable_key(db, "a")
    with pytest.raises(ConfigError, match=r"KB_TEST_KEY_A: variable not set"):
        keypool.acquire_key(db, 1, timeout=0, environ={})
    with pytest.raises(ConfigError, match="different key"):
        keypool.acquire_key(db, 1, timeout=0, environ={"KB_TEST_KEY_A": "some-other-key"})
    with pytest.raises(NotFound):
        keypool.disable_key(db, "missing")
    assert keypool.acquire_key(db, 1, timeout=0, environ=ENV).name == "a"
    with pytest.raises(InputError):
        keypool.acquire_key(db, -1, environ=ENV)


def test_kb_keys_add_list_disable(db_url: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    env.update(ENV, KB_HOME=str(tmp_path), KB_DATABASE_URL=db_url)

    def kb(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "knowledgebase", "keys", *args], env=env, capture_output=True, text=True, timeout=60
        )

    added = kb("add", "team-1", "--env", "KB_TEST_KEY_A", "--rpm", "15", "--tpm", "1000000", "--rpd", "1500")
    assert added.returncode == 0 and "sha256:" in added.stdout and SECRET_A not in added.stdout
    assert kb("add", "team-2", "--env", "KB_TEST_KEY_B", "--rpm", "0").returncode == 2  # click refuses 0
    refused = kb("add", "team-2", "--env", SECRET_B)
    assert refused.returncode == 1 and "not the key itself" in refused.stderr and SECRET_B not in refused.stderr
    with Database(db_url) as db:
        keypool.acquire_key(db, 42, timeout=0, environ=ENV)
    (row,) = json.loads(kb("list", "--json").stdout)
    assert row["name"] == "team-1" and row["minute_requests"] == 1 and row["minute_tokens"] == 42
    assert row["available_here"] == "yes" and row["rpm_limit"] == 15
    assert "team-1" in kb("list").stdout
    disabled = kb("disable", "team-1", "--reason", "rotated")
    assert disabled.returncode == 0 and "disabled (rotated)" in disabled.stdout
    missing = kb("disable", "nope")
    assert missing.returncode == 1 and "kb keys list" in missing.stderr
