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


def query_terms(query: str) -> list[str]:
    """The lower-cased terms of a query: whole identifiers and their parts, without duplicates."""
    terms: list[str] = []
    for ident in _IDENTIFIER.findall(query):
        for term in [ident.lower(), *identifier_parts(ident)]:
            if term not in terms:
                terms.append(term)
    return terms
