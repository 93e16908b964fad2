"""Markdown for ``scripts/bench.py``: the report frame, and one renderer and one headline per benchmark.

A renderer turns a benchmark's ``--json`` output into tables; when the JSON has a shape it does not know
(a script changed), the section says so and the raw JSON, always attached, still holds every number.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench import Outcome

MODE_NAMES = {
    "vector": "vector similarity only",
    "full_text": "full text only (ts_rank_cd)",
    "full": "**knowledgebase ranking** (DEFAULT_WEIGHTS)",
    "rrf": "reciprocal-rank fusion of the two (k = 60)",
    "bm25_windows": "baseline: BM25 over 40-line windows",
    "embedding_windows": "baseline: brute-force embedding over 40-line windows",
    "chroma_windows": "peer: Chroma (HNSW, cosine) over 40-line windows",
    "chroma_chunks": "peer: Chroma (HNSW, cosine) over our chunks and vectors",
}


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return [*lines, ""]


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:,.1f}"
    return str(value).replace("|", "\\|")


def _ms(value: float) -> str:
    return f"{value:,.1f} ms"


def _recall(result: Any) -> str:
    """A recall measurement of ``eval_retrieval.hnsw_recall``: HNSW forced / as the planner runs it."""
    if isinstance(result, int | float):
        return f"{result:.4f}"
    planned = result["planner"]
    exact = "" if planned["uses_hnsw"] else " (exact scan)"
    return f"{result['hnsw_forced']['recall@10_ids']:.4f} / {planned['recall@10_ids']:.4f}{exact}"


# ----- ingest ---------------------------------------------------------------------------------------


def render_ingest(d: dict[str, Any]) -> list[str]:
    cold, raw, ratio = d["cold_ingest"], d["raw_embedding"], d["pipeline_vs_raw_embedding"]
    same, edit, large = (
        d["rescan_unchanged_same_tree"],
        d["rescan_after_editing_one_function"],
        d["rescan_unchanged_large_tree"],
    )
    model = d["model"]
    stages = ", ".join(f"{k} {v} s" for k, v in cold["stages_s"].items())
    rows = [
        (
            f"cold ingest of {', '.join(cold['sources'])}: {cold['files']} files, {cold['chunks_written']} chunks",
            f"{cold['seconds']} s: {cold['files_per_s']} files/s, {cold['chunks_per_s']} chunks/s ({stages})",
            "",
        ),
        (
            f"raw embedding of the same {raw['chunks']} chunks (one call)",
            f"{raw['seconds']} s: {raw['chunks_per_s']} chunks/s",
            "",
        ),
        (
            "pipeline over raw embedding",
            f"{ratio['overhead_percent']:+.1f}% wall (CPU ratio {ratio['cpu_ratio']})",
            f"< {ratio['target_percent']}%",
        ),
        (
            f"re-scan, nothing changed ({same['files']} files)",
            f"{same['seconds']} s, {same['chunks_embedded']} chunks embedded",
            "",
        ),
        (
            f"re-scan after editing one function of {edit['file']} ({edit['chunks_in_file']} chunks in the file)",
            f"{edit['seconds']} s, {edit['changed']} file changed, {edit['chunks_embedded']} chunk(s) embedded",
            "1 chunk",
        ),
        (
            f"re-scan, nothing changed, {large['files']} files",
            f"median {large['seconds_median']} s of {large['seconds_all']} ({large['files_per_s']} files/s)",
            f"< {large['target_seconds']} s",
        ),
    ]
    intro = f"Model {model['name']} ({model['backend']}), loaded in {model['load_s']} s (not in the times)."
    return [intro, "", *table(("measurement", "result", "target"), rows)]


def headline_ingest(d: dict[str, Any]) -> str:
    cold, raw, ratio = d["cold_ingest"], d["raw_embedding"], d["pipeline_vs_raw_embedding"]
    large = d["rescan_unchanged_large_tree"]
    return (
        f"cold ingest {cold['chunks_per_s']} chunks/s vs raw embedding {raw['chunks_per_s']} "
        f"({ratio['overhead_percent']:+.1f}%); unchanged re-scan of {large['files']} files {large['seconds_median']} s"
    )


# ----- search ---------------------------------------------------------------------------------------


def render_search(d: dict[str, Any]) -> list[str]:
    efs = list(d["sizes"][0]["recall_at_10"]) if d["sizes"] else []
    rows = []
    for size in d["sizes"]:
        lat = size["latency"]
        rows.append(
            (
                f"{size['chunks']:,} ({size['files']:,} files)",
                *(_recall(size["recall_at_10"][ef]) for ef in efs),
                f"{_ms(lat['search_p50_ms'])} / {_ms(lat['search_p95_ms'])}",
                f"{_ms(lat['context_p50_ms'])} / {_ms(lat['context_p95_ms'])}",
                _ms(lat["embed_query_p50_ms"]),
            )
        )
    header = (
        "chunks",
        *(f"recall@10, {ef.replace('_', ' ')}: HNSW / as planned" for ef in efs),
        "search p50 / p95",
        "build_context p50 / p95",
        "embed query p50",
    )
    lines = [
        f"Real code, every chunk embedded with {d['model']['name']} ({d['model']['backend']}): "
        f"{', '.join(d['corpus'])}, in that order, up to each size ({d['vectors_embedded']:,} chunks embedded "
        f"in this run, the rest from the kept vectors). {d['queries']} real queries (docstring summaries of "
        f"this repository); retrieval uses ef_search {d['ef_search']}.",
        "",
        *table(header, rows),
        "Recall by id overlap with the exact top 10: with the HNSW index forced, and as the planner runs "
        "the query (it may prefer an exact scan: then 1.0). "
        "`search` and `build_context` include embedding the query; `build_context` also records the block.",
        "",
    ]
    if "kb_context_command" in d:
        cli = d["kb_context_command"]
        lines += [
            f"`kb context` as a new process (Python start, imports, model load, one context) at {cli['chunks']:,} "
            f"chunks: p50 {_ms(cli['p50_ms'])}, max {_ms(cli['max_ms'])} over {cli['runs']} run(s). The Gemini CLI "
            "hooks do not pay this: they talk to a warm process (see the hook benchmark).",
            "",
        ]
    return lines


def headline_search(d: dict[str, Any]) -> str:
    parts = []
    for size in d["sizes"]:
        recall = size["recall_at_10"][f"ef_search_{d['ef_search']}"]["hnsw_forced"]["recall@10_ids"]
        parts.append(
            f"{size['chunks']:,} chunks: recall@10 {recall:.3f}, search p95 {_ms(size['latency']['search_p95_ms'])}"
        )
    return "; ".join(parts)


# ----- hooks ----------------------------------------------------------------------------------------


def render_hooks(d: dict[str, Any]) -> list[str]:
    cold, warm, targets = d["cold_before_agent"], d["warm"], d["targets"]
    rows = [
        (event, s["n"], _ms(s["p50_ms"]), _ms(s["p95_ms"]), _ms(s["max_ms"]), _ms(s["mean_ms"]))
        for event, s in warm.items()
    ]
    return [
        f"Store: {d['store']['chunks']:,} chunks ({d['store']['database']} database). Every BeforeAgent call "
        "embeds the prompt, searches, assembles and records a context block.",
        "",
        f"Cold BeforeAgent (starts the warm process): {_ms(cold['ms'])}, hook timeout {cold['timeout_ms']} ms, "
        f"within the timeout: {_cell(cold['within_timeout'])}.",
        "",
        *table(("warm hook", "runs", "p50", "p95", "max", "mean"), rows),
        f"Targets: BeforeAgent p50 <= {targets['before_agent_p50_ms']} ms and p95 <= "
        f"{targets['before_agent_p95_ms']} ms: {'met' if d['meets_targets'] else '**missed**'}. BeforeAgent "
        f"answered with context: {d['before_agent_with_context']}.",
        "",
    ]


def headline_hooks(d: dict[str, Any]) -> str:
    before = d["warm"]["BeforeAgent"]
    return (
        f"BeforeAgent warm p50 {_ms(before['p50_ms'])}, p95 {_ms(before['p95_ms'])}; cold "
        f"{_ms(d['cold_before_agent']['ms'])}; targets {'met' if d['meets_targets'] else 'missed'}"
    )


# ----- retrieval ------------------------------------------------------------------------------------


def render_retrieval(d: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, result in d["sets"].items():
        corpus = result.get("corpus") or {}
        lines += [
            f"**{name}**: {result['queries']} queries; corpus {corpus.get('files', '?')} files, "
            f"{corpus.get('chunks', '?')} chunks.",
            "",
        ]
        rows = [
            (MODE_NAMES.get(mode, mode), m["recall@1"], m["recall@10"], m["mrr@10"])
            for mode, m in result["modes"].items()
        ]
        lines += table(("ranking", "recall@1", "recall@10", "MRR@10"), rows)
        chroma = result.get("chroma_latency") or {}
        if chroma and result.get("search_p50_ms") is not None:
            peers = ", ".join(f"{mode} {_ms(v['query_p50_ms'])}" for mode, v in chroma.items())
            lines += [
                f"Per query p50, the query vector given: ours {_ms(result['search_p50_ms'])} (search and rerank), "
                f"Chroma {peers}; embedding the query {_ms(result['embed_query_p50_ms'])}.",
                "",
            ]
    defaults = d["defaults"]
    lines += [
        f"Defaults in use: text {defaults['text']}, identifier {defaults['identifier']}, text saturation "
        f"{defaults['text_saturation']}. Best points of the weight grid (MRR@10 per set):",
        "",
    ]
    grid = [
        (
            row["text"],
            row["identifier"],
            row["text_saturation"],
            " / ".join(f"{k} {v:.3f}" for k, v in row["mrr@10"].items()),
            row["never_worse_than_vector"],
        )
        for row in d["grid"][:5]
    ]
    lines += table(("text", "identifier", "saturation", "MRR@10", "never worse than vector only"), grid)
    hnsw = [(name, _recall(result)) for name, result in d.get("hnsw", {}).items()]
    lines += table(("recall@10 against exact search", "HNSW forced / as planned"), hnsw)
    if "scale_chunks" in d and hnsw:
        lines += [
            f"The csn project shares the store with a project of {d['scale_chunks']:,} chunks: PostgreSQL scans it "
            "exactly, and forcing the HNSW index with the project filter shows what an iterative scan gives for "
            "so small a share. Recall on real code at 10k and 100k chunks is in the search benchmark.",
            "",
        ]
    if "latency" in d:
        lat = d["latency"]
        lines += [
            f"`build_context` on {d['scale_chunks']:,} chunks ({lat['prompts']} prompts, warm process): p50 "
            f"{_ms(lat['context_p50_ms'])}, p95 {_ms(lat['context_p95_ms'])}; `search` p50 "
            f"{_ms(lat['search_p50_ms'])}, p95 {_ms(lat['search_p95_ms'])}; embedding the query p50 "
            f"{_ms(lat['embed_query_p50_ms'])}.",
            "",
        ]
    return lines


def headline_retrieval(d: dict[str, Any]) -> str:
    parts = []
    for name, result in d["sets"].items():
        modes = result["modes"]
        best_baseline = max((m["mrr@10"] for k, m in modes.items() if k.endswith("_windows")), default=None)
        baseline = f", best baseline {best_baseline:.3f}" if best_baseline is not None else ""
        parts.append(f"{name} MRR@10 {modes['full']['mrr@10']:.3f}{baseline}")
    return "; ".join(parts)


# ----- coordination ---------------------------------------------------------------------------------


COORDINATION_ROWS = (
    ("audit_logging", "commands logged with their outcome", "entries", "entries_per_s"),
    ("task_claims", "task claims", "tasks", "per_s"),
    ("task_claim_complete_cycles", "task claim + complete cycles", "tasks", "per_s"),
    ("key_acquisitions_4_keys", "key acquire + release, 4 keys", "acquisitions", "per_s"),
    ("key_acquisitions_1_key", "key acquire + release, 1 contended key", "acquisitions", "per_s"),
)


def render_coordination(d: dict[str, Any]) -> list[str]:
    rows = [(label, d[key][count], d[key]["seconds"], d[key][rate]) for key, label, count, rate in COORDINATION_ROWS]
    return [
        f"{d['machine']['processes']} processes at once on {d['machine']['cpus']} CPUs; an audit entry is two rows "
        f"({d['audit_logging']['rows_per_s']} rows/s).",
        "",
        *table(("operation", "count", "seconds", "per second"), rows),
    ]


def headline_coordination(d: dict[str, Any]) -> str:
    return (
        f"{d['audit_logging']['entries_per_s']} log entries/s, {d['task_claims']['per_s']} claims/s, "
        f"{d['key_acquisitions_4_keys']['per_s']} key acquisitions/s ({d['machine']['processes']} processes)"
    )


# ----- redaction ------------------------------------------------------------------------------------


def render_redaction(d: dict[str, Any]) -> list[str]:
    c = d["corpus"]
    return [
        f"Corpus: {c['true_positives']}/{c['positive_cases']} secrets cases redacted (recall {c['recall']:.1%}), "
        f"{c['false_positives']}/{c['negative_cases']} ordinary cases changed (precision {c['precision']:.1%}).",
        "",
        *table(
            ("text", "MB", "MB/s", "MB per CPU second"),
            [(name, d["mb"][name], speed, d["mb_per_cpu_s"][name]) for name, speed in d["mb_per_s"].items()],
        ),
    ]


def headline_redaction(d: dict[str, Any]) -> str:
    c = d["corpus"]
    return (
        f"recall {c['recall']:.0%}, {c['false_positives']} false positives on the corpus; "
        f"{d['mb_per_s']['package source']:.1f} MB/s on source code"
    )


# ----- embedding ------------------------------------------------------------------------------------


def render_embedding(d: dict[str, Any]) -> list[str]:
    m, c = d["machine"], d["corpus"]
    rows = [
        (
            r["backend"],
            r["selectable_as"] or "(not offered)",
            r["chunks_per_second"],
            r["chunks_per_cpu_second"],
            r["cold_start_seconds"],
            f"{r['min_cosine']:.5f}",
            r["top10_overlap"],
            r["mrr_docstring"],
            r["mrr_humaneval"],
            r["faithful"],
        )
        for r in d["results"]
    ]
    header = (
        "backend",
        "KB_EMBED_BACKEND",
        "chunks/s",
        "chunks/CPU-s",
        "cold start s",
        "min cosine",
        "top-10 overlap",
        "MRR@10 docstrings",
        "MRR@10 HumanEval",
        "faithful",
    )
    return [
        f"{c['model']}; speed on {c['speed_chunks']} chunks of ~{c['speed_chunk_tokens_mean']} tokens, batch "
        f"{c['batch_size']}, best of {c['rounds']} rounds; fidelity on {c['queries']} queries x {c['chunks']} chunks "
        f"and {c['humaneval_pairs']} HumanEval pairs. CPU bf16: {_cell(m.get('cpu_has_bf16'))}.",
        "",
        *table(header, rows),
        f"Faithful: top-10 overlap with torch fp32 >= 0.95 and MRR@10 within 0.01. Recommended here: "
        f"`KB_EMBED_BACKEND={d['recommended']}`.",
        "",
    ]


def headline_embedding(d: dict[str, Any]) -> str:
    speed = {r["selectable_as"]: r["chunks_per_second"] for r in d["results"] if r["selectable_as"]}
    return f"recommended {d['recommended']}: {speed.get(d['recommended'])} chunks/s (torch {speed.get('torch')})"


# ----- the report -----------------------------------------------------------------------------------


def report(
    outcomes: Sequence[Outcome],
    info: dict[str, str],
    *,
    names: Sequence[str],
    pending: Sequence[str] = (),
    quick: bool,
    complete: bool,
    invocation: str,
) -> str:
    """The whole Markdown report (``names``: every benchmark there is; ``pending``: chosen, not run yet)."""
    total = sum(o.seconds for o in outcomes)
    lines = ["# Benchmarks", ""]
    if quick:
        lines += ["> **Quick run**: tiny sizes for a smoke test. These numbers say nothing about performance.", ""]
    elif not complete:
        lines += ["> **Partial run**: only some of the benchmarks.", ""]
    lines += [
        f"Produced by `{invocation}` on {info['date']} in {_duration(total)}. Reproduce with `make bench` "
        "(every benchmark, written to `docs/BENCHMARKS.md`) or `.venv/bin/python scripts/bench.py --only NAME` "
        f"(NAME: {', '.join(names)}). Each benchmark is a script under `scripts/` run as its own process with "
        "`--json`, on its own private embedded PostgreSQL; times are wall-clock, so run it on a quiet machine.",
        "",
        "## Machine",
        "",
        *table(("", ""), [(key, value) for key, value in info.items()]),
        "## Summary",
        "",
    ]
    rows = []
    for o in outcomes:
        status = "ok" if o.ok else f"**failed**: {o.error}"
        rows.append(
            (
                o.benchmark.name,
                f"`scripts/{o.benchmark.script}`",
                status,
                f"{o.seconds:.0f} s",
                _headline(o) if o.ok else "",
            )
        )
    rows += [(name, "", "not run (still running, or the run was interrupted)", "", "") for name in pending]
    lines += table(("benchmark", "script", "status", "time", "headline"), rows)
    for o in outcomes:
        lines += _section(o)
    return "\n".join(lines).rstrip() + "\n"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} minutes"


def _headline(outcome: Outcome) -> str:
    assert outcome.data is not None
    try:
        return outcome.benchmark.headline(outcome.data)
    except (KeyError, TypeError, ValueError, IndexError, StopIteration) as exc:
        return f"(unexpected JSON: {type(exc).__name__} {exc})"


def _section(outcome: Outcome) -> list[str]:
    b = outcome.benchmark
    lines = [f"## {b.title}", "", f"`{outcome.command}` ({outcome.seconds:.0f} s). {b.about}", ""]
    if not outcome.ok:
        lines += [f"**Failed: {outcome.error}.** The end of its log:", "", "```", *outcome.log_tail, "```", ""]
        return lines
    assert outcome.data is not None
    try:
        lines += b.render(outcome.data)
    except (KeyError, TypeError, ValueError, IndexError, StopIteration) as exc:
        lines += [
            f"(The JSON has a shape this report does not know: {type(exc).__name__} {exc}; see the raw JSON.)",
            "",
        ]
    raw = json.dumps(outcome.data, indent=2)
    lines += ["<details><summary>raw JSON</summary>", "", "```json", raw, "```", "", "</details>", ""]
    return lines
