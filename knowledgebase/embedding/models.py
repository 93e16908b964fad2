"""Which embedder runs, and whether the store accepts it.

``KB_EMBED_BACKEND`` picks how the model runs: ``torch`` (``sentence_transformer``), or ``onnx`` /
``openvino`` / ``openvino-bf16`` (faster on CPU, in ``exported``), which produce the same vectors, up to
float rounding, under the same model name. ``auto`` (the default) chooses at run time, by what the work
needs, what is installed and what the CPU has (``choose_backend``), from what ``scripts/bench_embedding.py``
measured on the development machine (chunks per CPU-second: openvino-bf16 23.1, openvino 12.8, torch 9.7,
onnx 8.3; cold start to a first query vector: onnx 0.4 s, openvino 1.1 s, torch 8 to 15 s):

- for indexing and for the long-lived warm process, the highest throughput: ``openvino-bf16`` where the
  CPU has bf16 (AVX512-BF16 or AMX), else ``openvino``, else ``torch`` (``onnx`` is no faster than torch);
- for a process that embeds a query or two and exits, the fastest start: ``onnx``, else as for indexing.

All of them are faithful to torch fp32 for the default model (top-10 overlap >= 0.99), so one store may
be filled by several. The faster backends need the model's ONNX export (made once, with torch, into
``Settings.model_cache``); a backend that cannot run falls back to torch with a warning.

The store records which model made its vectors (``embedding_models``); ``bind_model`` refuses a model
whose name or dimension differs, because vectors of two models cannot be compared.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from knowledgebase.config import Settings
from knowledgebase.embedding.base import Embedder
from knowledgebase.embedding.sentence_transformer import SentenceTransformerEmbedder
from knowledgebase.errors import ModelMismatch
from knowledgebase.store import activate_model, active_model, upsert_model, vector_column_dimension

if TYPE_CHECKING:
    import psycopg

    from knowledgebase.embedding.exported import OnnxEmbedder


Purpose = Literal["index", "query"]


@dataclass(frozen=True)
class BackendChoice:
    """The backend that runs, and why (``kb status`` and populate's summary show both)."""

    backend: str
    reason: str


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether the CPU advertises native bf16 (Linux ``/proc/cpuinfo``: avx512_bf16 or amx_bf16); OpenVINO
    checks again when it compiles the model and runs f32 otherwise."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_backend(settings: Settings, purpose: Purpose = "index") -> BackendChoice:
    """The backend for ``purpose``: KB_EMBED_BACKEND when set, else the measured best (module docstring)."""
    if settings.embed_backend != "auto":
        return BackendChoice(settings.embed_backend, "KB_EMBED_BACKEND")
    if purpose == "query" and _installed("onnxruntime"):
        return BackendChoice("onnx", "auto: fastest start for a query")
    if _installed("openvino"):
        if cpu_has_bf16():
            return BackendChoice("openvino-bf16", "auto: fastest, the CPU has bf16")
        return BackendChoice("openvino", "auto: fastest fp32")
    return BackendChoice("torch", "auto: no faster backend installed")


def embedder_from_settings(
    settings: Settings, purpose: Purpose = "index"
) -> SentenceTransformerEmbedder | OnnxEmbedder:
    """The embedder for ``purpose`` (``choose_backend``), not loaded until first used.

    ``onnx``, ``openvino`` and ``openvino-bf16`` run the model's ONNX export (cached in
    ``settings.model_cache``); where that backend cannot run, the embedder warns once and uses torch.
    """
    backend = choose_backend(settings, purpose).backend
    if backend != "torch":
        from knowledgebase.embedding.exported import OnnxEmbedder

        return OnnxEmbedder(
            settings.embed_model,
            backend=backend,
            cache_dir=settings.model_cache,
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
