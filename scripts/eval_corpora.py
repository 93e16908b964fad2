"""Corpora and query sets of ``scripts/eval_retrieval.py`` beyond the venv packages: whole repositories
(source, tests, docs, changelog, examples) and the hand-written developer questions.

- ``repo_summary_set``: a repository exported from a git snapshot, every Python docstring blanked (line
  numbers kept), queried by the summary line of the documented functions of its source package: the
  csn method on a corpus where docs and tests compete with the source, as they do for a user.
- ``dev_questions``: ``scripts/data/dev_questions.json``, questions a developer asks, each with the file and
  the definition that answers it (a qualified Python name, a Markdown/reST heading, or nothing for the
  whole file), against unmodified copies of the repositories.

Repositories come from git directories (``git archive``), so a corpus is the same at every run:
``KB_EVAL_REPOS`` names them as ``name=git-dir@commit`` pairs separated by commas, by default the
snapshots of starlette and jinja in ``/work/.mirror`` and this repository at the commit its questions
were written against. click, requests and httpx are reserved for independent checks: never add them.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

RESERVED = ("click", "requests", "httpx")
QUESTIONS_FILE = Path(__file__).resolve().parent / "data" / "dev_questions.json"
DEFAULT_REPOS = (
    "starlette=/work/.mirror/encode+starlette/repo@cb8f84f5284dc301ca7a31eb732b9e140769dd48,"
    "jinja=/work/.mirror/pallets+jinja/repo@5ef70112a1ff19c05324ff889dd30405b1002044,"
    "knowledgebase=/work/main/.git@ba66733"
)
# the source package of each repository (its documented functions make the summary-line queries)
SOURCE_DIRS = {"starlette": "starlette/", "jinja": "src/jinja2/", "knowledgebase": "knowledgebase/"}
SKIP_PARTS = (".github/", ".devcontainer/", ".ci/")


@dataclass(frozen=True)
class Repo:
    name: str
    git_dir: str
    commit: str


@dataclass(frozen=True)
class Question:
    project: str  # a repository name
    text: str
    path: str
    definition: str  # qualified name, heading, or "" for the whole file
    start: int
    end: int


def repos() -> dict[str, Repo]:
    out = {}
    for item in os.environ.get("KB_EVAL_REPOS", DEFAULT_REPOS).split(","):
        name, _, rest = item.strip().partition("=")
        git_dir, _, commit = rest.rpartition("@")
        if any(r in name.lower() for r in RESERVED):
            raise SystemExit(f"{name} is reserved for independent checks; keep it out of the eval")
        out[name] = Repo(name, git_dir, commit)
    return out


def export(repo: Repo, target: Path) -> Path:
    """The files of ``repo`` at its commit under ``target`` (once; later runs reuse them)."""
    marker = target / ".kb-eval-commit"
    if marker.exists() and marker.read_text() == repo.commit:
        return target
    target.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(
        ["git", "--git-dir", repo.git_dir, "archive", "--format=tar", repo.commit],
        check=True,
        capture_output=True,
    ).stdout
    import io

    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and not m.name.startswith(SKIP_PARTS)]
        tar.extractall(target, members=members, filter="data")
    marker.write_text(repo.commit)
    return target


def python_spans(source: str) -> dict[str, tuple[int, int]]:
    """Qualified name -> (first line incl. decorators, last line) of every function and class."""
    spans: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = ".".join((*scope, child.name))
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                spans.setdefault(name, (start, child.end_lineno or child.lineno))
                visit(child, (*scope, child.name))

    visit(ast.parse(source), ())
    return spans


_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_RST_UNDER = re.compile(r"^([=\-`:'\"~^_*+#])\1{2,}\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")


def heading_span(text: str, heading: str) -> tuple[int, int] | None:
    """Lines of the section under ``heading`` (Markdown or reST), up to the next heading of its level or
    higher (fenced code is no heading)."""
    lines = text.split("\n")
    starts: list[tuple[int, int, str]] = []  # (line, level, title)
    rst_levels: list[str] = []
    fenced = False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        match = _HEADING.match(line)
        if match:
            starts.append((i + 1, len(match.group(1)), match.group(2).strip()))
        elif _RST_UNDER.match(line) and i > 0 and lines[i - 1].strip() and not _RST_UNDER.match(lines[i - 1]):
            char = line.strip()[0]
            if char not in rst_levels:
                rst_levels.append(char)
            starts.append((i, rst_levels.index(char) + 1, lines[i - 1].strip()))
    for position, (line, level, title) in enumerate(starts):
        if title.replace("`", "").lower() == heading.replace("`", "").lower():
            later = [s for s in starts[position + 1 :] if s[1] <= level]
            end = later[0][0] - 1 if later else len(lines)
            return line, max(line, end)
    return None


def dev_questions(roots: dict[str, Path]) -> list[Question]:
    """The questions of the data file whose project is in ``roots``, with their answer's line span."""
    out = []
    for item in json.loads(QUESTIONS_FILE.read_text(encoding="utf-8")):
        root = roots.get(item["project"])
        if root is None:
            continue
        text = (root / item["path"]).read_text(encoding="utf-8")
        definition = item.get("definition", "")
        if not definition:
            span: tuple[int, int] | None = (1, max(1, text.count("\n")))
        elif item["path"].endswith(".py"):
            span = python_spans(text).get(definition)
        else:
            span = heading_span(text, definition)
        if span is None:
            raise SystemExit(f"{item['project']}:{item['path']}: no definition {definition!r} (question {item['q']!r})")
        out.append(Question(item["project"], item["q"], item["path"], definition, *span))
    return out
