"""The one exception hierarchy of knowledgebase.

Every error a user can cause or fix is a ``KnowledgebaseError`` whose message says how to recover.
Adapters (CLI, hooks, MCP) turn these into one clean line; any other exception is a bug.

    KnowledgebaseError
    ├── ConfigError              bad setting or environment variable
    │   └── UnsafeSocket         the warm process's socket is where another user could reach it
    ├── DatabaseError
    │   ├── DatabaseUnavailable  server down, wrong URL, authentication failed
    │   ├── ExtensionMissing     pgvector not installed on an external server
    │   └── SchemaMismatch       schema behind or ahead of this code
    ├── EmbeddingError
    │   ├── ModelMismatch        configured model differs from the one that made the stored vectors
    │   └── BackendUnavailable   a faster embedding backend cannot run here (callers fall back to torch)
    ├── InputError               bad input from a user or caller (empty query, bad path, bad glob...)
    │   ├── ProjectPathError     a path to scan that does not exist or is not a directory
    │   └── GeminiSettingsError  a Gemini CLI settings.json that cannot be merged into (nothing changed)
    ├── NotFound                 a task, fact, key or project that does not exist
    ├── LeaseError               a task lease that is not (or no longer) held by the caller
    ├── CapacityExhausted        no API key has headroom; says when capacity returns
    └── ModelCallError           a Gemini request (CLI or API) failed for a reason other than a rate limit
"""

from __future__ import annotations

from datetime import datetime


class KnowledgebaseError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(KnowledgebaseError):
    """A setting or environment variable has an unusable value."""


class UnsafeSocket(ConfigError):
    """The warm process's socket lies where another user could reach it, or answered as another user."""


class DatabaseError(KnowledgebaseError):
    """The database cannot be used as it is."""


class DatabaseUnavailable(DatabaseError):
    """The database cannot be reached or refused the connection."""


class ExtensionMissing(DatabaseError):
    """The pgvector extension is not available on the server."""


class SchemaMismatch(DatabaseError):
    """The schema revision in the database is not the one this code expects."""


class EmbeddingError(KnowledgebaseError):
    """The embedding model cannot be loaded or used."""


class ModelMismatch(EmbeddingError):
    """The configured embedding model is not the one that produced the stored vectors."""


class BackendUnavailable(EmbeddingError):
    """An embedding backend (ONNX Runtime, OpenVINO) cannot run here: package missing or CPU unsupported."""


class InputError(KnowledgebaseError):
    """Input that cannot be processed as given."""


class ProjectPathError(InputError):
    """A project path that does not exist or is not a directory."""


class GeminiSettingsError(InputError):
    """A Gemini CLI ``settings.json`` that install/uninstall refuses to change (it is left as it was)."""


class NotFound(KnowledgebaseError):
    """A requested row does not exist."""


class LeaseError(KnowledgebaseError):
    """The caller does not hold the lease it claims to hold."""


class CapacityExhausted(KnowledgebaseError):
    """No API key has headroom for the request right now."""

    def __init__(self, message: str, retry_at: datetime | None = None) -> None:
        super().__init__(message)
        self.retry_at = retry_at


class ModelCallError(KnowledgebaseError):
    """A Gemini request failed (bad key, bad request, CLI crash...); the message carries the cause."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name): the part worth logging or showing."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
