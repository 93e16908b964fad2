"""The checks of ``scripts/bench_fleet.py``: nothing lost, nothing twice, no key over its limit.

Read from the primary after a run, by the markers, session ids, task ids and key provider of its
``FleetPlan``; plain queries of their own, so the product's code does not check itself."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import timedelta
from typing import Any

from fleet_agent import CALLS_PER_TURN, FleetPlan

WINDOW = timedelta(seconds=60)

LOGGED_ROWS = """
SELECT l.id, l.kind, COALESCE(l.prompt, ''), COALESCE(l.command, ''), COALESCE(l.response, '')
  FROM command_log l WHERE l.session_id = ANY(%s)
"""
OUTPUT_ROWS = """
SELECT o.command_log_id, COALESCE(o.stdout, '') FROM command_output o
  JOIN command_log l ON l.id = o.command_log_id WHERE l.session_id = ANY(%s)
"""
USAGE_ROWS = """
SELECT u.command_log_id FROM usage_log u JOIN command_log l ON l.id = u.command_log_id WHERE l.session_id = ANY(%s)
"""
CONTEXT_ROWS = "SELECT prompt FROM context_log WHERE task_id = ANY(%s)"
TASK_ROWS = "SELECT id, status, attempts, history FROM tasks WHERE id = ANY(%s)"
GRANT_ROWS = """
SELECT k.name, k.rpm_limit, k.tpm_limit, g.granted_at, g.tokens, g.released_at
  FROM api_key_grants g JOIN api_keys k ON k.id = g.api_key_id
 WHERE k.provider = %s ORDER BY g.granted_at, g.id
"""


def _count(expected: Counter[str], found: Counter[str], unmarked: int = 0) -> dict[str, Any]:
    missing = sum(max(0, n - found[m]) for m, n in expected.items())
    extra = sum(max(0, n - expected[m]) for m, n in found.items()) + unmarked
    rows = sum(found.values()) + unmarked
    return {
        "expected": sum(expected.values()),
        "rows": rows,
        "missing": missing,
        "duplicated_or_unexpected": extra,
        "ok": missing == 0 and extra == 0,
    }


def check(url: str, plan: FleetPlan, reports: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The invariants of a finished run, read from the primary (module docstring)."""
    from knowledgebase.db import connect

    sessions = [plan.session_id(a) for a in range(plan.agents)]
    markers = plan.markers()
    once = Counter(markers)

    def marked(text: str) -> str | None:
        found = plan.marker_pattern.search(text)
        return found.group(0) if found else None

    with connect(url) as conn:
        logged = conn.execute(LOGGED_ROWS, (sessions,)).fetchall()
        outputs = conn.execute(OUTPUT_ROWS, (sessions,)).fetchall()
        usage = conn.execute(USAGE_ROWS, (sessions,)).fetchall()
        contexts = conn.execute(CONTEXT_ROWS, ([f"gemini-{s}" for s in sessions],)).fetchall()
        tasks = conn.execute(TASK_ROWS, (plan.task_ids(),)).fetchall()
        grants = conn.execute(GRANT_ROWS, (plan.provider,)).fetchall()
    by_id: dict[int, str | None] = {}
    prompts, commands, responses = Counter[str](), Counter[str](), Counter[str]()
    unmarked = 0
    for row_id, kind, prompt, command, response in logged:
        text, counter = (
            (command, commands) if kind == "shell" else (prompt, prompts) if prompt else (response, responses)
        )
        by_id[row_id] = marker = marked(text)
        if marker is None:
            unmarked += 1
        else:
            counter[marker] += 1
    shell_ids = {i for i, kind, *_ in logged if kind == "shell"}
    output_markers = Counter(m for i, out in outputs if i in shell_ids and (m := marked(out)) and m == by_id[i])
    response_ids = {i for i, kind, prompt, command, response in logged if kind == "prompt" and response}
    usage_markers = Counter(m for (i,) in usage if i in response_ids and (m := by_id.get(i)))
    context_markers = Counter(m for (p,) in contexts if (m := marked(p)))
    result = {
        "command_log prompts (BeforeAgent)": _count(once, prompts),
        "command_log shell commands (AfterTool)": _count(once, commands),
        "command_log responses (AfterAgent)": _count(once, responses),
        "command_log rows without a marker": _count(Counter(), Counter(), unmarked),
        "command_output (AfterTool outputs)": _count(once, output_markers, len(outputs) - sum(output_markers.values())),
        "usage_log (AfterAgent usage)": _count(
            Counter({m: CALLS_PER_TURN for m in markers}), usage_markers, len(usage) - sum(usage_markers.values())
        ),
        "context_log (BeforeAgent context)": _count(
            once, context_markers, len(contexts) - sum(context_markers.values())
        ),
    }
    result["tasks done exactly once"] = _tasks(plan, tasks, reports)
    result["keys within limits in every 60 s window"] = _keys(plan, grants, reports)
    return result


def _tasks(plan: FleetPlan, rows: list[Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    completions = Counter(t for r in reports for t in r["done"])
    expected = len(plan.task_ids())
    done = sum(1 for _, status, _, _ in rows if status == "done")
    claimed_once = sum(1 for _, _, attempts, _ in rows if attempts == 1)
    done_in_history = sum(1 for *_, history in rows if sum(h.get("status") == "done" for h in history) == 1)
    reported_once = sum(1 for t in plan.task_ids() if completions[t] == 1)
    return {
        "expected": expected,
        "done": done,
        "claimed_once": claimed_once,
        "done_once_in_history": done_in_history,
        "completed_by_exactly_one_agent": reported_once,
        "completions_reported": sum(completions.values()),
        "ok": expected == done == claimed_once == done_in_history == reported_once == sum(completions.values()),
    }


def _keys(plan: FleetPlan, rows: list[Any], reports: list[dict[str, Any]]) -> dict[str, Any]:
    per_key: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        per_key[row[0]].append(row)
    worst_requests = worst_tokens = 0
    for grants in per_key.values():
        start = 0
        for end, (_, _, _, granted_at, _, _) in enumerate(grants):  # the window (granted_at - 60 s, granted_at]
            while grants[start][3] <= granted_at - WINDOW:
                start += 1
            worst_requests = max(worst_requests, end - start + 1)
            worst_tokens = max(worst_tokens, sum(g[4] for g in grants[start : end + 1]))
    acquired = sum(r["grants"] for r in reports)
    released = sum(1 for row in rows if row[5] is not None)
    return {
        "keys": plan.keys,
        "rpm_limit": plan.key_rpm,
        "tpm_limit": plan.key_tpm,
        "grants": len(rows),
        "acquired_by_agents": acquired,
        "released": released,
        "max_requests_in_a_window": worst_requests,
        "max_tokens_in_a_window": worst_tokens,
        "ok": len(rows) == acquired == released == plan.agents * plan.rounds
        and worst_requests <= plan.key_rpm
        and worst_tokens <= plan.key_tpm,
    }
