"""Okapi BM25 over code tokens, as sparse vectors whose inner product is the BM25 score.

A chunk's document side is a sparse vector: for each of its terms ``t``, at the dimension
``term_dimension(t)``, the saturated term frequency

    w(t, d) = tf * (k1 + 1) / (tf + k1 * (1 - b + b * dl / AVERAGE_LENGTH))

and a query's side carries ``idf(t) = ln(1 + (N - df + 0.5) / (df + 0.5))`` at the same dimensions,
so ``sum_t idf(t) * w(t, d)``, the Okapi BM25 score (with Lucene's idf, which is never negative, where
rank-bm25's ``BM25Okapi`` floors a negative one), is their inner product: pgvector's ``<#>`` on a
``sparsevec`` column computes it inside PostgreSQL.

Decisions (measured with ``scripts/eval_retrieval.py``, README "How well it retrieves"):

- Terms are the code tokens of ``knowledgebase.util.lexical``: every identifier lower-cased, plus its
  parts when it is compound (``resolve_envvar`` -> ``resolve_envvar``, ``resolve``, ``envvar``), so a
  query word finds the identifiers it is part of, and a whole identifier written in the query counts
  as a rare term of its own. Stop words stay in documents (idf makes them nearly worthless) and are
  dropped from queries.
- No stemming: a light Porter step-1 stemmer on both sides (``settings`` -> ``set``, ``generated`` ->
  ``generat``) left the docstring sets where they were (mean MRR@10 0.603 vs 0.604) and lowered the
  developer questions (top 3 0.608 -> 0.582, MRR@10 0.493 -> 0.485).
- Terms are hashed (``zlib.crc32``, stable across processes and machines) into ``DIMENSIONS`` = 2^20
  dimensions: no term dictionary to keep; a collision (two terms of a project sharing a dimension)
  adds their counts, which for a project of 50,000 distinct terms touches about 2% of them.
- ``AVERAGE_LENGTH`` is a constant, not the store's running mean: chunks are cut to a token budget, so
  their lengths vary little, and a constant keeps a stored vector valid however the store grows (no
  re-weighting of old rows). It is the mean token count of the chunks of the evaluation corpora.
- Document frequencies are counted per project by the database itself (``chunk_term_counts``, kept by
  triggers on ``file_chunks``, migration 0008), so N and df are exact at every search.
"""

from __future__ import annotations

import math
import re
import zlib
from collections import Counter
from collections.abc import Iterable, Mapping

from knowledgebase.util.lexical import identifier_parts

# rank-bm25's defaults, the usual choice (Robertson & Zaragoza 2009: k1 1.2-2.0, b 0.75)
K1 = 1.5
B = 0.75
# mean code tokens per chunk over the 14,323 chunks of the evaluation corpora (csn, humaneval, starlette,
# jinja, this repository: 36.7 to 72.8 per corpus, median 66; scripts/eval_retrieval.py)
AVERAGE_LENGTH = 68.0
DIMENSIONS = 1 << 20
# pgvector stores at most 16,000 non-zero elements in a sparsevec; a chunk with more distinct terms
# keeps the ones with the highest weight (chunks are cut to a few hundred tokens: it does not happen)
MAX_TERMS = 16_000
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|[0-9]+")


def code_tokens(text: str) -> list[str]:
    """The terms of ``text`` in order, repeated as often as they occur: each identifier (or number)
    lower-cased, followed by its parts when it has more than one (``HTTPError`` -> ``httperror``,
    ``http``, ``error``)."""
    tokens: list[str] = []
    for token in _TOKEN.findall(text):
        tokens.append(token.lower())
        parts = identifier_parts(token)
        if len(parts) > 1:
            tokens.extend(parts)
    return tokens


def term_dimension(term: str) -> int:
    """The dimension (0-based, below ``DIMENSIONS``) of a lower-cased term."""
    return zlib.crc32(term.encode("utf-8")) % DIMENSIONS


def document_weights(
    text: str, *, k1: float = K1, b: float = B, average_length: float = AVERAGE_LENGTH
) -> dict[int, float]:
    """The document side of ``text``: the BM25 term-frequency part of each of its terms, by dimension
    (empty for a text with no terms)."""
    tokens = code_tokens(text)
    if not tokens:
        return {}
    norm = k1 * (1 - b + b * len(tokens) / average_length)
    counts = Counter(term_dimension(t) for t in tokens)
    weights = {dim: tf * (k1 + 1) / (tf + norm) for dim, tf in counts.items()}
    if len(weights) > MAX_TERMS:
        weights = dict(sorted(weights.items(), key=lambda kv: -kv[1])[:MAX_TERMS])
    return weights


def idf(document_frequency: int, documents: int) -> float:
    """Okapi's inverse document frequency, ``ln(1 + (N - df + 0.5) / (df + 0.5))``: positive, highest
    for a term no document has."""
    df = max(0, min(document_frequency, documents))
    return math.log(1.0 + (documents - df + 0.5) / (df + 0.5))


def query_weights(terms: Iterable[str], frequencies: Mapping[int, int], documents: int) -> dict[int, float]:
    """The query side: the idf of each distinct term's dimension (``frequencies``: chunks per dimension
    among ``documents``; a dimension missing from it occurs in none). Terms sharing a dimension count once."""
    return {dim: idf(frequencies.get(dim, 0), documents) for dim in {term_dimension(t) for t in terms}}
