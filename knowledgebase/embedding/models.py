"""Which embedder runs, and whether the store accepts it.

``KB_EMBED_BACKEND`` picks how the model runs: ``torch`` (``sentence_transformer``), or ``onnx`` /
``openvino`` / ``openvino-bf16`` (faster on CPU, in ``exported``), which produce the same vectors, up to
float rounding, under the same model name.

The store records which model made its vectors (``embedding_models``); ``bind_model`` refuses a model
whose name or dimension differs, because vectors of two models cannot be compared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from knowledgebase.config import Settings
from knowledgebase.embedding.base import Embedder
from knowledgebase.embedding.sentence_transformer import SentenceTransformerEmbedder
from knowledgebase.errors import ModelMismatch
from knowledgebase.store import activate_model, active_model, upsert_model, vector_column_dimension

if TYPE_CHECKING:
    import psycopg

    from knowledgebase.embedding.exported import OnnxEmbedder


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
