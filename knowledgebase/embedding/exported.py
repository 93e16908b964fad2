"""Faster CPU embedders: the same model exported once to ONNX, run by ONNX Runtime or OpenVINO.

``KB_EMBED_BACKEND=onnx``, ``openvino`` or ``openvino-bf16`` selects them (see ``embedder_from_settings`` in
``knowledgebase.embedding``). The first use exports the sentence-transformers model (transformer, pooling
and normalisation, so any pooling the model configures is inside the graph) with torch into a cache under
``Settings.model_cache/<model>-<hash>/`` (the user cache folder, or ``KB_MODEL_CACHE``); later uses, in any
process, load the cached file and never import torch.
Texts are tokenised with the model's own fast tokenizer (saved beside the graph), truncated to the
model's ``max_seq_length`` and batched by length, as sentence-transformers does.

Faithfulness is the rule: the store keys its model check on name and dimension only, so these embedders
report the torch model's ``name`` and must produce vectors faithful to torch fp32 (top-10 neighbour
overlap >= 0.95, retrieval MRR@10 within 0.01; ``scripts/bench_embedding.py`` measures it). ``onnx`` and
``openvino`` run in f32 and match torch to float rounding for any model (OpenVINO is told so: left
to itself it picks bf16 on CPUs that have it). ``openvino-bf16`` is that bf16 choice, measured faithful for
the default model, and runs in f32 on CPUs without bf16. int8 quantisation is not offered: it moved about a
quarter of the top-10 neighbours. When a backend cannot run (its package is missing, the export fails, the CPU
plugin refuses the model), the embedder logs a warning and falls back to torch: same name, same vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from knowledgebase.config import DEFAULT_EMBED_MODEL
from knowledgebase.embedding.base import count_tokens, model_path
from knowledgebase.embedding.sentence_transformer import SentenceTransformerEmbedder
from knowledgebase.errors import BackendUnavailable, EmbeddingError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

log = logging.getLogger(__name__)

# Bump when the export format changes: older cache entries are then ignored (delete them to free space).
EXPORT_VERSION = 1
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
META_FILE = "meta.json"
OPSET = 18

# A session returns the pooled, normalised (batch, dimension) float32 output for named int64 inputs.
RunBatch = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass(frozen=True)
class ExportedModel:
    """A model exported to ONNX in the cache: where its files are and how to feed it."""

    directory: Path
    name: str
    dimension: int
    max_seq_length: int
    input_names: tuple[str, ...]
    pad_token_id: int

    @property
    def onnx_path(self) -> Path:
        return self.directory / ONNX_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.directory / TOKENIZER_FILE


def export_directory(cache_root: Path, name: str) -> Path:
    """The cache folder for model ``name``: its name plus a hash of the model's files and the format."""
    source = model_path(name)
    digest = hashlib.sha256(f"{EXPORT_VERSION}\0{name}\0{source}".encode())
    root = Path(source)
    if root.is_dir():
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            stat = path.stat()
            digest.update(f"\0{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")[-60:] or "model"
    return cache_root / f"{slug}-{digest.hexdigest()[:16]}"


def _read_export(directory: Path) -> ExportedModel | None:
    try:
        meta = json.loads((directory / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("export_version") != EXPORT_VERSION:
        return None
    return ExportedModel(
        directory=directory,
        name=meta["name"],
        dimension=int(meta["dimension"]),
        max_seq_length=int(meta["max_seq_length"]),
        input_names=tuple(meta["input_names"]),
        pad_token_id=int(meta["pad_token_id"]),
    )


@contextlib.contextmanager
def _quiet_export() -> Iterator[None]:
    """Keep the exporter's progress lines off stdout (a CLI's --json output) and its chatter out of logs."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export(name: str, target: Path) -> None:
    """Write model.onnx, tokenizer.json and meta.json for ``name`` into the empty folder ``target``."""
    try:
        import onnx  # noqa: F401  (the exporter needs onnx and onnxscript; fail early and clearly)
        import onnxscript  # noqa: F401
        import torch
    except ImportError as exc:
        raise BackendUnavailable(
            f"exporting the model to ONNX needs torch, onnx and onnxscript ({exc}): pip install 'knowledgebase[onnx]'"
        ) from exc

    st_model = SentenceTransformerEmbedder(name)._load()
    tokenizer = st_model.tokenizer
    backend_tokenizer = getattr(tokenizer, "backend_tokenizer", None)
    if backend_tokenizer is None:
        raise BackendUnavailable(f"{name} has no fast tokenizer, which the ONNX backends need")
    example = st_model.preprocess(["a short example text", "and a second, somewhat longer example text"])
    input_names = tuple(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in example)
    constants = {k: v for k, v in example.items() if not isinstance(v, torch.Tensor)}  # e.g. modality="text"

    class SentenceEmbedding(torch.nn.Module):
        """The whole sentence-transformers pipeline (pooling, normalisation) as one traceable module."""

        def __init__(self) -> None:
            super().__init__()
            self.pipeline = st_model

        def forward(self, *inputs: Any) -> Any:
            features = dict(zip(input_names, inputs, strict=True))
            return self.pipeline({**constants, **features})["sentence_embedding"]

    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=max(int(st_model.max_seq_length), 16))
    try:
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(
                SentenceEmbedding().eval(),
                tuple(example[k] for k in input_names),
                str(target / ONNX_FILE),
                input_names=list(input_names),
                output_names=["sentence_embedding"],
                # One entry per parameter of forward(); its *inputs take one shape spec each.
                dynamic_shapes=(tuple({0: batch, 1: sequence} for _ in input_names),),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter's errors are many and internal; the reason is in the message
        first_line = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise BackendUnavailable(f"cannot export {name} to ONNX: {type(exc).__name__}: {first_line}") from exc
    backend_tokenizer.save(str(target / TOKENIZER_FILE))
    meta = {
        "export_version": EXPORT_VERSION,
        "name": name,
        "dimension": int(st_model.get_embedding_dimension()),
        "max_seq_length": int(st_model.max_seq_length),
        "input_names": list(input_names),
        "pad_token_id": int(tokenizer.pad_token_id or 0),
        "torch": torch.__version__,
    }
    (target / META_FILE).write_text(json.dumps(meta, indent=2))


def ensure_export(name: str, cache_root: Path) -> ExportedModel:
    """The cached ONNX export of model ``name``, exported first if missing (concurrent callers are safe).

    The export is written to a temporary folder beside the cache entry and renamed into place, so a
    reader never sees a half-written model; if another process wins the race its export is used.
    """
    directory = export_directory(cache_root, name)
    exported = _read_export(directory)
    if exported is not None:
        return exported
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=cache_root))
    try:
        # a one-time step of tens of seconds: say so where a person may be waiting (stderr, the logs)
        print(f"kb: exporting the embedding model {name} to ONNX, once (about 20 s), into {directory}", file=sys.stderr)
        _export(name, staging)
        staging.chmod(0o755)  # mkdtemp made it private; the cache is as readable as KB_HOME
        try:
            os.rename(staging, directory)
        except OSError:
            if _read_export(directory) is None:  # not a lost race: a stale or broken entry
                shutil.rmtree(directory, ignore_errors=True)
                os.rename(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    exported = _read_export(directory)
    if exported is None:
        raise EmbeddingError(f"the ONNX export in {directory} is unreadable: delete that folder and retry")
    return exported


def load_export_tokenizer(exported: ExportedModel) -> Tokenizer:
    """The tokenizer saved with ``exported``, truncating to its max_seq_length, not padding."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(exported.tokenizer_path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=exported.max_seq_length)
    return tokenizer


@dataclass(frozen=True)
class Session:
    """A loaded backend: ``run`` embeds one batch; ``description`` says what runs it ("openvino bf16")."""

    run: RunBatch
    description: str


def onnxruntime_session(exported: ExportedModel) -> Session:
    """Run ``exported`` with ONNX Runtime on the CPU (fp32)."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime is not installed ({exc}): pip install 'knowledgebase[onnx]'") from exc
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            str(exported.onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types for unsupported models/CPUs
        raise BackendUnavailable(f"ONNX Runtime cannot run {exported.onnx_path}: {exc}") from exc

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(session.run(["sentence_embedding"], inputs)[0])

    return Session(run, "onnxruntime fp32")


def cpu_supports_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin has native bf16 here (avx512_bf16 or AMX)."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def openvino_session(exported: ExportedModel, precision: str = "f32") -> Session:
    """Run ``exported`` with OpenVINO on the CPU at inference ``precision``, "f32" or "bf16".

    Left to itself the CPU plugin picks bf16 wherever the CPU has it, so f32 is asked for explicitly.
    "bf16" (faithful for the default model, as scripts/bench_embedding.py measures) runs in f32 on CPUs
    without native bf16, with a warning, rather than emulating it slowly.
    """
    if precision not in ("f32", "bf16"):
        raise EmbeddingError(f"unknown OpenVINO precision {precision!r}: use f32 or bf16")
    try:
        import openvino
    except ImportError as exc:
        raise BackendUnavailable(f"openvino is not installed ({exc}): pip install 'knowledgebase[openvino]'") from exc
    try:
        core = openvino.Core()
        if "CPU" not in core.available_devices:
            raise BackendUnavailable("OpenVINO finds no usable CPU device on this machine")
        if precision == "bf16" and not cpu_supports_bf16(core):
            log.warning("this CPU has no native bf16 instructions: OpenVINO runs the embedding model in f32")
            precision = "f32"
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": precision}
        compiled = core.compile_model(str(exported.onnx_path), "CPU", config)
        actual = str(compiled.get_property("INFERENCE_PRECISION_HINT"))
    except BackendUnavailable:
        raise
    except Exception as exc:  # the CPU plugin raises RuntimeError when the CPU lacks what it needs
        raise BackendUnavailable(f"OpenVINO cannot run {exported.onnx_path} on this CPU: {exc}") from exc
    output = compiled.output("sentence_embedding")

    def run(inputs: dict[str, np.ndarray]) -> np.ndarray:
        # One infer request per call: a compiled model's shared request is not safe across threads.
        return np.asarray(compiled.create_infer_request().infer(inputs)[output])

    return Session(run, "openvino bf16" if "bf16" in actual or "bfloat16" in actual else "openvino f32")


def embed_texts(
    exported: ExportedModel, tokenizer: Tokenizer, run: RunBatch, texts: Sequence[str], batch_size: int = 32
) -> np.ndarray:
    """Unit vectors for ``texts``, shape (len(texts), dimension), from ``run`` over the exported model."""
    vectors = np.zeros((len(texts), exported.dimension), dtype=np.float32)
    if not texts:
        return vectors
    encodings = tokenizer.encode_batch(list(texts))
    # Longest first, in batches of similar length, so little of each batch is padding.
    order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        vectors[rows] = run(_model_inputs(exported, [encodings[i] for i in rows]))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def _model_inputs(exported: ExportedModel, batch: Sequence[Any]) -> dict[str, np.ndarray]:
    """The model's int64 inputs for a batch of encodings, right-padded to the longest."""
    width = max(len(e.ids) for e in batch)
    ids = np.full((len(batch), width), exported.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64)
    for row, encoding in enumerate(batch):
        length = len(encoding.ids)
        ids[row, :length] = encoding.ids
        mask[row, :length] = 1
        types[row, :length] = encoding.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in exported.input_names}


ONNX_BACKENDS = ("onnx", "openvino", "openvino-bf16")


class OnnxEmbedder:
    """A sentence-transformers model run from its ONNX export: ``backend`` is one of ``ONNX_BACKENDS``.

    ``onnx`` is ONNX Runtime fp32, ``openvino`` OpenVINO f32, ``openvino-bf16`` OpenVINO in bf16 where the
    CPU has it. Loaded on first use; if the backend cannot run here, it warns once and embeds with torch.
    """

    def __init__(
        self, name: str = DEFAULT_EMBED_MODEL, *, backend: str = "onnx", cache_dir: Path, batch_size: int = 32
    ) -> None:
        if backend not in ONNX_BACKENDS:
            raise EmbeddingError(f"unknown ONNX backend {backend!r}: use one of {', '.join(ONNX_BACKENDS)}")
        self._name = name
        self.backend = backend
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaded: tuple[ExportedModel, Tokenizer, Session] | None = None
        self.fallback: SentenceTransformerEmbedder | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        loaded = self._load()
        return loaded[0].dimension if loaded else self._torch().dimension

    @property
    def max_tokens(self) -> int:
        """The longest input the model reads; longer text is truncated."""
        loaded = self._load()
        return loaded[0].max_seq_length if loaded else self._torch().max_tokens

    @property
    def runs_on(self) -> str:
        """What embeds after loading: "onnxruntime fp32", "openvino f32", "openvino bf16" or "torch (fallback)"."""
        loaded = self._load()
        return loaded[2].description if loaded else "torch (fallback)"

    def _torch(self) -> SentenceTransformerEmbedder:
        assert self.fallback is not None
        return self.fallback

    def _load(self) -> tuple[ExportedModel, Tokenizer, Session] | None:
        """The export, tokenizer and session; None when the backend is unavailable and torch is used."""
        with self._lock:
            if self._loaded is not None or self.fallback is not None:
                return self._loaded
            try:
                exported = ensure_export(self._name, self.cache_dir)
                if self.backend == "onnx":
                    session = onnxruntime_session(exported)
                else:
                    session = openvino_session(exported, "bf16" if self.backend == "openvino-bf16" else "f32")
            except BackendUnavailable as exc:
                log.warning("KB_EMBED_BACKEND=%s is unavailable, embedding with torch instead: %s", self.backend, exc)
                log.debug("why the %s backend is unavailable", self.backend, exc_info=exc)
                self.fallback = SentenceTransformerEmbedder(self._name, batch_size=self.batch_size)
                return None
            self._loaded = (exported, load_export_tokenizer(exported), session)
            return self._loaded

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        loaded = self._load()
        if loaded is None:
            return self._torch().embed_documents(texts)
        exported, tokenizer, session = loaded
        return embed_texts(exported, tokenizer, session.run, texts, self.batch_size)

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]

    def count_tokens(self, text: str) -> int:
        return count_tokens(self._name, text)
