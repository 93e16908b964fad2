"""API keys (``api_keys``): a key is stored by reference (the environment variable holding it) and a
fingerprint, never in clear text, with its limits and live usage counters; and their grants
(``api_key_grants``), one row per request granted on a key, which the sliding windows count.

The statements only read and write; the throttling (which key, whether it has room, how long to
wait) is ``coordination.keypool``'s, which calls them under the key's row lock.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import psycopg

from knowledgebase.errors import InputError
from knowledgebase.store._rows import columns, fetch_all, fetch_one, fetch_required


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    provider: str
    env_var: str
    fingerprint: str | None
    rpm_limit: int | None
    tpm_limit: int | None
    rpd_limit: int | None
    cooldown_until: datetime | None
    disabled: bool
    disabled_reason: str | None
    last_used_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class CandidateKey:
    """An enabled key that may take a request, read with the database's clock (``db_now``)."""

    id: int
    name: str
    env_var: str
    fingerprint: str | None
    cooldown_until: datetime | None
    db_now: datetime


@dataclass(frozen=True)
class LockedKey:
    """A key's limits, read under its row lock at ``locked_at``."""

    id: int
    rpm_limit: int | None
    tpm_limit: int | None
    rpd_limit: int | None
    cooldown_until: datetime | None
    locked_at: datetime


@dataclass(frozen=True)
class WindowUsage:
    """What a key was granted in the minute and the day before ``now``."""

    now: datetime
    minute_requests: int
    minute_tokens: int
    day_requests: int


@dataclass(frozen=True)
class RecentGrant:
    granted_at: datetime
    tokens: int


@dataclass(frozen=True)
class ApiKeyUsage:
    """A key with its limits and what it used in the last minute and day."""

    name: str
    provider: str
    env_var: str
    fingerprint: str | None
    rpm_limit: int | None
    tpm_limit: int | None
    rpd_limit: int | None
    minute_requests: int
    minute_tokens: int
    day_requests: int
    day_tokens: int
    cooldown_until: datetime | None
    disabled: bool
    disabled_reason: str | None
    last_used_at: datetime | None


_COLS = columns(ApiKey)
INSERT_API_KEY = f"""
INSERT INTO api_keys (name, provider, env_var, fingerprint, rpm_limit, tpm_limit, rpd_limit)
VALUES (%(name)s, %(provider)s, %(env_var)s, %(fingerprint)s, %(rpm_limit)s, %(tpm_limit)s, %(rpd_limit)s)
ON CONFLICT (name) DO UPDATE
   SET provider = EXCLUDED.provider, env_var = EXCLUDED.env_var,
       fingerprint = COALESCE(EXCLUDED.fingerprint, api_keys.fingerprint),
       rpm_limit = EXCLUDED.rpm_limit, tpm_limit = EXCLUDED.tpm_limit, rpd_limit = EXCLUDED.rpd_limit
RETURNING {_COLS}
"""
GET_API_KEY = f"SELECT {_COLS} FROM api_keys WHERE name = %s"
LIST_API_KEYS = f"SELECT {_COLS} FROM api_keys ORDER BY name"
SET_DISABLED = f"""
UPDATE api_keys SET disabled = %(disabled)s, disabled_reason = %(reason)s WHERE name = %(name)s
RETURNING {_COLS}
"""
CANDIDATE_KEYS = """
SELECT k.id, k.name, k.env_var, k.fingerprint, k.cooldown_until, clock_timestamp() AS db_now
  FROM api_keys k
  LEFT JOIN LATERAL (
        SELECT count(*) AS recent FROM api_key_grants g
         WHERE g.api_key_id = k.id AND g.granted_at > now() - interval '60 seconds'
  ) u ON true
 WHERE NOT k.disabled AND k.provider = %(provider)s AND NOT (k.id = ANY(%(exclude)s))
 ORDER BY (u.recent::float8 / COALESCE(k.rpm_limit, 1000000)), k.last_used_at NULLS FIRST, k.id
"""
LOCK_KEY = """
SELECT id, rpm_limit, tpm_limit, rpd_limit, cooldown_until, clock_timestamp() AS locked_at
  FROM api_keys WHERE id = %s AND NOT disabled FOR UPDATE
"""
LOCK_KEY_SKIP_LOCKED = LOCK_KEY + " SKIP LOCKED"
# read after the lock is held, so every earlier grant on the key is committed and older than `now`
WINDOW_USAGE = """
WITH t AS (SELECT clock_timestamp() AS now)
SELECT t.now,
       count(g.id) FILTER (WHERE g.granted_at > t.now - interval '60 seconds') AS minute_requests,
       COALESCE(sum(g.tokens) FILTER (WHERE g.granted_at > t.now - interval '60 seconds'), 0) AS minute_tokens,
       count(g.id) AS day_requests
  FROM t LEFT JOIN api_key_grants g ON g.api_key_id = %s AND g.granted_at > t.now - interval '1 day'
 GROUP BY t.now
"""
MINUTE_GRANTS = """
SELECT granted_at, tokens FROM api_key_grants
 WHERE api_key_id = %s AND granted_at > %s - interval '60 seconds' ORDER BY granted_at, id
"""
NTH_DAY_GRANT = """
SELECT granted_at FROM api_key_grants
 WHERE api_key_id = %s AND granted_at > %s - interval '1 day' ORDER BY granted_at, id OFFSET %s LIMIT 1
"""
INSERT_GRANT = """
INSERT INTO api_key_grants (api_key_id, granted_at, tokens) VALUES (%s, %s, %s) RETURNING id
"""
TOUCH_KEY = "UPDATE api_keys SET last_used_at = %s WHERE id = %s"
# grants older than the day window count for nothing; keep an hour for `kb keys list` edge cases
PRUNE_GRANTS = "DELETE FROM api_key_grants WHERE api_key_id = %s AND granted_at < %s - interval '25 hours'"
RELEASE_GRANT = "UPDATE api_key_grants SET tokens = %s, released_at = now() WHERE id = %s"
CANCEL_GRANT = "DELETE FROM api_key_grants WHERE id = %s"
COOL_DOWN = """
UPDATE api_keys SET cooldown_until = GREATEST(COALESCE(cooldown_until, now()), now() + make_interval(secs => %s))
 WHERE id = %s RETURNING cooldown_until
"""
KEY_USAGE = """
SELECT k.name, k.provider, k.env_var, k.fingerprint, k.rpm_limit, k.tpm_limit, k.rpd_limit,
       COALESCE(u.minute_requests, 0) AS minute_requests, COALESCE(u.minute_tokens, 0) AS minute_tokens,
       COALESCE(u.day_requests, 0) AS day_requests, COALESCE(u.day_tokens, 0) AS day_tokens,
       CASE WHEN k.cooldown_until > now() THEN k.cooldown_until END AS cooldown_until,
       k.disabled, k.disabled_reason, k.last_used_at
  FROM api_keys k
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE g.granted_at > now() - interval '60 seconds') AS minute_requests,
               sum(g.tokens) FILTER (WHERE g.granted_at > now() - interval '60 seconds') AS minute_tokens,
               count(*) AS day_requests, sum(g.tokens) AS day_tokens
          FROM api_key_grants g WHERE g.api_key_id = k.id AND g.granted_at > now() - interval '1 day'
  ) u ON true
 ORDER BY k.name
"""


def key_fingerprint(secret: str) -> str:
    """A short, non-reversible fingerprint of a key, enough to tell keys apart in audits."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def upsert_api_key(
    conn: psycopg.Connection,
    name: str,
    *,
    env_var: str,
    fingerprint: str | None = None,
    provider: str = "gemini",
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    rpd_limit: int | None = None,
) -> ApiKey:
    """Add a key by reference, or update its reference and limits (idempotent)."""
    if not name.strip() or not env_var.strip():
        raise InputError("an API key needs a name and the environment variable that holds it")
    for label, limit in (("rpm", rpm_limit), ("tpm", tpm_limit), ("rpd", rpd_limit)):
        if limit is not None and limit <= 0:
            raise InputError(f"--{label} must be a positive number (or left out for no limit)")
    params = {
        "name": name,
        "provider": provider,
        "env_var": env_var,
        "fingerprint": fingerprint,
        "rpm_limit": rpm_limit,
        "tpm_limit": tpm_limit,
        "rpd_limit": rpd_limit,
    }
    row = fetch_one(conn, ApiKey, INSERT_API_KEY, params)
    assert row is not None
    return row


def get_api_key(conn: psycopg.Connection, name: str) -> ApiKey:
    return fetch_required(conn, ApiKey, GET_API_KEY, (name,), f"API key {name!r} (add it with `kb keys add`)")


def list_api_keys(conn: psycopg.Connection) -> list[ApiKey]:
    return fetch_all(conn, ApiKey, LIST_API_KEYS)


def set_api_key_disabled(conn: psycopg.Connection, name: str, disabled: bool, reason: str | None = None) -> ApiKey:
    return fetch_required(
        conn,
        ApiKey,
        SET_DISABLED,
        {"name": name, "disabled": disabled, "reason": reason},
        f"API key {name!r} (see `kb keys list`)",
    )


def list_candidate_keys(conn: psycopg.Connection, provider: str, exclude: Sequence[int]) -> list[CandidateKey]:
    """Enabled keys of ``provider`` not in ``exclude``, the least used (for its RPM) first."""
    return fetch_all(conn, CandidateKey, CANDIDATE_KEYS, {"provider": provider, "exclude": list(exclude)})


def lock_key(conn: psycopg.Connection, key_id: int, *, skip_locked: bool = False) -> LockedKey | None:
    """Lock an enabled key's row until the transaction ends; None if disabled (or locked, with ``skip_locked``)."""
    return fetch_one(conn, LockedKey, LOCK_KEY_SKIP_LOCKED if skip_locked else LOCK_KEY, (key_id,))


def window_usage(conn: psycopg.Connection, key_id: int) -> WindowUsage:
    """The requests and tokens granted on the key in the last minute and day, by the clock read now."""
    row = fetch_one(conn, WindowUsage, WINDOW_USAGE, (key_id,))
    assert row is not None
    return row


def list_minute_grants(conn: psycopg.Connection, key_id: int, now: datetime) -> list[RecentGrant]:
    """The key's grants of the minute before ``now``, oldest first."""
    return fetch_all(conn, RecentGrant, MINUTE_GRANTS, (key_id, now))


def nth_grant_of_day(conn: psycopg.Connection, key_id: int, now: datetime, offset: int) -> datetime | None:
    """When the key's grant number ``offset`` (from 0, oldest first) of the day before ``now`` was made."""
    row = conn.execute(NTH_DAY_GRANT, (key_id, now, offset)).fetchone()
    return None if row is None else row[0]


def insert_grant(conn: psycopg.Connection, key_id: int, granted_at: datetime, tokens: int) -> int:
    """Record a request granted on the key; returns the grant's id."""
    row = conn.execute(INSERT_GRANT, (key_id, granted_at, tokens)).fetchone()
    assert row is not None
    grant_id: int = row[0]
    return grant_id


def mark_key_used(conn: psycopg.Connection, key_id: int, used_at: datetime) -> None:
    """Set when the key was last granted a request."""
    conn.execute(TOUCH_KEY, (used_at, key_id))


def prune_grants(conn: psycopg.Connection, key_id: int, now: datetime) -> None:
    """Delete the key's grants that no window before ``now`` counts any more."""
    conn.execute(PRUNE_GRANTS, (key_id, now))


def record_grant_tokens(conn: psycopg.Connection, grant_id: int, tokens: int) -> None:
    """Record the tokens a granted request actually used, and that it is over."""
    conn.execute(RELEASE_GRANT, (tokens, grant_id))


def delete_grant(conn: psycopg.Connection, grant_id: int) -> None:
    """Give a grant back (no request was made on it)."""
    conn.execute(CANCEL_GRANT, (grant_id,))


def extend_cooldown(conn: psycopg.Connection, key_id: int, seconds: float) -> datetime:
    """Park the key for at least ``seconds`` from now; returns when its cooldown ends."""
    row = conn.execute(COOL_DOWN, (seconds, key_id)).fetchone()
    assert row is not None
    until: datetime = row[0]
    return until


def list_key_usage(conn: psycopg.Connection) -> list[ApiKeyUsage]:
    """Every key with its limits and what it was granted in the last minute and day, by name."""
    return fetch_all(conn, ApiKeyUsage, KEY_USAGE)
