"""``kb run-gemini PROMPT``: answer a prompt with Gemini (CLI or SDK) using a pooled key, on record."""

from __future__ import annotations

import click

from knowledgebase.cli._output import json_option, print_json
from knowledgebase.cli._store import database_url_option, settings_from


@click.command("run-gemini")
@click.argument("prompt")
@click.option(
    "--via",
    type=click.Choice(["cli", "sdk"]),
    default="cli",
    show_default=True,
    help="Gemini CLI headless (`gemini -p ... -o json`) or the google-genai SDK.",
)
@click.option("--task", "task_id", metavar="ID", help="Log the exchange under this task.")
@click.option("--project", metavar="NAME", help="Build the context from this project.")
@click.option("--model", help="Model name (default: KB_GEMINI_MODEL).")
@click.option("--no-context", is_flag=True, help="Send the prompt without context from the store.")
@click.option("--budget", type=click.IntRange(min=1), help="Token budget of the context (default: KB_CONTEXT_BUDGET).")
@click.option(
    "--attempts",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Requests to try, switching keys after a 429.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=300,
    show_default=True,
    help="Seconds one request may take.",
)
@click.option(
    "--gemini-arg",
    "extra_args",
    multiple=True,
    metavar="ARG",
    help="Extra argument for the Gemini CLI (repeatable), e.g. --gemini-arg=--yolo.",
)
@database_url_option
@json_option
def run_gemini(
    prompt: str,
    via: str,
    task_id: str | None,
    project: str | None,
    model: str | None,
    no_context: bool,
    budget: int | None,
    attempts: int,
    timeout: float,
    extra_args: tuple[str, ...],
    database_url: str | None,
    as_json: bool,
) -> None:
    """Answer PROMPT with Gemini using a key from the pool (`kb keys add`); print the answer.

    The prompt, the answer and the token usage are logged; a rate-limited key cools down and the
    request moves to another key.

    \b
    Example:
      kb run-gemini "Summarise README.md" --task T-42
    """
    from knowledgebase.db import open_database
    from knowledgebase.gemini.runner import run_gemini_command

    settings = settings_from(database_url)
    with open_database(settings) as db:
        run = run_gemini_command(
            db,
            prompt,
            settings=settings,
            via=via,
            task_id=task_id,
            project=project,
            model=model,
            use_context=not no_context,
            context_budget=budget,
            timeout=timeout,
            max_attempts=attempts,
            extra_args=extra_args,
        )
    if as_json:
        print_json(run)
    else:
        click.echo(run.response)
