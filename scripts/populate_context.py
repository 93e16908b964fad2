"""populate-context: refresh a project's index, then print the context for a prompt.

    .venv/bin/python scripts/populate_context.py PROJECT_PATH "PROMPT" [--project NAME] [--budget TOKENS] [--task ID]

The index refresh is incremental (``knowledgebase.index.ingest.populate_project``): only new or changed files
are read and only new chunks embedded (the model loads only then). The prompt is embedded by the warm process
(``kb serve``) when it runs, so a refresh with nothing new takes well under a second. The context printed on
stdout is what an agent gets for the prompt (``knowledgebase.search.context.build_context``): the project's
code chunks and facts ranked by similarity, exact-identifier matches, confidence and recency, as Markdown that
cites file and line range or fact id and confidence, within the token budget (default ``KB_CONTEXT_BUDGET``);
it is recorded in ``context_log``. A one-line summary of the refresh goes to stderr. Exit code 1 with one line
on stderr on any error the user can fix (bad path, bad budget, database unreachable, model mismatch).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from knowledgebase.errors import InputError, KnowledgebaseError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", metavar="PROJECT_PATH", help="root folder of the project")
    parser.add_argument("prompt", metavar="PROMPT", help="the prompt to find context for")
    parser.add_argument("--project", metavar="NAME", help="project name (default: the folder's name)")
    parser.add_argument("--budget", metavar="TOKENS", type=int, help="token budget (default: KB_CONTEXT_BUDGET)")
    parser.add_argument("--task", metavar="ID", help="record the context under this task")
    return parser.parse_args(argv)


def populate_context(
    path: str, prompt: str, *, project: str | None, budget: int | None = None, task_id: str | None = None
) -> tuple[str, str]:
    """Refresh the index of ``path``; return (summary line, Markdown context for ``prompt``)."""
    from knowledgebase.config import get_settings
    from knowledgebase.db import open_database
    from knowledgebase.embedding import embedder_from_settings
    from knowledgebase.gemini.warm_embedder import query_embedder
    from knowledgebase.index.ingest import populate_project
    from knowledgebase.index.scanning import resolve_root
    from knowledgebase.search.context import build_context

    if not prompt.strip():
        raise InputError("the prompt must not be empty")
    if budget is not None and budget < 1:
        raise InputError(f"--budget must be a positive number of tokens, not {budget}")
    root = resolve_root(path)
    settings = get_settings()
    with open_database(settings) as db:
        # the indexing model loads only if something changed; the prompt is embedded by the warm
        # process when it runs (else by the fastest-starting backend, which then starts it)
        report = populate_project(db, embedder_from_settings(settings), root, project=project, settings=settings)
        pack = build_context(
            db,
            query_embedder(settings),
            prompt,
            project=report.project,
            task_id=task_id,
            budget=settings.context_budget if budget is None else budget,
        )
    summary = (
        f"{report.project}: {report.added} added, {report.changed} changed, {report.unchanged} unchanged, "
        f"{report.deleted} deleted, {sum(report.skipped_by_reason.values())} skipped; "
        f"{report.chunks_embedded} chunks embedded in {report.timings.total:.1f} s; "
        f"context {pack.token_count}/{pack.budget} tokens, {len(pack.items)} items"
    )
    return summary, pack.text or "(nothing relevant is indexed in this project yet)\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary, context = populate_context(
            args.path, args.prompt, project=args.project, budget=args.budget, task_id=args.task
        )
    except KnowledgebaseError as exc:
        print(f"populate_context: error: {exc}", file=sys.stderr)
        return 1
    print(summary, file=sys.stderr)
    print(context, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
