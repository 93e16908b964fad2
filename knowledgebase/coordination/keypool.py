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
``cool_down`` parks a key that got a 429 until its cooldown ends. The statements live in
``store.api_keys``; the choice of key, the window arithmetic and the waiting are here.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import psycopg

from knowledgebase.config import MAX_DB_INT
from knowledgebase.db import Database
from knowledgebase.errors import CapacityExhausted, ConfigError, InputError
from knowledgebase.store.api_keys import (
    ApiKey,
    ApiKeyUsage,
    CandidateKey,
    LockedKey,
    WindowUsage,
    delete_grant,
    extend_cooldown,
    insert_grant,
    key_fingerprint,
    list_candidate_keys,
    list_key_usage,
    list_minute_grants,
    lock_key,
    mark_key_used,
    nth_grant_of_day,
    prune_grants,
    record_grant_tokens,
    set_api_key_disabled,
    upsert_api_key,
    window_usage,
)
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
class KeyUsage(ApiKeyUsage):
    """A key with its limits and what it used in the last minute and day (``kb keys list``)."""

    available_here: str  # "yes", or why not: "variable not set", "different key"


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
            f"env_var is the NAME of the environment variable that holds the key (like GEMINI_API_KEY_2), "
            f"not {'the key itself' if redact_text(env_var or '').count else repr(env_var)}"
        )
    for flag, limit in (("rpm", rpm), ("tpm", tpm), ("rpd", rpd)):
        if limit is not None and not 1 <= limit <= MAX_DB_INT:
            raise InputError(
                f"the {flag} limit must be positive and at most {MAX_DB_INT} (got {limit}); leave it out for no limit"
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
        rows = list_key_usage(conn)
    return [
        KeyUsage(**row.__dict__, available_here=_availability(row.env_var, row.fingerprint, env)[0]) for row in rows
    ]


# ----- acquiring and releasing ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Refusal:
    """Why a key had no room, and when it will (None: never, for this request)."""

    retry_at: datetime | None


def _recovery(conn: psycopg.Connection, key: LockedKey, usage: WindowUsage, estimated_tokens: int) -> _Refusal | None:
    """None when the key has room for the request now; else when it will."""
    now = usage.now
    waits: list[datetime] = []
    rpm, tpm, rpd = key.rpm_limit, key.tpm_limit, key.rpd_limit
    if tpm is not None and estimated_tokens > tpm:
        return _Refusal(None)
    over_rpm = rpm is not None and usage.minute_requests >= rpm
    over_tpm = tpm is not None and usage.minute_tokens + estimated_tokens > tpm
    if over_rpm or over_tpm:
        grants = list_minute_grants(conn, key.id, now)
        if rpm is not None and over_rpm:
            waits.append(grants[len(grants) - rpm].granted_at + MINUTE)
        if tpm is not None and over_tpm:
            used = usage.minute_tokens
            for grant in grants:
                used -= grant.tokens
                if used + estimated_tokens <= tpm:
                    waits.append(grant.granted_at + MINUTE)
                    break
    if rpd is not None and usage.day_requests >= rpd:
        granted_at = nth_grant_of_day(conn, key.id, now, usage.day_requests - rpd)
        waits.append((granted_at or now) + DAY)
    return _Refusal(max(waits)) if waits else None


def _try_key(
    conn: psycopg.Connection, key_id: int, estimated_tokens: int, *, wait_for_lock: bool
) -> tuple[int, datetime] | _Refusal | None:
    """In its own transaction: lock the key, check its windows, grant. None: locked by another (skipped)."""
    with conn.transaction():
        key = lock_key(conn, key_id, skip_locked=not wait_for_lock)
        if key is None:
            return None
        if key.cooldown_until is not None and key.cooldown_until > key.locked_at:
            return _Refusal(key.cooldown_until)
        usage = window_usage(conn, key_id)
        refusal = _recovery(conn, key, usage, estimated_tokens)
        if refusal is not None:
            return refusal
        now = usage.now
        grant_id = insert_grant(conn, key_id, now, estimated_tokens)
        mark_key_used(conn, key_id, now)
        prune_grants(conn, key_id, now)
        return grant_id, now


def _attempt(
    db: Database, estimated_tokens: int, provider: str, exclude: Sequence[int], environ: Mapping[str, str]
) -> Lease | tuple[datetime | None, datetime]:
    """One pass over the pool: a Lease, or (when capacity returns or None, the database's time now)."""
    with db.connection() as conn:
        conn.commit()  # each key is tried in a transaction of its own
        candidates = list_candidate_keys(conn, provider, exclude)
        conn.commit()
        usable: list[tuple[CandidateKey, str]] = []
        for key in candidates:
            secret = _availability(key.env_var, key.fingerprint, environ)[1]
            if secret is not None:
                usable.append((key, secret))
        if not usable:
            if candidates:
                reasons = ", ".join(
                    f"{k.name} (${k.env_var}: {_availability(k.env_var, k.fingerprint, environ)[0]})"
                    for k in candidates
                )
                raise ConfigError(f"no {provider} API key of the pool can be used in this environment: {reasons}")
            raise CapacityExhausted(
                f"no enabled {provider} API key is available"
                + (" (all excluded)" if exclude else "")
                + ": add one with `kb keys add NAME --env VAR` or `kb keys enable NAME`"
            )
        db_now = usable[0][0].db_now
        retry_times: list[datetime] = []
        locked: list[tuple[CandidateKey, str]] = []
        # first pass: keys nobody else holds right now; second pass: wait for the ones that were held
        for wait_for_lock in (False, True):
            for key, secret in usable if not wait_for_lock else locked:
                if key.cooldown_until is not None and key.cooldown_until > db_now:
                    retry_times.append(key.cooldown_until)
                    continue
                outcome = _try_key(conn, key.id, estimated_tokens, wait_for_lock=wait_for_lock)
                if isinstance(outcome, _Refusal):
                    if outcome.retry_at is not None:
                        retry_times.append(outcome.retry_at)
                elif outcome is not None:
                    grant_id, granted_at = outcome
                    return Lease(key.id, key.name, key.env_var, grant_id, granted_at, estimated_tokens, secret)
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
                "(it is over every key's tokens-per-minute limit): split the request or raise a key's tpm limit"
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
            record_grant_tokens(conn, lease.grant_id, tokens)
        else:
            delete_grant(conn, lease.grant_id)


def cool_down(db: Database, lease: Lease, seconds: float) -> datetime:
    """Park the lease's key for ``seconds`` (after a 429); returns when it is usable again."""
    if not seconds > 0:
        raise InputError("a cooldown must last more than 0 seconds")
    with db.connection() as conn:
        return extend_cooldown(conn, lease.key_id, float(seconds))
