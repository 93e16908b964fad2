"""``kb demo``: index a real project, add a few facts, and show the ranked context for a prompt, explained."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, settings_from

if TYPE_CHECKING:
    from knowledgebase.tools.demo import DemoResult


@click.command()
@click.argument("path", required=False)
@click.option("--prompt", metavar="TEXT", help="The prompt to assemble context for ('-' reads stdin).")
@json_option
@database_url_option
def demo(path: str | None, prompt: str | None, as_json: bool, database_url: str | None) -> None:
    """Index PATH (default: this repository), add facts about it, and print the ranked context for a prompt.

    Runs `kb init` first. A second run reuses the index and the facts, so it is quick and changes nothing.
    Installed from a package, PATH defaults to the current directory if it is a git work tree.

    \b
    Examples:
      kb demo
      kb demo ~/src/myapp --prompt "where is the retry policy configured?"
    """
    from knowledgebase.cli.retrieval import read_text_argument
    from knowledgebase.tools.demo import DEFAULT_PROMPT, run_demo

    text = DEFAULT_PROMPT if prompt is None else read_text_argument(prompt)
    settings = settings_from(database_url)
    if as_json:
        result = run_demo(settings, path=path, prompt=text)
        print_json(_result_json(result))
        return
    from knowledgebase.cli.populate import _progress_bar

    with _progress_bar() as update:
        result = run_demo(settings, path=path, prompt=text, progress=update)
    _print_result(result)


def _result_json(result: DemoResult) -> dict[str, Any]:
    from knowledgebase.util.jsonable import to_jsonable

    seeded = result.seeded
    context = result.context.to_json()
    for item, data in zip(result.context.items, context["items"], strict=True):
        data["explain"] = item.parts.explain()
    return {
        "root": str(result.root),
        "project": seeded.populate.project,
        "populate": to_jsonable(seeded.populate),
        "facts": to_jsonable(list(seeded.facts)),
        "facts_added": seeded.facts_added,
        "skipped_facts": to_jsonable(list(seeded.skipped_facts)),
        "prompt": result.prompt,
        "context": context,
    }


def _print_result(result: DemoResult) -> None:
    report = result.seeded.populate
    click.echo(
        click.style(f"Indexed {report.project}", bold=True)
        + f" ({report.root}): {report.files_indexed} files; {report.added} added, {report.changed} changed, "
        f"{report.unchanged} unchanged, {report.deleted} deleted; {report.chunks_embedded} chunks embedded"
        + (f", {report.chunks_reused} reused" if report.chunks_reused else "")
        + f" in {report.timings.total:.1f} s"
    )
    seeded = result.seeded
    click.echo(
        click.style("Facts", bold=True)
        + f": {len(seeded.facts)} recorded ({seeded.facts_added} new this run), with their sources:"
    )
    for fact in seeded.facts:
        click.echo(f"  #{fact.id} {fact.fact_label} (confidence {fact.confidence_score:.2f}): {fact.source_file_path}")
    for skipped in seeded.skipped_facts:
        click.echo(f"  skipped {skipped.label!r}: {skipped.reason}")
    click.echo(click.style("\nPrompt", bold=True) + f": {result.prompt}\n")
    pack = result.context
    if not pack.text:
        click.echo("No context: nothing indexed is relevant to this prompt.")
        return
    click.echo(pack.text)
    click.echo(
        click.style(f"Why these {len(pack.items)} items", bold=True)
        + f" ({pack.token_count} of {pack.budget} tokens; score = relevance x confidence x recency factors):"
    )
    for rank, item in enumerate(pack.items, start=1):
        cut = " (cut to fit)" if item.truncated else ""
        click.echo(f"{rank:>2}. {item.citation}{cut}\n    {item.parts.explain()}")
    click.echo('\nNext: kb context "your prompt"; kb search "some words" --explain; kb fact add LABEL VALUE')
