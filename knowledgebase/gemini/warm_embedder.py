"""An embedder that borrows the warm process's model (``kb serve``) instead of loading its own.

The MCP server runs beside the hooks' warm process for the same store; asking it for vectors keeps
torch out of the MCP process (start-up in a fraction of a second, one copy of the model in memory)
and shares the warm-up. When the warm process cannot be reached or started, the model is loaded
locally, once, with a warning on stderr; the vectors are the same either way.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from knowledgebase.config import Settings
from knowledgebase.embedding import count_tokens
from knowledgebase.errors import EmbeddingError
from knowledgebase.gemini.warm_protocol import PROTOCOL, HookFailure, connect_warm_process, exchange

if TYPE_CHECKING:
    from knowledgebase.embedding import Embedder

log = logging.getLogger("knowledgebase.gemini.warm_embedder")

REQUEST_TIMEOUT_S = 120.0  # room for a cold start of the warm process (model load)


class WarmProcessEmbedder:
    """The ``Embedder`` of ``settings``, computed by the warm process of ``env``'s store."""

    def __init__(self, settings: Settings, env: Mapping[str, str], *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self._settings = settings
        self._env = dict(env)
        self._timeout_s = timeout_s
        self._dimension: int | None = None
        self._local: Embedder | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._settings.embed_model

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self.embed_documents(["dimension"])
        assert self._dimension is not None
        return self._dimension

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return self._embed(list(texts), "documents")

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed([text], "query")[0]

    def count_tokens(self, text: str) -> int:
        return count_tokens(self.name, text)

    def _embed(self, texts: list[str], kind: str) -> np.ndarray:
        if self._local is None:
            try:
                return self._remote(texts, kind)
            except (HookFailure, OSError, ValueError) as exc:
                log.warning("the warm process cannot embed (%s): loading the model in this process", exc)
                with self._lock:
                    if self._local is None:
                        from knowledgebase.embedding import embedder_from_settings

                        self._local = embedder_from_settings(self._settings)
        local = self._local
        vectors = np.stack([local.embed_query(t) for t in texts]) if kind == "query" else local.embed_documents(texts)
        self._dimension = int(vectors.shape[1]) if len(texts) else self._dimension
        return vectors

    def _remote(self, texts: list[str], kind: str) -> np.ndarray:
        deadline = time.monotonic() + self._timeout_s
        sock, _ = connect_warm_process(self._env, deadline)
        header = {"op": "embed", "protocol": PROTOCOL, "kind": kind}
        answer = exchange(sock, header, json.dumps(texts).encode(), deadline)
        if not answer.get("ok"):
            raise EmbeddingError(f"the warm process could not embed: {answer.get('error')}")
        if answer.get("model") != self.name:
            raise EmbeddingError(f"the warm process runs model {answer.get('model')!r}, not {self.name!r}")
        self._dimension = int(answer["dimension"])
        vectors = np.asarray(answer["vectors"], dtype=np.float32)
        return vectors.reshape(len(texts), self._dimension)
