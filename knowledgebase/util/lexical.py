"""Text for full-text search that makes code identifiers findable.

PostgreSQL's parsers keep ``populate_project`` or ``ContextPack`` as one token, so a search for
"populate project" or "context pack" would miss them. ``search_text`` appends the parts of every
compound identifier to the text (``populate_project`` -> ``populate_project populate project``), and
the same function prepares queries, so documents and queries are tokenised alike. Both go through the
``simple`` configuration (no stemming, no stop words): identifiers are not English.
"""

from __future__ import annotations

import re

TS_CONFIG = "simple"
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CAMEL_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")


def identifier_parts(identifier: str) -> list[str]:
    """``HTTPServerError_v2`` -> ``['http', 'server', 'error', 'v', '2']``."""
    parts: list[str] = []
    for piece in identifier.split("_"):
        parts.extend(p.lower() for p in _CAMEL_PARTS.findall(piece))
    return parts


def search_text(text: str) -> str:
    """``text`` followed by the parts of each compound identifier in it, for ``to_tsvector``."""
    extra: list[str] = []
    seen: set[str] = set()
    for ident in _IDENTIFIER.findall(text):
        if ident in seen:
            continue
        seen.add(ident)
        parts = identifier_parts(ident)
        if len(parts) > 1:
            extra.extend(parts)
    return text if not extra else text + "\n" + " ".join(extra)


def query_terms(query: str, limit: int | None = None) -> list[str]:
    """The lower-cased terms of a query: whole identifiers and their parts, without duplicates, in
    order of appearance; only the first ``limit`` when given (the rest of the query is not read)."""
    terms: dict[str, None] = {}
    for match in _IDENTIFIER.finditer(query):
        ident = match.group(0)
        for term in [ident.lower(), *identifier_parts(ident)]:
            terms.setdefault(term, None)
            if limit is not None and len(terms) >= limit:
                return list(terms)
    return list(terms)


# Words too common in prompts and docstrings to say anything about a match. The ``simple`` text
# configuration keeps them (it must, for identifiers), so queries drop them instead.
_STOP_WORDS_TEXT = """
a about above after again all also am an and any are as at be because been before being below between both
but by can could did do does doing down during each few for from further had has have having he her here hers
him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
out over own same she should so some such than that the their them then there these they this those through to
too under until up very was we were what when where which while who whom why will with would you your
"""
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_CAMEL_INNER = re.compile(r"[a-z0-9][A-Z]")


def search_terms(query: str, limit: int | None = None) -> list[str]:
    """The terms of ``query`` worth a full-text search: ``query_terms`` without stop words (the first
    ``limit`` of them when given)."""
    terms: dict[str, None] = {}
    for match in _IDENTIFIER.finditer(query):
        for term in query_terms(match.group(0)):
            if term not in STOP_WORDS and term.strip("_"):
                terms.setdefault(term, None)
                if limit is not None and len(terms) >= limit:
                    return list(terms)
    return list(terms)


def tsquery_from_terms(terms: list[str]) -> str | None:
    """A ``to_tsquery('simple', ...)`` expression matching any of ``terms`` (None for no terms).

    Terms are ORed: natural-language questions rarely share all their words with the code that
    answers them. A compound identifier stays whole (PostgreSQL reads it as a phrase) besides its
    parts. Terms come from ``query_terms``, so only ``[a-z0-9_]`` reach the expression and it is
    always valid.
    """
    return " | ".join(terms) if terms else None


def tsquery_text(query: str) -> str | None:
    """The full-text expression for ``query``: its ``search_terms`` ORed (None when none are left)."""
    return tsquery_from_terms(search_terms(query))


_VERSION = re.compile(r"(?<![\w.])v?\d+(?:\.\d+){1,3}(?:[a-z]+\d*)?(?![\w.]*\w)")


def code_identifiers(query: str, limit: int | None = None) -> list[str]:
    """The identifiers in ``query`` that are written as code (``snake_case``, ``CamelCase``, ``a.b``),
    and version numbers (``0.47.0``, ``3.1``, ``2.0rc1``): text to find verbatim (what changed in 0.47.0);
    the first ``limit`` of them when given."""
    found: list[str] = [v.group(0).lstrip("v") for v in _VERSION.finditer(query)][:limit]
    if limit is not None and len(found) >= limit:
        return found
    for match in re.finditer(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*", query):
        ident = match.group(0)
        inner = ident.strip("_")
        dotted = "." in ident and all(len(part) > 1 for part in ident.split("."))
        looks_like_code = "_" in inner or dotted or bool(_CAMEL_INNER.search(ident))
        if looks_like_code and ident not in found:
            found.append(ident)
            if limit is not None and len(found) >= limit:
                break
    return found
