"""Path globs (``src/**/*.py``, ``*.md``, ``tests/``) as anchored regular expressions.

The expressions use only what Python's ``re`` and PostgreSQL's ``~`` operator read alike, so a glob
filters rows inside the database. The rules follow ``.gitignore``:

- ``*`` matches within one path segment, ``?`` one character, ``[abc]`` / ``[!abc]`` a set;
- ``**`` matches across segments (``src/**/x.py`` also matches ``src/x.py``);
- a glob without ``/`` matches the file name at any depth (``*.py``);
- a glob ending in ``/`` matches everything under that directory; a leading ``/`` anchors at the root.
"""

from __future__ import annotations

import re

from knowledgebase.errors import InputError


def glob_to_regex(glob: str) -> str:
    """The anchored regular expression equivalent to ``glob``; InputError if the glob is malformed."""
    pattern = glob.strip()
    if not pattern:
        raise InputError("the path glob is empty; give a pattern such as 'src/**/*.py' or '*.md'")
    anchored = pattern.startswith("/")
    pattern = pattern.lstrip("/")
    if not pattern:
        raise InputError(f"path glob {glob!r} matches nothing; give a pattern such as 'src/**/*.py'")
    if pattern.endswith("/"):
        pattern += "**"
    prefix = "" if anchored or "/" in pattern.rstrip("/") else "(?:.*/)?"
    out = ["^", prefix]
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            start = i + 1
            if pattern.startswith("!", start):
                start += 1
            if pattern.startswith("]", start):  # a leading ']' is a member, not the end
                start += 1
            end = pattern.find("]", start)
            if end == -1:
                raise InputError(f"path glob {glob!r} has a '[' without its closing ']'")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if not body:
                raise InputError(f"path glob {glob!r} has an empty character set '[]'")
            escaped = "".join("\\" + c if c in "\\[]^" else c for c in body)
            out.append(("[^" if negate else "[") + escaped + "]")
            i = end + 1
        else:
            out.append(re.escape(char))
            i += 1
    out.append("$")
    regex = "".join(out)
    try:
        re.compile(regex)
    except re.error as exc:
        raise InputError(f"path glob {glob!r} is not valid: {exc}") from None
    return regex


def glob_matches(glob: str, path: str) -> bool:
    """Whether ``path`` (relative, ``/``-separated) matches ``glob``."""
    return re.search(glob_to_regex(glob), path) is not None
