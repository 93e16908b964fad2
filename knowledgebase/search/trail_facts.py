"""Facts learned from the audit trail: what one session's shell commands showed, proposed when it ends.

``propose_session_facts(db, embedder, task_id)`` (SessionEnd, ``knowledgebase.gemini.hooks``) reads the
shell commands of a session task in the order they ran and proposes (``knowledgebase.facts.propose_fact``:
below the context cutoff until a later session proposes the same or someone confirms it):

- the test, build, lint and type-check commands that worked (``command_kind`` reads the kind from the
  command's text with the small table ``COMMAND_KINDS``): "test command: `make test`";
- a command X that failed, then worked after a different command Y succeeded in between: "before
  `npm test`: `npm test` needs `npm ci` first" (Y is the last such command that is not only a look
  around: ``ls``, ``cat``, ``git status``...);
- a command that failed the same way (same first error line) ``REPEATS`` times or more and did not
  work later in the session: "known failure of `make deploy`: fails with: ...".

Command texts come from ``command_log`` (redacted when logged) and are redacted again by ``facts``. A
session ending twice proposes nothing new: each session counts once per fact.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg

from knowledgebase import store
from knowledgebase.db import Database
from knowledgebase.embedding import Embedder
from knowledgebase.facts import Fact, FactSource, propose_fact
from knowledgebase.search.commands import OUTPUT_CHARS, first_error_line

# (label, pattern for one simple command, wrappers such as `uv run` and paths to the program taken
# off); the first label whose pattern matches a part of the command wins: `make test` is a test
# command, a plain `make` a build
COMMAND_KINDS: tuple[tuple[str, str], ...] = (
    (
        "test command",
        r"(pytest|py\.test|tox|nox|ctest|rspec|jest|vitest|phpunit)\b|python3? -m (pytest|unittest)\b"
        r"|make (test|check)\b|(npm|yarn|pnpm|bun) (run )?test\b|(cargo|go|mvn|gradlew?|mix|dotnet) test\b",
    ),
    (
        "lint command",
        r"(ruff|flake8|pylint|eslint|golangci-lint|shellcheck|rubocop|lint-imports)\b|make lint\b"
        r"|(npm|yarn|pnpm) (run )?lint\b|cargo clippy\b",
    ),
    ("type check command", r"(mypy|pyright|tsc)\b|(npm|yarn|pnpm) (run )?(typecheck|type-check)\b"),
    (
        "build command",
        r"make(?! (clean|distclean|install|help)\b)\b|(npm|yarn|pnpm) (run )?build\b|(cargo|go|dotnet|zig) build\b"
        r"|mvn (package|install)\b|gradlew? build\b|python3? -m build\b|cmake --build\b",
    ),
)
_KINDS = tuple((label, re.compile(pattern)) for label, pattern in COMMAND_KINDS)
# commands that only look around: never "what made it work"
_LOOKS = re.compile(
    r"(ls|cat|head|tail|less|more|grep|rg|find|pwd|cd|echo|printf|which|type|wc|file|stat|tree|true|sleep)\b"
    r"|git (status|diff|log|show|branch)\b"
)
_WRAPPERS = re.compile(
    r"^(?:(?:sudo|time|env|nice|npx|(?:uv|poetry|pipenv|hatch|pdm) run|bundle exec|pnpm exec)\s+|[A-Za-z_]\w*=\S*\s+)+"
)
_SEPARATORS = re.compile(r"&&|\|\||[;|\n]")
SESSION_COMMANDS = 500  # of a session's shell commands read
MAX_COMMAND_CHARS = 200  # longer commands (scripts pasted inline) are not proposed
PER_KIND = 2  # distinct commands of one kind proposed per session, the most often run first
REPEATS = 2  # failures the same way that make a known failure


def simple_commands(command: str) -> Iterator[str]:
    """The parts of a shell command line (split at ``&&``, ``||``, ``;``, ``|``), each without leading
    variable assignments and wrappers (``sudo``, ``uv run``...) and with the program's directory taken off."""
    for part in _SEPARATORS.split(command):
        words = _WRAPPERS.sub("", " ".join(part.split())).split(" ", 1)
        if words[0]:
            yield " ".join([words[0].rsplit("/", 1)[-1], *words[1:]])


def command_kind(command: str) -> str | None:
    """The fact label of a command by its text ("test command", "lint command", "type check command",
    "build command"), or None for anything else."""
    parts = list(simple_commands(command))
    return next((label for label, pattern in _KINDS if any(pattern.match(p) for p in parts)), None)


def _may_fix(candidate: str, failed: str) -> bool:
    """Whether ``candidate`` could be what made ``failed`` work: not a look around, not the same command
    with other arguments, not another command of its kind (`pytest -x tests/a.py` for `pytest`)."""
    if all(_LOOKS.match(p) for p in simple_commands(candidate)):
        return False
    if candidate.startswith(failed) or failed.startswith(candidate):
        return False
    kind = command_kind(failed)
    return kind is None or command_kind(candidate) != kind


@dataclass(frozen=True)
class Proposal:
    """A fact the trail suggests, with the command it was learned from."""

    label: str
    value: str
    extracted_from: str
    command_id: int


@dataclass(frozen=True)
class _Run:
    id: int
    command: str  # whitespace collapsed
    success: bool | None
    error: str | None


def session_proposals(runs: list[store.PastCommand], task_id: str) -> list[Proposal]:
    """What the shell commands ``runs`` of one task (oldest first) suggest (see the module)."""
    seq = [_Run(r.id, " ".join(r.command.split()), r.success, _error(r)) for r in runs]
    seq = [r for r in seq if r.command and len(r.command) <= MAX_COMMAND_CHARS and "`" not in r.command]
    return [*_worked(seq, task_id), *_fixes(seq, task_id), *_known_failures(seq, task_id)]


def _error(row: store.PastCommand) -> str | None:
    """A failure's first error line (else its exit code); None for a command that did not fail."""
    if row.success is not False:
        return None
    found = first_error_line(row.stderr_head, row.stderr_tail, row.stdout_head, row.stdout_tail, row.error)
    return found or f"exit {row.return_code}"


def _worked(seq: list[_Run], task_id: str) -> list[Proposal]:
    worked = [r for r in seq if r.success]
    counts = Counter(r.command for r in worked)
    last = {r.command: r for r in worked}
    by_kind: dict[str, list[str]] = {}
    for command in sorted(counts, key=lambda c: (-counts[c], -last[c].id)):
        if (kind := command_kind(command)) is not None:
            by_kind.setdefault(kind, []).append(command)
    return [
        Proposal(
            kind, command, f"trail of {task_id}: `{command}` worked (command #{last[command].id})", last[command].id
        )
        for kind, commands in by_kind.items()
        for command in commands[:PER_KIND]
    ]


def _fixes(seq: list[_Run], task_id: str) -> list[Proposal]:
    """X failed, Y worked (the last command in between that may have fixed it: ``_may_fix``), then X worked."""
    found: dict[str, Proposal] = {}
    for i, run in enumerate(seq):
        if not run.success or run.command in found:
            continue
        failures = [j for j in range(i) if seq[j].command == run.command and seq[j].success is False]
        if not failures:
            continue
        failed = seq[failures[-1]]
        between = seq[failures[-1] + 1 : i]
        fix = next((r for r in reversed(between) if r.success and _may_fix(r.command, run.command)), None)
        if fix is None:
            continue
        found[run.command] = Proposal(
            f"before `{run.command}`",
            f"`{run.command}` needs `{fix.command}` first",
            f"trail of {task_id}: `{run.command}` failed ({failed.error}), then `{fix.command}` worked, then"
            f" `{run.command}` worked (commands #{failed.id}, #{fix.id}, #{run.id})",
            fix.id,
        )
    return list(found.values())


def _known_failures(seq: list[_Run], task_id: str) -> list[Proposal]:
    """Commands that failed the same way ``REPEATS`` times or more and never worked after."""
    proposals = []
    failures = Counter((r.command, r.error) for r in seq if r.success is False)
    for (command, error), count in failures.items():
        last = max(i for i, r in enumerate(seq) if r.command == command and r.success is False)
        if count < REPEATS or any(r.success and r.command == command for r in seq[last:]):
            continue
        proposals.append(
            Proposal(
                f"known failure of `{command}`",
                f"`{command}` fails with: {error}",
                f"trail of {task_id}: `{command}` failed {count} times the same way (last: command #{seq[last].id})",
                seq[last].id,
            )
        )
    return proposals


def _task_project(conn: psycopg.Connection, task: store.Task) -> str | None:
    """The task's project; for a session opened while the database was down (no project recorded), the
    project whose root holds the session's working directory."""
    if task.project_id is not None:
        return store.get_project_by_id(conn, task.project_id).name
    cwd = task.context.get("cwd")
    found = store.project_for_path(conn, os.path.realpath(cwd)) if isinstance(cwd, str) and cwd else None
    return found.name if found is not None else None


def propose_session_facts(db: Database, embedder: Embedder, task_id: str) -> list[Fact]:
    """Propose the facts the shell commands of the session task ``task_id`` suggest, in its project;
    returns the proposals this session now stands behind (none for a task of no project; running it
    again returns the same ones and changes nothing)."""
    with db.connection() as conn:
        task = store.find_task(conn, task_id)
        project = _task_project(conn, task) if task is not None else None
        if project is None:
            return []
        runs = store.list_task_commands(
            conn, task_id, limit=SESSION_COMMANDS, head_chars=OUTPUT_CHARS, tail_chars=OUTPUT_CHARS
        )
    learned = []
    for proposal in session_proposals(runs, task_id):
        fact = propose_fact(
            db,
            embedder,
            label=proposal.label,
            value=proposal.value,
            project=project,
            task_id=task_id,
            extracted_from=proposal.extracted_from,
            source=FactSource.from_command(proposal.command_id),
        )
        if fact is not None and fact.proposed and task_id in fact.proposed_in:
            learned.append(fact)
    return learned
