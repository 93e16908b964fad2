"""Embedding models: the Embedder interface, sentence-transformers, and exported ONNX/OpenVINO runs.

- ``base``                  the ``Embedder`` protocol, the model's path and tokenizer (``count_tokens``)
- ``sentence_transformer``  the model run by torch (imported on first use)
- ``exported``              the same model exported once to ONNX, run by ONNX Runtime or OpenVINO
- ``models``                ``embedder_from_settings`` (KB_EMBED_MODEL, KB_EMBED_BACKEND) and ``bind_model``
                            (the store's model check)

torch and sentence-transformers are imported only when a model is first used. Callers import the
names below from ``knowledgebase.embedding``.
"""

from knowledgebase.embedding.base import Embedder, count_tokens, load_tokenizer, model_path
from knowledgebase.embedding.models import BackendChoice, bind_model, choose_backend, embedder_from_settings
from knowledgebase.embedding.sentence_transformer import SentenceTransformerEmbedder

__all__ = [
    "BackendChoice",
    "Embedder",
    "SentenceTransformerEmbedder",
    "bind_model",
    "choose_backend",
    "count_tokens",
    "embedder_from_settings",
    "load_tokenizer",
    "model_path",
]
