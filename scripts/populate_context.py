"""populate-context: refresh a project's index, then print the context for a prompt.

    .venv/bin/python scripts/populate_context.py PROJECT_PATH "PROMPT" [--project NAME] [--limit K]

The index refresh is incremental (``knowledgebase.ingest.populate_project``): only new or changed
files are read and only new chunks embedded. The context printed on stdout is, for now, the ``--limit``
chunks of the project most similar to the prompt (cosine similarity through the HNSW index), as
Markdown citing file and line range; ranked context assembly comes from ``knowledgebase.context``.
A one-line summary of the refresh goes to stderr. Exit code 1 with one line on stderr on any error
the user can fix (bad path, database unreachable, model mismatch).
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
    parser.add_argument("--limit", metavar="K", type=int, default=5, help="chunks to print (default 5)")
    return parser.parse_args(argv)


def populate_context(path: str, prompt: str, *, project: str | None, limit: int) -> tuple[str, str]:
    """Refresh the index of ``path``; return (summary line, Markdown context for ``prompt``)."""
    from knowledgebase.config import get_settings
    from knowledgebase.db import open_database
    from knowledgebase.embedding import embedder_from_settings
    from knowledgebase.ingest import populate_project
    from knowledgebase.scanning import resolve_root
    from knowledgebase.store import nearest_chunks

    if not prompt.strip():
        raise InputError("the prompt must not be empty")
    if limit < 1:
        raise InputError(f"--limit must be at least 1, not {limit}")
    root = resolve_root(path)
    settings = get_settings()
    embedder = embedder_from_settings(settings)
    with open_database(settings) as db:
        report = populate_project(db, embedder, root, project=project, settings=settings)
        with db.connection() as conn:
            matches = nearest_chunks(conn, report.project_id, embedder.embed_query(prompt), limit)
    summary = (
        f"{report.project}: {report.added} added, {report.changed} changed, {report.unchanged} unchanged, "
        f"{report.deleted} deleted, {sum(report.skipped_by_reason.values())} skipped; "
        f"{report.chunks_embedded} chunks embedded in {report.timings.total:.1f} s"
    )
    blocks = [f"# Context for: {prompt.strip()}"]
    for match in matches:
        symbol = f" · {match.symbol}" if match.symbol else ""
        fence = "`" * max(3, _longest_backtick_run(match.content) + 1)
        blocks.append(
            f"## {match.file_path}:{match.start_line}-{match.end_line}{symbol} (similarity {match.similarity:.2f})"
            f"\n\n{fence}\n{match.content}\n{fence}"
        )
    if not matches:
        blocks.append("(nothing indexed in this project yet)")
    return summary, "\n\n".join(blocks)


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        summary, context = populate_context(args.path, args.prompt, project=args.project, limit=args.limit)
    except KnowledgebaseError as exc:
        print(f"populate_context: error: {exc}", file=sys.stderr)
        return 1
    print(summary, file=sys.stderr)
    print(context)
    return 0


if __name__ == "__main__":
    sys.exit(main())
