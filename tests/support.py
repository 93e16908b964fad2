"""Test doubles that are not the database: a deterministic embedder for ranking arithmetic."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from knowledgebase.embedding import count_tokens


class HashingEmbedder:
    """Bag-of-words vectors by feature hashing: texts sharing words are similar, deterministically.

    Good for tests of ranking arithmetic, filters and bookkeeping; tests that claim semantic
    behaviour use the real model instead.
    """

    def __init__(self, name: str = "test-hashing", dimension: int = 384) -> None:
        self._name = name
        self._dimension = dimension
        self.calls = 0
        self.embedded = 0

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self._dimension

    def _vector(self, text: str) -> np.ndarray:
        vec = np.zeros(self._dimension, dtype=np.float32)
        for word in re.findall(r"[a-z0-9]+", text.lower()):
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self._dimension
            vec[index] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(vec))
        if norm == 0:
            vec[0] = 1.0
            return vec
        return vec / norm

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.embedded += len(texts)
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._vector(text)

    def count_tokens(self, text: str) -> int:
        return count_tokens("all-MiniLM-L6-v2", text)


def as_agent(url: str) -> str:
    """``url`` with the login `kb` and the agents use by default on the embedded server (``kb_agent_login``)."""
    from urllib.parse import urlsplit, urlunsplit

    from knowledgebase.db.embedded import AGENT_LOGIN

    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{AGENT_LOGIN}@{host}"))
