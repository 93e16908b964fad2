"""What a file is for (its role), from its path alone, and which roles a question asks for.

``file_role(path)`` gives one of ``ROLES``: ``source`` (the code that implements the project), ``test``
(tests and their helpers: ``tests/``, ``test_*.py``, ``*_test.go``, ``*.spec.ts``, ``conftest.py``),
``docs`` (Markdown, reST and text pages, ``docs/``, README), ``changelog`` (CHANGES, CHANGELOG, HISTORY,
NEWS, release notes), ``config`` (TOML, YAML, INI, JSON, Makefiles, Dockerfiles, CI files),
``generated`` (protobuf and other generated modules), ``example`` (``examples/``, ``samples/``,
``demo/``) and ``vendored`` (``_vendor/``, ``third_party/``...). The scanner records it for every file;
ranking uses it as a prior that ``query_roles(query)`` lifts when a question asks for that role ("how do
I test ...", "what changed in 2.0").
"""

from __future__ import annotations

import re

ROLES = ("source", "test", "docs", "changelog", "config", "generated", "example", "vendored")

_VENDORED_DIRS = frozenset({"_vendor", "vendored", "third_party", "thirdparty", "third-party", "extern", "external"})
_EXAMPLE_DIRS = frozenset({"examples", "example", "samples", "sample", "demo", "demos", "cookbook"})
_TEST_DIRS = frozenset({"tests", "test", "testing", "__tests__", "spec", "specs", "e2e", "fixtures"})
_DOCS_DIRS = frozenset({"docs", "doc", "documentation", "man"})
_GENERATED_DIRS = frozenset({"generated", "gen", "__generated__"})
_DOC_SUFFIXES = (".md", ".markdown", ".rst", ".txt", ".adoc", ".asciidoc", ".org", ".ipynb", ".tex")
_CONFIG_SUFFIXES = (".toml", ".cfg", ".ini", ".yml", ".yaml", ".json", ".jsonc", ".conf", ".properties", ".env")
_CONFIG_NAMES = frozenset(
    {"makefile", "dockerfile", "justfile", "procfile", "setup.cfg", "tox.ini", "noxfile.py", "conf.py", "manage.py"}
)
_CHANGELOG = re.compile(r"^(changes|changelog|history|news|release[-_ ]?notes|releases|whatsnew|what[-_]s[-_]new)\b")
_TEST_NAME = re.compile(r"(^test_.*|.*_tests?\.\w+$|.*\.(test|spec)\.\w+$|^conftest\.py$|.*Tests?\.java$)")
_GENERATED_NAME = re.compile(r".*(_pb2(_grpc)?\.py|\.pb\.go|\.generated\.\w+|_generated\.\w+|\.g\.dart)$")


def file_role(path: str) -> str:
    """The role of the file at ``path`` (relative to the project root, ``/``-separated)."""
    parts = [p for p in path.lower().split("/") if p]
    if not parts:
        return "source"
    name, dirs = parts[-1], set(parts[:-1])
    if dirs & _VENDORED_DIRS:
        return "vendored"
    if _GENERATED_NAME.match(name) or dirs & _GENERATED_DIRS:
        return "generated"
    if _CHANGELOG.match(name):
        return "changelog"
    if dirs & _EXAMPLE_DIRS:
        return "example"
    if _TEST_NAME.match(parts[-1]) or dirs & _TEST_DIRS:
        return "test"
    if name.endswith(_DOC_SUFFIXES) or name.startswith(("readme", "license", "copying", "contributing")):
        return "docs"
    if name in _CONFIG_NAMES or name.endswith(_CONFIG_SUFFIXES) or name.startswith("."):
        return "config"
    if dirs & _DOCS_DIRS:
        return "docs"
    return "source"


_ASKS = {
    "test": re.compile(r"\b(tests?|testing|tested|pytest|unittest|fixtures?|mock(s|ing)?|test ?client)\b"),
    "changelog": re.compile(
        r"\b(changed|changes|changelog|release notes?|what'?s new|new in|deprecated in|since version|"
        r"in version \d|breaking)\b"
    ),
    "docs": re.compile(r"\b(docs?|documentation|readme|tutorial|guide|documented)\b"),
    "example": re.compile(r"\b(examples?|samples?|demo)\b"),
    "config": re.compile(r"\b(pyproject|toml|yaml|config(uration)? files?|ci (config|workflow)|makefile)\b"),
}


def query_roles(query: str) -> frozenset[str]:
    """The roles a question asks for by its words (``how do I test X`` -> ``{"test"}``)."""
    text = query.lower()
    return frozenset(role for role, pattern in _ASKS.items() if pattern.search(text))
