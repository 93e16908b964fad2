"""API keys (``api_keys``): a key is stored by reference (the environment variable holding it) and a
fingerprint, never in clear text, with its limits and live usage counters."""

from __future__ import annotations

import hashlib
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
