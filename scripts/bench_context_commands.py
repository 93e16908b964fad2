"""What "Commands run before" and "who is doing what" cost a context block: time and tokens.

    .venv/bin/python scripts/bench_context_commands.py [--commands 500] [--runs 3] [--database-url URL]

Indexes ``knowledgebase/search`` of this repository with the real model into a private embedded
PostgreSQL (or ``--database-url``, a dedicated database), logs ``--commands`` shell commands (a fifth
of them failures with a traceback, over a few dozen distinct commands, in tasks of 20), then builds
the context of ten prompts ``--runs`` times each, with past commands and without, and prints the
p50/p95 of each and the share of the budget the commands take. The first run of each prompt embeds
the commands' readings; later ones find them in the process's cache, as the warm process does.

Then other agents' work is added (every indexed file written lately by another task, and running tasks
titled like some prompts) and the blocks are built again with it: the share of the budget the "Other
agents at work" section and the notes on changed files take, and the time with it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench_search import database  # a migrated URL, or a private embedded server (scripts/ is on sys.path)

REPO = Path(__file__).resolve().parent.parent
PROMPTS = [
    "why do the unit tests fail?",
    "how do I run the linter?",
    "how is the context budget counted in tokens?",
    "the build fails with an import error",
    "how are past commands shown in the context?",
    "start the database server",
    "where is retrieval scored?",
    "install the dependencies",
    "how do I run the type checker?",
    "which migration is the newest?",
]
COMMANDS = [
    "pytest tests/",
    "make test",
    "make lint",
    "ruff check knowledgebase",
    "mypy knowledgebase",
    "git status",
    "git diff --stat",
    "ls -la",
    "pip install -e .",
    "kb db start",
    "alembic upgrade head",
    "python -m pytest -x tests/test_context.py",
    "npm ci",
    "npm test",
    "docker compose up -d",
    "du -sh .venv",
]
TRACEBACK = (
    'Traceback (most recent call last):\n  File "x.py", line 1, in <module>\n'
    "ImportError: cannot import name 'thing{}' from 'app'\n"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commands", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database-url")
    args = parser.parse_args()

    from knowledgebase import store
    from knowledgebase.config import Settings
    from knowledgebase.coordination import audit, taskqueue
    from knowledgebase.db import Database
    from knowledgebase.embedding import SentenceTransformerEmbedder
    from knowledgebase.index.ingest import populate_project
    from knowledgebase.ranking import DEFAULT_WEIGHTS
    from knowledgebase.search.activity import active_work
    from knowledgebase.search.commands import HEADING, past_command_hits
    from knowledgebase.search.context import build_context

    embedder = SentenceTransformerEmbedder()
    embedder.embed_query("warm up")
    with database(args.database_url) as url, Database(url, max_size=2) as db:
        settings = Settings(home=Path(tempfile.gettempdir()) / "kb-bench-commands-home", database_url=url)
        populate_project(db, embedder, REPO / "knowledgebase" / "search", project="bench-commands", settings=settings)
        with db.connection() as conn:
            pid = store.get_project(conn, "bench-commands").id
        for i in range(args.commands):
            command = COMMANDS[i % len(COMMANDS)]
            failed = i % 5 == 0
            audit.log_command(
                db,
                command=command,
                task_id=f"bench-task-{i // 20}",
                agent_id=f"agent-{i % 3}",
                project_id=pid,
                return_code=1 if failed else 0,
                stdout=TRACEBACK.format(i % 7) if failed else "ok\n",
            )
        timings: dict[bool, list[float]] = {True: [], False: []}
        shares: list[float] = []
        for run in range(args.runs):
            for prompt in PROMPTS:
                for with_commands in (True, False):
                    started = time.perf_counter()
                    pack = build_context(
                        db, embedder, prompt, project="bench-commands", record=False, commands=with_commands
                    )
                    elapsed = (time.perf_counter() - started) * 1000
                    if run > 0:
                        timings[with_commands].append(elapsed)
                    if with_commands and run == 0:
                        tokens = sum(i.tokens for i in pack.items if i.kind == "command")
                        shares.append(tokens / pack.budget)
                        shown = sum(1 for i in pack.items if i.kind == "command")
                        print(f"{prompt!r}: {shown} commands, {tokens} tokens, section={HEADING in pack.text}")
        alone: list[float] = []
        for _ in range(args.runs):
            for prompt in PROMPTS:
                started = time.perf_counter()
                past_command_hits(db, embedder, prompt, project="bench-commands", weights=DEFAULT_WEIGHTS)
                alone.append((time.perf_counter() - started) * 1000)
        p50, p95 = statistics.median(alone), pct(alone, 0.95)
        print(f"past commands alone (embedding the prompt itself): p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        for label, key in (("with commands", True), ("without", False)):
            values = timings[key] or [float("nan")]
            print(f"{label:>14}: p50 {statistics.median(values):.1f} ms, p95 {pct(values, 0.95):.1f} ms (warm runs)")
        print(f"commands' share of the budget: mean {statistics.mean(shares):.1%}, max {max(shares):.1%}")

        with db.connection() as conn:
            paths = [f.path for f in store.list_files(conn, pid)]
        for n, path in enumerate(paths):
            audit.log_command(
                db,
                command=f"write {path}",
                kind="tool",
                tool_name="write_file",
                task_id=f"bench-task-{n}",
                agent_id=f"agent-{n % 3}",
                project_id=pid,
                files_written=[path],
            )
        for n, title in enumerate(["fix the failing unit tests", "speed up retrieval scoring", "upgrade the linter"]):
            taskqueue.open_task(db, f"bench-running-{n}", owner=f"agent-{n}", project_id=pid, title=title)
        section: list[float] = []
        notes: list[float] = []
        with_activity: list[float] = []
        for run in range(args.runs):
            for prompt in PROMPTS:
                started = time.perf_counter()
                work = active_work(db, "bench-commands", exclude_task_id="bench-me")
                pack = build_context(db, embedder, prompt, project="bench-commands", record=False, activity=work)
                if run > 0:
                    with_activity.append((time.perf_counter() - started) * 1000)
                    continue
                section.append(sum(i.tokens for i in pack.items if i.kind == "activity") / pack.budget)
                noted = [line for line in pack.text.splitlines() if line.startswith("**Note:**")]
                notes.append(sum(embedder.count_tokens(line) for line in noted) / pack.budget)
        values = with_activity or [float("nan")]
        print(f" with activity: p50 {statistics.median(values):.1f} ms, p95 {pct(values, 0.95):.1f} ms (warm runs)")
        print(
            f"'Other agents at work' share of the budget: mean {statistics.mean(section):.1%}, max {max(section):.1%};"
            f" notes on changed files: mean {statistics.mean(notes):.1%}, max {max(notes):.1%}"
        )


if __name__ == "__main__":
    sys.exit(main())
