"""Every command's --help has an example and documents every option; internal commands are listed apart."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from knowledgebase.cli import COMMANDS, INTERNAL_COMMANDS, cli


def _walk(command: click.Command, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        ctx = click.Context(command, info_name=path[-1])
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            yield from _walk(sub, (*path, name))


EVERY_COMMAND = list(_walk(cli, ("kb",)))


def test_the_walk_covers_every_registered_command() -> None:
    top = {path[1] for path, _ in EVERY_COMMAND if len(path) == 2}
    assert top == set(COMMANDS) and len(EVERY_COMMAND) > 40


@pytest.mark.parametrize(("path", "command"), EVERY_COMMAND, ids=[" ".join(p) for p, _ in EVERY_COMMAND])
def test_help_has_an_example_and_every_option_is_explained(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*path[1:], "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`{' '.join(path)} --help` shows no example"
    undocumented = [p.name for p in command.params if isinstance(p, click.Option) and not p.hidden and not p.help]
    assert undocumented == [], f"`{' '.join(path)}` options without help: {undocumented}"


def test_internal_commands_are_listed_apart() -> None:
    text = CliRunner().invoke(cli, ["--help"]).output
    people, _, internal = text.partition("Started by Gemini CLI (internal):")
    assert internal, text
    listed = {line.split()[0] for line in internal.splitlines() if line.startswith("  ")}
    assert listed == set(INTERNAL_COMMANDS)
    assert not any(f"\n  {name} " in people for name in INTERNAL_COMMANDS)
    assert "\n  projects " in people and "\n  log " in people


def test_hook_help_says_what_install_writes() -> None:
    text = CliRunner().invoke(cli, ["hook", "--help"]).output
    for written in ("settings.json", "knowledgebase-EVENT", "hook_client", "mcpServers.knowledgebase", "backup"):
        assert written in text
