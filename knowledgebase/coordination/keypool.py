"""A pool of API keys shared by every agent on every machine, kept within each key's limits.

Keys are stored by reference: the name of the environment variable that holds the key on each
machine, and a fingerprint to tell keys apart; the key itself is never stored or logged. A key is
usable in a process when its variable is set there (and matches the fingerprint, if one is known).

``acquire_key`` grants a request on a key with headroom and returns a ``Lease``. Limits are counted
over sliding windows (the last 60 seconds for RPM and TPM, the last 24 hours for RPD) from
``api_key_grants``, one row per granted request, and the check and the grant happen under the key's
row lock with the database clock read after the lock is taken. Grants on one key are thus serialised
and time-ordered, so no 60-second (or 24-hour) window ever holds more than the limit, across all
processes and machines. Keys locked by another acquirer are skipped first (SKIP LOCKED) and waited
for only if no other key has room. With no headroom anywhere, ``acquire_key`` sleeps until capacity
returns if that is within ``timeout``, else raises CapacityExhausted with the time it returns.

After the request: ``release(db, lease, tokens_used=...)`` records the tokens actually used (TPM is
counted from them); ``release(..., sent=False)`` gives the grant back when no request was made;
``cool_down`` parks a key that got a 429 until its cooldown ends.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from knowledgebase.db import Database
from knowledgebase.errors import CapacityExhausted, ConfigError, InputError
from knowledgebase.store._rows import fetch_all
from knowledgebase.store.api_keys import ApiKey, key_fingerprint, set_api_key_disabled, upsert_api_key
from knowledgebase.util.redact import redact_text

MINUTE = timedelta(seconds=60)
DAY = timedelta(days=1)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Lease:
    """A request granted on a key; hand ``secret`` to the client and ``release`` the lease after."""

    key_id: int
    name: str
    env_var: str
    grant_id: int
    granted_at: datetime
    estimated_tokens: int
    secret: str = field(repr=False)


@dataclass(frozen=True)
class KeyUsage:
    """A key with its limits and what it used in the last minute and day (``kb keys list``)."""

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
    available_here: str  # "yes", or why not: "variable not set", "different key"


# ----- SQL ------------------------------------------------------------------------------------------

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
       k.disabled, k.disabled_reason, k.last_used_at, '' AS available_here
  FROM api_keys k
  LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE g.granted_at > now() - interval '60 seconds') AS minute_requests,
               sum(g.tokens) FILTER (WHERE g.granted_at > now() - interval '60 seconds') AS minute_tokens,
               count(*) AS day_requests, sum(g.tokens) AS day_tokens
          FROM api_key_grants g WHERE g.api_key_id = k.id AND g.granted_at > now() - interval '1 day'
  ) u ON true
 ORDER BY k.name
"""


# ----- managing keys --------------------------------------------------------------------------------


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    import os

    return os.environ if environ is None else environ


def add_key(
    db: Database,
    name: str,
    *,
    env_var: str,
    rpm: int | None = None,
    tpm: int | None = None,
    rpd: int | None = None,
    provider: str = "gemini",
    environ: Mapping[str, str] | None = None,
) -> ApiKey:
    """Add (or update) a key by reference: the variable ``env_var`` holds it; its fingerprint is kept if set."""
    if not _ENV_NAME.match(env_var or "") or redact_text(env_var).count:
        raise InputError(
            f"--env takes the NAME of the environment variable that holds the key (like GEMINI_API_KEY_2), "
            f"not {'the key itself' if redact_text(env_var or '').count else repr(env_var)}"
        )
    secret = _environ(environ).get(env_var)
    with db.connection() as conn:
        return upsert_api_key(
            conn,
            name,
            env_var=env_var,
            fingerprint=key_fingerprint(secret) if secret else None,
            provider=provider,
            rpm_limit=rpm,
            tpm_limit=tpm,
            rpd_limit=rpd,
        )


def disable_key(db: Database, name: str, reason: str | None = None) -> ApiKey:
    """Stop handing out ``name`` (kept for the record; ``enable_key`` brings it back)."""
    with db.connection() as conn:
        return set_api_key_disabled(conn, name, True, reason)


def enable_key(db: Database, name: str) -> ApiKey:
    with db.connection() as conn:
        return set_api_key_disabled(conn, name, False, None)


def _availability(env_var: str, fingerprint: str | None, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """("yes", secret) when the key can be used in this process, else (why not, None)."""
    secret = environ.get(env_var)
    if not secret:
        return "variable not set", None
    if fingerprint and key_fingerprint(secret) != fingerprint:
        return "different key", None
    return "yes", secret


def key_usage(db: Database, *, environ: Mapping[str, str] | None = None) -> list[KeyUsage]:
    """Every key with its limits, live usage (last 60 s and 24 h) and whether this process can use it."""
    env = _environ(environ)
    with db.connection() as conn:
        rows = fetch_all(conn, KeyUsage, KEY_USAGE)
    return [
        KeyUsage(**{**row.__dict__, "available_here": _availability(row.env_var, row.fingerprint, env)[0]})
        for row in rows
    ]


# ----- acquiring and releasing ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Refusal:
    """Why a key had no room, and when it will (None: never, for this request)."""

    retry_at: datetime | None


def _recovery(
    cur: psycopg.Cursor[Any], key: dict[str, Any], usage: dict[str, Any], estimated_tokens: int
) -> _Refusal | None:
    """None when the key has room for the request now; else when it will."""
    now: datetime = usage["now"]
    waits: list[datetime] = []
    rpm, tpm, rpd = key["rpm_limit"], key["tpm_limit"], key["rpd_limit"]
    if tpm is not None and estimated_tokens > tpm:
        return _Refusal(None)
    over_rpm = rpm is not None and usage["minute_requests"] >= rpm
    over_tpm = tpm is not None and usage["minute_tokens"] + estimated_tokens > tpm
    if over_rpm or over_tpm:
        grants = cur.execute(MINUTE_GRANTS, (key["id"], now)).fetchall()
        if over_rpm:
            waits.append(grants[len(grants) - rpm]["granted_at"] + MINUTE)
        if over_tpm:
            used = usage["minute_tokens"]
            for grant in grants:
                used -= grant["tokens"]
                if used + estimated_tokens <= tpm:
                    waits.append(grant["granted_at"] + MINUTE)
                    break
    if rpd is not None and usage["day_requests"] >= rpd:
        row = cur.execute(NTH_DAY_GRANT, (key["id"], now, usage["day_requests"] - rpd)).fetchone()
        waits.append((row["granted_at"] if row else now) + DAY)
    return _Refusal(max(waits)) if waits else None


def _try_key(
    conn: psycopg.Connection, key_id: int, estimated_tokens: int, *, wait_for_lock: bool
) -> tuple[int, datetime] | _Refusal | None:
    """In its own transaction: lock the key, check its windows, grant. None: locked by another (skipped)."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        key = cur.execute(LOCK_KEY if wait_for_lock else LOCK_KEY_SKIP_LOCKED, (key_id,)).fetchone()
        if key is None:
            return None
        if key["cooldown_until"] is not None and key["cooldown_until"] > key["locked_at"]:
            return _Refusal(key["cooldown_until"])
        usage = cur.execute(WINDOW_USAGE, (key_id,)).fetchone()
        assert usage is not None
        refusal = _recovery(cur, key, usage, estimated_tokens)
        if refusal is not None:
            return refusal
        now = usage["now"]
        grant = cur.execute(INSERT_GRANT, (key_id, now, estimated_tokens)).fetchone()
        assert grant is not None
        cur.execute(TOUCH_KEY, (now, key_id))
        cur.execute(PRUNE_GRANTS, (key_id, now))
        return grant["id"], now


def _attempt(
    db: Database, estimated_tokens: int, provider: str, exclude: Sequence[int], environ: Mapping[str, str]
) -> Lease | tuple[datetime | None, datetime]:
    """One pass over the pool: a Lease, or (when capacity returns or None, the database's time now)."""
    with db.connection() as conn:
        conn.commit()  # each key is tried in a transaction of its own
        with conn.cursor(row_factory=dict_row) as cur:
            candidates = cur.execute(CANDIDATE_KEYS, {"provider": provider, "exclude": list(exclude)}).fetchall()
        conn.commit()
        usable = []
        for key in candidates:
            secret = _availability(key["env_var"], key["fingerprint"], environ)[1]
            if secret is not None:
                usable.append((key, secret))
        if not usable:
            if candidates:
                reasons = ", ".join(
                    f"{k['name']} (${k['env_var']}: {_availability(k['env_var'], k['fingerprint'], environ)[0]})"
                    for k in candidates
                )
                raise ConfigError(f"no {provider} API key of the pool can be used in this environment: {reasons}")
            raise CapacityExhausted(
                f"no enabled {provider} API key is available"
                + (" (all excluded)" if exclude else "")
                + ": add one with `kb keys add NAME --env VAR` or `kb keys enable NAME`"
            )
        db_now = usable[0][0]["db_now"]
        retry_times: list[datetime] = []
        locked: list[tuple[dict[str, Any], str]] = []
        # first pass: keys nobody else holds right now; second pass: wait for the ones that were held
        for wait_for_lock in (False, True):
            for key, secret in usable if not wait_for_lock else locked:
                if key["cooldown_until"] is not None and key["cooldown_until"] > db_now:
                    retry_times.append(key["cooldown_until"])
                    continue
                outcome = _try_key(conn, key["id"], estimated_tokens, wait_for_lock=wait_for_lock)
                if isinstance(outcome, _Refusal):
                    if outcome.retry_at is not None:
                        retry_times.append(outcome.retry_at)
                elif outcome is not None:
                    grant_id, granted_at = outcome
                    return Lease(key["id"], key["name"], key["env_var"], grant_id, granted_at, estimated_tokens, secret)
                elif not wait_for_lock:
                    locked.append((key, secret))
        return (min(retry_times) if retry_times else None), db_now


def acquire_key(
    db: Database,
    estimated_tokens: int,
    *,
    timeout: float = 60.0,
    provider: str = "gemini",
    exclude: Sequence[int] = (),
    environ: Mapping[str, str] | None = None,
) -> Lease:
    """A lease on a key with headroom for one request of about ``estimated_tokens`` tokens.

    Waits up to ``timeout`` seconds for capacity; raises CapacityExhausted (with ``retry_at``) when
    none returns in time, at once if it cannot return within the timeout. ``exclude``: key ids not to use.
    """
    if estimated_tokens < 0:
        raise InputError("estimated tokens cannot be negative")
    env = _environ(environ)
    deadline = time.monotonic() + max(0.0, timeout)
    while True:
        outcome = _attempt(db, estimated_tokens, provider, exclude, env)
        if isinstance(outcome, Lease):
            return outcome
        retry_at, db_now = outcome
        if retry_at is None:
            raise CapacityExhausted(
                f"no {provider} API key can ever take a request of {estimated_tokens} tokens "
                "(it is over every key's tokens-per-minute limit): split the request or raise --tpm"
            )
        wait = max(0.0, (retry_at - db_now).total_seconds())
        remaining = deadline - time.monotonic()
        if wait > remaining:
            raise CapacityExhausted(
                f"no {provider} API key has headroom for {estimated_tokens} tokens; capacity returns at "
                f"{retry_at.isoformat(timespec='seconds')} (in {wait:.0f} s). Wait, add a key with "
                "`kb keys add`, or raise the wait with KB_KEY_WAIT_SECONDS.",
                retry_at=retry_at,
            )
        # a little jitter so that waiting agents do not all come back in the same millisecond
        time.sleep(min(remaining, wait + random.uniform(0.01, 0.1)))


def release(db: Database, lease: Lease, *, tokens_used: int | None = None, sent: bool = True) -> None:
    """Record the tokens the request actually used (TPM counts them), or give the grant back if not ``sent``."""
    if tokens_used is not None and tokens_used < 0:
        raise InputError("tokens used cannot be negative")
    with db.connection() as conn:
        if sent:
            tokens = lease.estimated_tokens if tokens_used is None else tokens_used
            conn.execute(RELEASE_GRANT, (tokens, lease.grant_id))
        else:
            conn.execute(CANCEL_GRANT, (lease.grant_id,))


def cool_down(db: Database, lease: Lease, seconds: float) -> datetime:
    """Park the lease's key for ``seconds`` (after a 429); returns when it is usable again."""
    if not seconds > 0:
        raise InputError("a cooldown must last more than 0 seconds")
    with db.connection() as conn:
        row = conn.execute(COOL_DOWN, (float(seconds), lease.key_id)).fetchone()
    assert row is not None
    until: datetime = row[0]
    return until
