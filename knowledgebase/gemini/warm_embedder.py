"""An embedder that borrows the warm process's model (``kb serve``) instead of loading its own.

The MCP server runs beside the hooks' warm process for the same store; asking it for vectors keeps
torch out of the MCP process (start-up in a fraction of a second, one copy of the model in memory)
and shares the warm-up. When the warm process cannot be reached or started, the model is loaded
locally, once, with a warning on stderr; the vectors are the same either way.

``query_embedder`` is what a short-lived command (``kb search``, ``kb context``, ``kb fact add``,
``scripts/populate_context.py``) uses: the warm process when it is listening; otherwise the model is
loaded in this process with the backend that starts fastest (``choose_backend(..., "query")``), and the
warm process is started in the background as the command exits, so the next command finds it.
``KB_WARM=off`` keeps the CLI away from the warm process (the hooks always use it).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from knowledgebase.config import Settings
from knowledgebase.embedding import count_tokens
from knowledgebase.errors import EmbeddingError
from knowledgebase.gemini.warm_protocol import (
    PROTOCOL,
    HookFailure,
    connect_warm_process,
    exchange,
    server_address,
    start_server_at_exit,
    try_connect,
    warm_enabled,
)

if TYPE_CHECKING:
    from knowledgebase.embedding import Embedder
    from knowledgebase.embedding.models import Purpose

log = logging.getLogger("knowledgebase.gemini.warm_embedder")

REQUEST_TIMEOUT_S = 120.0  # room for a cold start of the warm process (model load)


class WarmProcessEmbedder:
    """The ``Embedder`` of ``settings``, computed by the warm process of ``env``'s store.

    ``wait_for_start``: when no warm process listens, start one and wait for it (the MCP server, which
    lives long); otherwise embed locally at once and start it in the background on exit (a CLI command).
    """

    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        wait_for_start: bool = True,
    ) -> None:
        self._settings = settings
        self._env = dict(env)
        self._timeout_s = timeout_s
        self._wait_for_start = wait_for_start
        self._dimension: int | None = None
        self._local: Embedder | None = None
        self._lock = threading.Lock()
        self.served_by = "not used yet"  # "warm process" or the local backend, for messages and benchmarks

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
            except _NotListening:
                self._load_local(None)
            except (HookFailure, OSError, ValueError) as exc:
                self._load_local(exc)
        local = self._local
        assert local is not None
        vectors = np.stack([local.embed_query(t) for t in texts]) if kind == "query" else local.embed_documents(texts)
        self._dimension = int(vectors.shape[1]) if len(texts) else self._dimension
        return vectors

    def _load_local(self, failure: Exception | None) -> None:
        from knowledgebase.embedding import choose_backend, embedder_from_settings

        purpose: Purpose = "index" if self._wait_for_start else "query"
        if failure is not None:
            log.warning("the warm process cannot embed (%s): loading the model in this process", failure)
        elif sys.stderr.isatty():
            backend = choose_backend(self._settings, purpose).backend
            print(f"kb: loading the embedding model ({backend})...", file=sys.stderr, flush=True)
        with self._lock:
            if self._local is None:
                self._local = embedder_from_settings(self._settings, purpose)
                self.served_by = f"local {choose_backend(self._settings, purpose).backend}"

    def _remote(self, texts: list[str], kind: str) -> np.ndarray:
        deadline = time.monotonic() + self._timeout_s
        if self._wait_for_start:
            sock, _ = connect_warm_process(self._env, deadline)
        else:
            found = try_connect(server_address(self._env))
            if found is None:
                start_server_at_exit(self._env)  # for the next command; not competing with this one
                raise _NotListening
            sock = found
        header = {"op": "embed", "protocol": PROTOCOL, "kind": kind}
        answer = exchange(sock, header, json.dumps(texts).encode(), deadline)
        if not answer.get("ok"):
            raise EmbeddingError(f"the warm process could not embed: {answer.get('error')}")
        if answer.get("model") != self.name:
            raise EmbeddingError(f"the warm process runs model {answer.get('model')!r}, not {self.name!r}")
        self._dimension = int(answer["dimension"])
        self.served_by = "warm process"
        vectors = np.asarray(answer["vectors"], dtype=np.float32)
        return vectors.reshape(len(texts), self._dimension)


class _NotListening(Exception):
    """No warm process listens, and this embedder does not wait for one to start."""


def query_embedder(settings: Settings, env: Mapping[str, str] | None = None) -> Embedder:
    """The embedder for a short-lived command: the warm process's model, or a fast local one (module doc)."""
    env = os.environ if env is None else env
    if not warm_enabled(env):
        from knowledgebase.embedding import embedder_from_settings

        return embedder_from_settings(settings, "query")
    return WarmProcessEmbedder(settings, env, wait_for_start=False)
