"""The faster CPU embedders (KB_EMBED_BACKEND=onnx/openvino/openvino-bf16): faithful to torch, cached, safe.

The model is exported to ONNX once per session (real model, real export); speed is measured by
scripts/bench_embedding.py, not here.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psycopg
import pytest

from knowledgebase.config import Settings
from knowledgebase.embedding import SentenceTransformerEmbedder, bind_model, embedder_from_settings
from knowledgebase.embedding import exported as embed_backends
from knowledgebase.embedding.exported import ONNX_BACKENDS, ExportedModel, OnnxEmbedder, ensure_export, export_directory
from knowledgebase.errors import EmbeddingError

MODEL = "all-MiniLM-L6-v2"
LONG_CODE = Path(embed_backends.__file__).read_text()[:6000]  # far past the model's 256 tokens
TEXTS = [
    "How does the store refuse vectors from a different embedding model?",
    "def bind_model(conn, embedder):\n    active = active_model(conn)\n    return active.id\n",
    "  leading and trailing whitespace, Ünïcödé, 日本語 and emoji 🚀  ",
    "SELECT id FROM file_chunks ORDER BY embedding <=> %s LIMIT %s",
    "",
    LONG_CODE,
]


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ cache holding the real ONNX export of the default model, made once per session."""
    cache = tmp_path_factory.mktemp("home") / "models"
    ensure_export(MODEL, cache)
    return cache


@pytest.fixture(scope="session")
def torch_vectors(real_embedder: SentenceTransformerEmbedder) -> np.ndarray:
    return real_embedder.embed_documents(TEXTS)


@pytest.mark.parametrize("backend", ONNX_BACKENDS)
def test_each_backend_makes_the_torch_vectors_under_the_torch_name(
    backend: str, model_cache: Path, real_embedder: SentenceTransformerEmbedder, torch_vectors: np.ndarray
) -> None:
    embedder = OnnxEmbedder(MODEL, backend=backend, cache_dir=model_cache, batch_size=4)
    vectors = embedder.embed_documents(TEXTS)

    assert embedder.runs_on != "torch (fallback)"
    assert (embedder.name, embedder.dimension, embedder.max_tokens) == (real_embedder.name, 384, 256)
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(vectors * torch_vectors, axis=1)
    assert cosines.min() > 0.999, cosines
    assert np.allclose(embedder.embed_query(TEXTS[0]), vectors[0], atol=1e-5)
    assert embedder.embed_documents([]).shape == (0, 384)


def test_tokenization_matches_sentence_transformers(
    model_cache: Path, real_embedder: SentenceTransformerEmbedder
) -> None:
    exported = ensure_export(MODEL, model_cache)
    encodings = embed_backends.load_export_tokenizer(exported).encode_batch(TEXTS)
    features = real_embedder._load().preprocess(TEXTS)

    for row, encoding in enumerate(encodings):
        length = int(features["attention_mask"][row].sum())
        assert encoding.ids == features["input_ids"][row][:length].tolist()
    assert len(encodings[-1].ids) == 256  # truncated like sentence-transformers


def test_the_export_is_cached_and_reused(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_export(name: str, target: Path) -> None:
        raise AssertionError("the cached export should have been reused")

    monkeypatch.setattr(embed_backends, "_export", no_export)
    embedder = OnnxEmbedder(MODEL, backend="onnx", cache_dir=model_cache)
    assert embedder.embed_query("reused").shape == (384,)

    directory = export_directory(model_cache, MODEL)
    assert directory.parent == model_cache and directory.name.startswith(f"{MODEL}-")
    assert {p.name for p in directory.iterdir()} == {"model.onnx", "tokenizer.json", "meta.json"}
    assert not [p for p in model_cache.iterdir() if p.name.startswith(".")]  # no staging folder left
    monkeypatch.setattr(embed_backends, "EXPORT_VERSION", embed_backends.EXPORT_VERSION + 1)
    assert export_directory(model_cache, MODEL) != directory  # a new export format gets a new entry


def _copying_export(source: ExportedModel, calls: list[Path]) -> Callable[[str, Path], None]:
    """A stand-in for the torch export that copies the session's real export (fast)."""

    def export(name: str, target: Path) -> None:
        calls.append(target)
        for path in source.directory.iterdir():
            shutil.copy(path, target / path.name)

    return export


def test_a_broken_cache_entry_is_replaced(model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = ensure_export(MODEL, model_cache)
    cache = tmp_path / "models"
    broken = export_directory(cache, MODEL)
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"half a model")  # no meta.json: an interrupted or foreign folder
    calls: list[Path] = []
    monkeypatch.setattr(embed_backends, "_export", _copying_export(source, calls))

    exported = ensure_export(MODEL, cache)

    assert len(calls) == 1 and exported.directory == broken
    assert exported.onnx_path.stat().st_size == source.onnx_path.stat().st_size
    assert json.loads((broken / "meta.json").read_text())["dimension"] == 384
    assert sorted(p.name for p in cache.iterdir()) == [broken.name]


def test_a_failed_export_leaves_no_cache_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_export(name: str, target: Path) -> None:
        (target / "model.onnx").write_bytes(b"partial")
        raise embed_backends.BackendUnavailable("simulated export failure")

    monkeypatch.setattr(embed_backends, "_export", failing_export)
    cache = tmp_path / "models"
    with pytest.raises(EmbeddingError, match="simulated"):
        ensure_export(MODEL, cache)
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize(("backend", "module"), [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_a_missing_runtime_falls_back_to_torch_with_a_warning(
    backend: str,
    module: str,
    model_cache: Path,
    torch_vectors: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    embedder = OnnxEmbedder(MODEL, backend=backend, cache_dir=model_cache)

    with caplog.at_level(logging.WARNING, logger="knowledgebase.embedding.exported"):
        vectors = embedder.embed_documents(TEXTS[:2])

    assert embedder.runs_on == "torch (fallback)"
    assert f"KB_EMBED_BACKEND={backend} is unavailable" in caplog.text and module in caplog.text
    assert embedder.name == MODEL and embedder.dimension == 384
    assert np.sum(vectors * torch_vectors[:2], axis=1).min() > 0.9999


def test_missing_export_packages_fall_back_to_torch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)
    embedder = OnnxEmbedder(MODEL, backend="openvino", cache_dir=tmp_path / "models")

    with caplog.at_level(logging.WARNING, logger="knowledgebase.embedding.exported"):
        assert embedder.runs_on == "torch (fallback)"
    assert "onnxscript" in caplog.text and "knowledgebase[onnx]" in caplog.text


def test_bf16_runs_in_f32_on_a_cpu_without_bf16(
    model_cache: Path, torch_vectors: np.ndarray, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(embed_backends, "cpu_supports_bf16", lambda core: False)
    embedder = OnnxEmbedder(MODEL, backend="openvino-bf16", cache_dir=model_cache)

    with caplog.at_level(logging.WARNING, logger="knowledgebase.embedding.exported"):
        assert embedder.runs_on == "openvino f32"
    assert "no native bf16" in caplog.text
    assert np.sum(embedder.embed_documents(TEXTS) * torch_vectors, axis=1).min() > 0.9999


def test_an_unknown_backend_is_refused(model_cache: Path) -> None:
    with pytest.raises(EmbeddingError, match="unknown ONNX backend 'cuda'"):
        OnnxEmbedder(MODEL, backend="cuda", cache_dir=model_cache)


@pytest.mark.parametrize("backend", ["torch", *ONNX_BACKENDS])
def test_settings_pick_the_backend(backend: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"KB_HOME": str(tmp_path), "KB_EMBED_BACKEND": backend, "KB_EMBED_BATCH_SIZE": "8"})
    embedder = embedder_from_settings(settings)

    assert embedder.backend == backend and embedder.batch_size == 8 and embedder.name == MODEL
    if isinstance(embedder, OnnxEmbedder):
        assert embedder.cache_dir == settings.model_cache


def test_the_export_cache_is_shared_by_every_kb_home_unless_kb_model_cache_says(tmp_path: Path) -> None:
    one = Settings.from_env({"KB_HOME": str(tmp_path / "a")})
    two = Settings.from_env({"KB_HOME": str(tmp_path / "b")})
    assert one.model_cache == two.model_cache and tmp_path not in one.model_cache.parents
    mine = Settings.from_env({"KB_HOME": str(tmp_path / "a"), "KB_MODEL_CACHE": str(tmp_path / "cache")})
    assert mine.model_cache == tmp_path / "cache"


@pytest.mark.parametrize(
    ("installed", "bf16", "purpose", "expected"),
    [
        ({"onnxruntime", "openvino"}, True, "index", "openvino-bf16"),
        ({"onnxruntime", "openvino"}, False, "index", "openvino"),
        ({"onnxruntime", "openvino"}, True, "query", "onnx"),
        ({"onnxruntime"}, True, "index", "torch"),  # measured: onnx indexes no faster than torch
        ({"openvino"}, True, "query", "openvino-bf16"),
        (set(), True, "query", "torch"),
    ],
)
def test_auto_picks_the_measured_fastest_backend_for_the_work(
    installed: set[str], bf16: bool, purpose: str, expected: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from knowledgebase.embedding import models

    monkeypatch.setattr(models, "_installed", lambda module: module in installed)
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: bf16)
    settings = Settings.from_env({"KB_HOME": str(tmp_path)})
    assert settings.embed_backend == "auto"
    assert models.choose_backend(settings, purpose).backend == expected  # type: ignore[arg-type]
    explicit = Settings.from_env({"KB_HOME": str(tmp_path), "KB_EMBED_BACKEND": "torch"})
    assert models.choose_backend(explicit, purpose).backend == "torch"  # type: ignore[arg-type]


def test_the_store_takes_backends_as_the_same_model(
    conn: psycopg.Connection, model_cache: Path, real_embedder: SentenceTransformerEmbedder
) -> None:
    model_id = bind_model(conn, OnnxEmbedder(MODEL, backend="openvino", cache_dir=model_cache))

    assert bind_model(conn, real_embedder) == model_id
    assert bind_model(conn, OnnxEmbedder(MODEL, backend="onnx", cache_dir=model_cache)) == model_id
