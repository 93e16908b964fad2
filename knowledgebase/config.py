"""Settings, read from the environment once.

Every knob has an environment variable and a documented default (see the README's configuration
table). Library functions take a ``Settings`` (or explicit arguments); only adapters call
``get_settings()``.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from knowledgebase.errors import ConfigError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
# tokens of context handed to an agent per prompt, counted in the embedding model's tokenizer
DEFAULT_CONTEXT_BUDGET = 1500
# minutes within which another agent counts as active: a running task that logged something, a file
# it wrote (KB_ACTIVE_MINUTES)
DEFAULT_ACTIVE_MINUTES = 30
# Bounds of numbers users hand in, checked before they reach the database (INTEGER columns, intervals).
MAX_DB_INT = 2**31 - 1
MAX_LEASE_SECONDS = 366 * 86400  # a year: longer leases are renewed with heartbeats
EMBED_BACKENDS = ("auto", "torch", "onnx", "openvino", "openvino-bf16")


def _default_home() -> Path:
    import warnings

    import platformdirs

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Path(platformdirs.user_data_dir("knowledgebase", appauthor=False))


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number; unset it or set e.g. {name}={default}") from None
    if value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def _read_urls(env: Mapping[str, str]) -> tuple[str, ...]:
    """KB_READ_DATABASE_URL: one or more URLs separated by spaces, commas or semicolons; only with
    KB_DATABASE_URL (the embedded server has no replicas)."""
    import re

    raw = (env.get("KB_READ_DATABASE_URL") or "").strip()
    if not raw:
        return ()
    if not env.get("KB_DATABASE_URL"):
        raise ConfigError("KB_READ_DATABASE_URL is set but KB_DATABASE_URL is not: set the primary's URL too "
                          "(replicas serve reads; every write goes to the primary)")
    urls = tuple(u.strip(" ,;") for u in re.split(r"[\s,;]+(?=postgres(?:ql)?://)", raw) if u.strip(" ,;"))
    bad = [u for u in urls if not u.startswith(("postgresql://", "postgres://"))]
    if bad:
        raise ConfigError(f"KB_READ_DATABASE_URL holds {bad[0][:40]!r}, not a postgresql:// URL")
    return urls


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with defaults. Build with ``Settings.from_env()``."""

    home: Path
    database_url: str | None = None
    read_database_urls: tuple[str, ...] = ()  # KB_READ_DATABASE_URL: read replicas (knowledgebase.db.routing)
    embed_model: str = DEFAULT_EMBED_MODEL
    embed_backend: str = "auto"  # chosen at run time: knowledgebase.embedding.models.choose_backend
    embed_batch_size: int = 32
    model_cache_dir: Path | None = None  # KB_MODEL_CACHE; see model_cache
    max_file_bytes: int = 1_000_000
    chunk_tokens: int = 256
    ingest_batch_chunks: int = 256
    context_budget: int = DEFAULT_CONTEXT_BUDGET
    active_minutes: int = DEFAULT_ACTIVE_MINUTES  # KB_ACTIVE_MINUTES: see knowledgebase.search.activity
    agent_id: str = ""
    pool_size: int = 4
    serve_idle_timeout: int = 1800
    project: str | None = None  # KB_PROJECT: the project Gemini CLI sessions work on, whatever their directory
    exec_capture_bytes: int = 65536
    task_lease_seconds: int = 600
    task_max_attempts: int = 5
    key_wait_seconds: int = 60
    key_cooldown_seconds: int = 60
    gemini_bin: str = "gemini"
    gemini_model: str = "gemini-2.5-flash"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``env`` (default: ``os.environ``)."""
        env = os.environ if env is None else env
        home = Path(env["KB_HOME"]).expanduser() if env.get("KB_HOME") else _default_home()
        backend = env.get("KB_EMBED_BACKEND", "auto") or "auto"
        if backend not in EMBED_BACKENDS:
            raise ConfigError(f"KB_EMBED_BACKEND={backend!r} is not one of {', '.join(EMBED_BACKENDS)}")
        return cls(
            home=home.resolve(),
            database_url=env.get("KB_DATABASE_URL") or None,
            read_database_urls=_read_urls(env),
            embed_model=env.get("KB_EMBED_MODEL") or DEFAULT_EMBED_MODEL,
            embed_backend=backend,
            embed_batch_size=_int(env, "KB_EMBED_BATCH_SIZE", 32, minimum=1),
            model_cache_dir=Path(env["KB_MODEL_CACHE"]).expanduser() if env.get("KB_MODEL_CACHE") else None,
            max_file_bytes=_int(env, "KB_MAX_FILE_BYTES", 1_000_000, minimum=1),
            chunk_tokens=_int(env, "KB_CHUNK_TOKENS", 256, minimum=64),
            ingest_batch_chunks=_int(env, "KB_INGEST_BATCH_CHUNKS", 256, minimum=1),
            context_budget=_int(env, "KB_CONTEXT_BUDGET", DEFAULT_CONTEXT_BUDGET, minimum=1),
            active_minutes=_int(env, "KB_ACTIVE_MINUTES", DEFAULT_ACTIVE_MINUTES, minimum=1),
            agent_id=env.get("KB_AGENT_ID") or f"{socket.gethostname()}:{os.getpid()}",
            pool_size=_int(env, "KB_POOL_SIZE", 4, minimum=1),
            serve_idle_timeout=_int(env, "KB_SERVE_IDLE_TIMEOUT", 1800, minimum=1),
            project=env.get("KB_PROJECT") or None,
            exec_capture_bytes=_int(env, "KB_EXEC_CAPTURE_BYTES", 65536, minimum=1024),
            task_lease_seconds=_int(env, "KB_TASK_LEASE_SECONDS", 600, minimum=1),
            task_max_attempts=_int(env, "KB_TASK_MAX_ATTEMPTS", 5, minimum=1),
            key_wait_seconds=_int(env, "KB_KEY_WAIT_SECONDS", 60, minimum=0),
            key_cooldown_seconds=_int(env, "KB_KEY_COOLDOWN_SECONDS", 60, minimum=1),
            gemini_bin=env.get("KB_GEMINI_BIN") or "gemini",
            gemini_model=env.get("KB_GEMINI_MODEL") or "gemini-2.5-flash",
        )

    @property
    def model_cache(self) -> Path:
        """Where the embedding model's ONNX export is cached: ``KB_MODEL_CACHE``, else the user's cache
        folder (shared by every KB_HOME of the user: the export depends only on the model's files)."""
        if self.model_cache_dir is not None:
            return self.model_cache_dir
        import platformdirs

        return Path(platformdirs.user_cache_dir("knowledgebase", appauthor=False)) / "models"

    @property
    def pgdata(self) -> Path:
        """Data directory of the embedded PostgreSQL server."""
        return self.home / "pgdata"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def spool_dir(self) -> Path:
        """Audit entries written while the database was unreachable, replayed by `kb audit flush`."""
        return self.home / "spool"

    @property
    def uses_embedded_db(self) -> bool:
        return self.database_url is None

    def with_overrides(self, **changes: object) -> Settings:
        """A copy with some fields replaced (CLI options mirror the environment variables)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
