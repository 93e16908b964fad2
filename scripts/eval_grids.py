"""The weight grids of ``scripts/eval_retrieval.py`` (``--grid lexical|roles|bm25``): the points each grid
scores, and how its results are chosen from or printed. Each grid point's results are
``results[set]["grid"][g]``, the metrics of grid point ``g`` on that set."""

from __future__ import annotations

import io
import itertools
import statistics
import sys
from typing import Any

from knowledgebase.ranking import DEFAULT_WEIGHTS, RankingWeights

GRID_TEXT = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5)


GRID_IDENTIFIER = (0.0, 0.05, 0.1, 0.2)


GRID_SATURATION = (0.05, 0.1, 0.3)


GRID_BM25 = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6)


GRID_BM25_SATURATION = (0.0, 0.25, 0.5, 1.0)


def weight_grid() -> list[RankingWeights]:
    return [
        DEFAULT_WEIGHTS.with_(chunk_text=t, identifier=i, text_saturation=s)
        for t, i, s in itertools.product(GRID_TEXT, GRID_IDENTIFIER, GRID_SATURATION)
    ]


def choose(grid: list[RankingWeights], results: dict[str, dict]) -> list[dict[str, Any]]:
    """Every grid point with its MRR@10 per set, best mean MRR over csn and humaneval first, keeping only
    points that are never below vector only on either of them."""
    rows = []
    for g, weights in enumerate(grid):
        mrr = {name: r["grid"][g]["mrr@10"] for name, r in results.items()}
        never_worse = all(mrr[n] >= results[n]["modes"]["vector"]["mrr@10"] - 1e-9 for n in ("csn", "humaneval"))
        rows.append(
            {
                "text": weights.chunk_text_weight,
                "identifier": weights.identifier,
                "text_saturation": weights.text_saturation,
                "mrr@10": mrr,
                "metrics": {name: r["grid"][g] for name, r in results.items()},
                "mean_mrr@10": statistics.mean(mrr[n] for n in ("csn", "humaneval")),
                "never_worse_than_vector": never_worse,
            }
        )
    return sorted(rows, key=lambda r: (not r["never_worse_than_vector"], -r["mean_mrr@10"]))


def role_grid() -> list[RankingWeights]:
    """Role priors to fit: the penalty of tests, one of docs and examples, one of changelogs, config,
    generated and vendored files, and the bonus of a role the query asks for."""
    rows = []
    for test, docs, minor, bonus in itertools.product(
        (0.0, 0.05, 0.08, 0.12, 0.16), (0.0, 0.05, 0.08, 0.12), (0.05, 0.1, 0.15), (0.0, 0.05, 0.1)
    ):
        priors = (
            ("test", test),
            ("docs", docs),
            ("example", docs),
            ("changelog", minor),
            ("config", minor),
            ("generated", minor),
            ("vendored", minor),
        )
        rows.append(DEFAULT_WEIGHTS.with_(role_penalties=priors, asked_role_bonus=bonus))
    return rows


def print_role_grid(grid: list[RankingWeights], results: dict[str, dict]) -> None:
    names = [n for n in results if not n.startswith("questions-") and n != "identifiers"]
    rows = []
    for g, weights in enumerate(grid):
        mrr = {n: results[n]["grid"][g]["mrr@10"] for n in names}
        top3 = results["questions"]["grid"][g]["recall@3"] if "questions" in results else 0.0
        rows.append((statistics.mean(mrr.values()), top3, weights, mrr))
    # the defaults: the highest questions top-3 rate, then the best mean MRR@10 over the sets
    rows.sort(key=lambda r: (-round(r[1], 6), -r[0]))
    out = io.StringIO()
    out.write("\nrole grid (penalty of tests, of docs/examples, of changelog/config/generated/vendored, bonus")
    out.write(" of an asked role -> mean MRR@10 | per set | questions top-3):\n")
    for mean, top3, weights, mrr in rows[:12]:
        priors = dict(weights.role_penalties)
        per_set = " ".join(f"{n} {v:.3f}" for n, v in mrr.items())
        out.write(
            f"  {priors['test']:<5} {priors['docs']:<5} {priors['changelog']:<5} {weights.asked_role_bonus:<5}"
            f" -> {mean:.3f} | {per_set} | top3 {top3:.3f}\n"
        )
    print(out.getvalue(), file=sys.stderr)


def bm25_grid() -> list[RankingWeights]:
    """BM25's weight and saturation, with the chunks' ts_rank_cd bonus at 0 or 0.1 and the identifier
    bonus at 0 or 0.1 (role priors at their defaults); the defaults first."""
    rows = [DEFAULT_WEIGHTS]
    grid = itertools.product(GRID_BM25, GRID_BM25_SATURATION, (0.0, 0.1), (0.0, 0.1))
    for bm25, saturation, text, identifier in grid:
        if bm25 == 0 and saturation > 0:
            continue  # the same ranking as saturation 0
        weights = DEFAULT_WEIGHTS.with_(bm25=bm25, bm25_saturation=saturation, chunk_text=text, identifier=identifier)
        if weights != DEFAULT_WEIGHTS:
            rows.append(weights)
    return rows


def print_bm25_grid(grid: list[RankingWeights], results: dict[str, dict]) -> None:
    """The BM25 grid, best first: every set at least at vector only, then the best mean MRR@10 over
    the summary sets and the questions (79 questions move the top-3 rate by 1.3 points each: too coarse
    to choose by)."""
    names = [n for n in results if not n.startswith("questions-")]
    rows = []
    for g, weights in enumerate(grid):
        mrr = {n: results[n]["grid"][g]["mrr@10"] for n in names}
        top3 = results["questions"]["grid"][g]["recall@3"] if "questions" in results else 0.0
        floor = all(mrr[n] >= results[n]["modes"]["vector"]["mrr@10"] - 1e-9 for n in names)
        rows.append((floor, statistics.mean(mrr.values()), top3, weights, mrr))
    rows.sort(key=lambda r: (not r[0], -r[1]))
    out = io.StringIO()
    out.write("\nbm25 grid (bm25 weight, saturation, ts_rank_cd weight, identifier -> mean MRR@10 | per set | ")
    out.write("questions top-3; * below vector only on a set):\n")
    for floor, mean, top3, weights, mrr in rows[:20]:
        per_set = " ".join(f"{n} {v:.3f}" for n, v in mrr.items())
        out.write(
            f"  {'' if floor else '*'}{weights.bm25:<5} {weights.bm25_saturation:<5} {weights.chunk_text_weight:<5}"
            f" {weights.identifier:<5} -> {mean:.3f} | {per_set} | top3 {top3:.3f}\n"
        )
    default = next(r for r in rows if r[3] == DEFAULT_WEIGHTS)
    out.write(f"  defaults: -> {default[1]:.3f} | top3 {default[2]:.3f}\n")
    print(out.getvalue(), file=sys.stderr)
