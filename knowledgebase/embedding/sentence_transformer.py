"""The sentence-transformers embedder: the model run by torch, imported and loaded on first use."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from knowledgebase.config import DEFAULT_EMBED_MODEL
from knowledgebase.embedding.base import count_tokens, model_path
from knowledgebase.errors import EmbeddingError


class SentenceTransformerEmbedder:
    """A sentence-transformers model run by torch (fp32, CPU), loaded on first use, batched and normalised."""

    backend = "torch"
    runs_on = "torch fp32"

    def __init__(self, name: str = DEFAULT_EMBED_MODEL, *, batch_size: int = 32) -> None:
        self._name = name
        self.batch_size = batch_size
        self._model: Any = None
        self._dimension: int | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        if self._dimension is None:
            self._dimension = int(self._load().get_embedding_dimension())
        return self._dimension

    @property
    def max_tokens(self) -> int:
        """The longest input the model reads; longer text is truncated by the model."""
        return int(self._load().max_seq_length)

    def _load(self) -> Any:
        """The loaded ``SentenceTransformer`` (also used to export it for the faster backends)."""
        if self._model is None:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no "Loading weights" bar on stderr
            try:
                from sentence_transformers import SentenceTransformer

                self._model = SentenceTransformer(model_path(self._name), device="cpu")
            except EmbeddingError:
                raise
            except Exception as exc:
                raise EmbeddingError(
                    f"cannot load embedding model {self._name!r}: {exc}. "
                    "Set KB_EMBED_MODEL to a local sentence-transformers model path, or unset it for the default."
                ) from exc
        return self._model

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._load().encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def count_tokens(self, text: str) -> int:
        return count_tokens(self._name, text)
