"""How a hit is scored: the weights, and the arithmetic that turns signals into one number.

Pure functions, no I/O, so every formula is tested with controlled inputs. All weights live in one
frozen ``RankingWeights``; ``DEFAULT_WEIGHTS`` holds the defaults chosen from
``scripts/eval_retrieval.py`` (numbers in the README), and any call can pass its own.

The score of a hit::

    relevance = vector * similarity + text * text_score + bm25 * bm25_score + identifier * identifier_match
                + role_prior

(for a code chunk, ``chunk_text`` takes the place of ``text``: BM25 is its lexical signal.)
    score     = relevance * confidence_factor * recency_factor

- ``similarity`` is the cosine similarity of the query and the item's embedding (-1..1); for a chunk of
  a definition or section, the best of that and its summaries' (``summary_similarity``: the short
  vectors of its definitions' names and signatures, ``knowledgebase.index.summaries``) when
  ``summaries`` is on.
- ``text_score`` is PostgreSQL's cover-density rank of the full-text match squashed into 0..1
  (``rank / (rank + text_saturation)``). ``ts_rank`` knows nothing of term rarity, so it is a weak
  signal: fused by reciprocal rank it drags a good vector ranking down. It is therefore a small
  additive bonus that reorders hits of similar meaning, never a list of equal standing.
- ``bm25_score`` (chunks only) is the chunk's Okapi BM25 over code tokens (``knowledgebase.util.bm25``,
  computed in PostgreSQL as a sparse inner product) divided by the sum of the query terms' idf, the
  most a chunk holding each term once at the average length scores: about the idf-weighted share of
  the query's terms the chunk holds (it can pass 1 with repeated terms), then squashed
  ``x / (x + bm25_saturation)`` when ``bm25_saturation`` > 0.
- ``identifier_match`` is 1 when a code identifier written in the query (``populate_project``,
  ``ContextPack``) occurs verbatim in the item: the case where exact text beats meaning.
- ``role_prior`` (chunks only) is minus the penalty of the file's role (``role_penalties``: tests, docs,
  changelogs... rank below the source of similar meaning), or ``asked_role_bonus`` when the query asks
  for that role (``knowledgebase.util.roles.query_roles``: "how do I test ..." lifts tests); a chunk of
  source outside every definition gets ``-outside_definition``.
- ``confidence_factor`` (facts only) is ``1 - fact_confidence + fact_confidence * effective``, where the
  effective confidence decays with time since the fact was last confirmed and drops for stale facts.
- ``recency_factor`` (facts and commands) is ``1 - recency + recency * 0.5 ** (age / half-life)``.
  Code chunks get no recency factor: the index holds the current version of every file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

SECONDS_PER_DAY = 86_400.0
# fitted by scripts/eval_retrieval.py --grid roles: the highest top-3 rate on the developer questions,
# then the best mean MRR@10 over the csn, humaneval, starlette, jinja and question sets (README, "How
# well it retrieves")
DEFAULT_ROLE_PENALTIES: tuple[tuple[str, float], ...] = (
    ("test", 0.16),
    ("docs", 0.05),
    ("example", 0.05),
    ("changelog", 0.15),
    ("config", 0.15),
    ("generated", 0.15),
    ("vendored", 0.15),
)


@dataclass(frozen=True)
class RankingWeights:
    """Every knob of ranking, with defaults chosen by ``scripts/eval_retrieval.py``.

    Override some for one call with ``DEFAULT_WEIGHTS.with_(text=0.0)``.
    """

    # weight of the cosine similarity between query and item embeddings
    vector: float = 1.0
    # a chunk's similarity is the best of its own and its definitions' summaries' (names and signatures).
    # scripts/eval_retrieval.py (README, "How well it retrieves"): the best of the two beat a weighted mix
    # (0.3, 0.5, 0.7 of the summary) and a margin either way (+-0.02, +-0.03) on the sets taken together
    summaries: bool = True
    # weight of the squashed full-text rank (0 turns full text into a candidate source only)
    text: float = 0.1
    # ts_rank_cd value that scores 0.5 after squashing: rank / (rank + text_saturation)
    text_saturation: float = 0.3
    # weight of ts_rank_cd for code chunks (None: ``text``). 0: for chunks BM25 replaces it, as
    # scripts/eval_retrieval.py --grid bm25 chose: any ts_rank_cd weight (0.05, 0.1) next to BM25
    # lowered humaneval below vector only and the mean MRR@10 of the sets by 0.01-0.02
    chunk_text: float | None = 0.0
    # weight of a chunk's BM25 score (normalised by the query's idf sum, then squashed; 0: BM25 unused).
    # Fitted by scripts/eval_retrieval.py --grid bm25 (README, "How well it retrieves"): of the points
    # that keep every set at or above vector only, the best mean MRR@10 over the csn, humaneval,
    # identifiers, starlette, jinja and question sets with the identifier bonus kept at 0.1
    # (0.25 / 1.0: 0.604; linear 0.125: 0.603; 0.2 / 1.0: 0.599; none: 0.581)
    bm25: float = 0.25
    # normalised BM25 that scores 0.5 after squashing (0: no squashing): with 1.0 a chunk holding each
    # query term once gets half the weight, and no chunk more than all of it
    bm25_saturation: float = 1.0
    # bonus when a code identifier from the query appears verbatim in the item
    identifier: float = 0.1
    # how much a fact's effective confidence scales its score (0 ignores confidence, 1 multiplies by it)
    fact_confidence: float = 0.5
    # a fact's confidence halves for every this many days without confirmation
    confidence_half_life_days: float = 90.0
    # factor applied to the confidence of a fact whose source chunk has changed since
    stale_factor: float = 0.4
    # how much recency scales facts and commands (0 ignores age)
    recency: float = 0.2
    # an item's recency halves every this many days
    recency_half_life_days: float = 30.0
    # maximal marginal relevance: penalty per unit of cosine similarity to an already chosen hit
    diversity: float = 0.0
    # candidates fetched per source (vector and full text, per kind) before scoring
    candidates: int = 50
    # context blocks leave out hits whose relevance is below this (search returns them all): in the
    # evaluation (code chunks, where score = relevance) 95% of right answers scored >= 0.41, while best
    # hits for questions with no answer scored 0.24-0.40 (median), so 0.3 spares the agent's budget much
    # noise at the cost of very few right answers. It is compared with relevance, before a fact's
    # confidence and recency factors: a fresh fact at the default confidence 0.5 (x0.75) that answers
    # the question ("test command: tox -e py311" for "how do I run the tests", similarity 0.36) would
    # otherwise fall below it.
    min_score: float = 0.3
    # context blocks also leave out facts stored with a confidence below this (search returns them):
    # a fact proposed from the audit trail starts under it (``knowledgebase.facts.PROPOSED_CONFIDENCE``)
    # and enters blocks once a later session proposes it again or someone confirms it. Compared with
    # the stored confidence, not the decayed one: a stated fact that merely aged stays in.
    min_fact_confidence: float = 0.3
    # one hit per definition (function, class) or section: its best chunk stands for its other chunks
    definitions: bool = True
    # subtracted from the relevance of a chunk of a file with this role (source: none)
    role_penalties: tuple[tuple[str, float], ...] = DEFAULT_ROLE_PENALTIES
    # added instead when the query asks for the file's role ("how do I test", "what changed in")
    asked_role_bonus: float = 0.1
    # subtracted from a chunk of source that is part of no definition (module docstring, top-level
    # statements): it describes or sets up, the definitions implement (0.1: best of 0, 0.03, 0.06, 0.1)
    outside_definition: float = 0.1

    def __post_init__(self) -> None:
        for name in (
            "vector",
            "text",
            "bm25",
            "bm25_saturation",
            "identifier",
            "fact_confidence",
            "recency",
            "stale_factor",
            "diversity",
            "min_score",
            "min_fact_confidence",
            "asked_role_bonus",
            "outside_definition",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"ranking weight {name} must not be negative")
        for name in ("fact_confidence", "recency", "stale_factor", "min_fact_confidence"):
            if getattr(self, name) > 1:
                raise ValueError(f"ranking weight {name} must be at most 1")
        for name in ("text_saturation", "confidence_half_life_days", "recency_half_life_days"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ranking weight {name} must be positive")
        if self.candidates < 1:
            raise ValueError("ranking weight candidates must be at least 1")
        if self.chunk_text is not None and self.chunk_text < 0:
            raise ValueError("ranking weight chunk_text must not be negative")
        if any(penalty < 0 for _, penalty in self.role_penalties):
            raise ValueError("ranking weight role_penalties must not be negative")

    def with_(self, **changes: Any) -> RankingWeights:
        """A copy with some weights replaced."""
        return replace(self, **changes)

    @property
    def chunk_text_weight(self) -> float:
        """The weight of ts_rank_cd for code chunks."""
        return self.text if self.chunk_text is None else self.chunk_text

    def role_prior(self, role: str | None, asked: frozenset[str] = frozenset(), *, in_definition: bool = True) -> float:
        """What a chunk of a file with ``role`` gets added to its relevance, given the roles asked for;
        ``in_definition`` False for a chunk outside every definition (its symbol is None)."""
        if role is None or role == "source":
            return 0.0 if in_definition else -self.outside_definition
        if role in asked:
            return self.asked_role_bonus
        return -dict(self.role_penalties).get(role, 0.0)


DEFAULT_WEIGHTS = RankingWeights()
# the ranking before definitions, roles and BM25 (every chunk its own hit, no role prior, ts_rank_cd
# for chunks as for facts): for comparisons
LEGACY: dict[str, Any] = {
    "summaries": False,
    "chunk_text": None,
    "bm25": 0.0,
    "definitions": False,
    "role_penalties": (),
    "asked_role_bonus": 0.0,
    "outside_definition": 0.0,
}


@dataclass(frozen=True)
class ScoreParts:
    """The parts of one hit's score, and the final value, so any ranking can be explained."""

    similarity: float  # the item's own vector's
    text_rank: float
    text_score: float
    identifier_match: bool
    relevance: float
    confidence: float | None
    confidence_factor: float
    recency: float | None
    recency_factor: float
    score: float
    role_prior: float = 0.0
    bm25: float = 0.0  # normalised by the query's idf sum, before squashing
    lexical: float = 0.0  # what full text added to relevance: weighted ts_rank_cd plus weighted BM25
    summary_similarity: float | None = None  # the best of a chunk's definition summaries' (None: none)
    used_similarity: float | None = None  # what relevance used: the better of the two, or ``similarity``

    def explain(self) -> str:
        """One line: every part and how they combine."""
        parts = [f"similarity {self.similarity:.3f}"]
        if self.summary_similarity is not None:
            parts[0] += f" (summary {self.summary_similarity:.3f}, used {self.used_similarity or 0:.3f})"
        parts.append(f"text {self.text_score:.3f} (ts_rank_cd {self.text_rank:.3f})")
        if self.bm25:
            parts.append(f"bm25 {self.bm25:.3f}")
        if self.identifier_match:
            parts.append("identifier match")
        if self.role_prior:
            parts.append(f"role prior {self.role_prior:+.3f}")
        parts.append(f"relevance {self.relevance:.3f}")
        if self.confidence is not None:
            parts.append(f"confidence {self.confidence:.3f} (x{self.confidence_factor:.3f})")
        if self.recency is not None:
            parts.append(f"recency {self.recency:.3f} (x{self.recency_factor:.3f})")
        return ", ".join(parts) + f" -> score {self.score:.4f}"


def half_life_decay(age_seconds: float, half_life_days: float) -> float:
    """``0.5 ** (age / half_life)``: 1 for something new, 0.5 after one half-life; never above 1."""
    age_days = max(0.0, age_seconds) / SECONDS_PER_DAY
    return float(0.5 ** (age_days / half_life_days))


def age_seconds(since: datetime, now: datetime) -> float:
    """Seconds from ``since`` to ``now`` (0 for a time in the future)."""
    return max(0.0, (now - since).total_seconds())


def effective_confidence(
    confidence: float,
    *,
    last_confirmed_at: datetime,
    now: datetime,
    is_stale: bool = False,
    pinned: bool = False,
    weights: RankingWeights = DEFAULT_WEIGHTS,
) -> float:
    """How far to trust a fact now: its confidence, halved per half-life since its last confirmation
    (pinned facts do not decay), times ``stale_factor`` when its source chunk has changed."""
    value = float(confidence)
    if not pinned:
        value *= half_life_decay(age_seconds(last_confirmed_at, now), weights.confidence_half_life_days)
    if is_stale:
        value *= weights.stale_factor
    return min(1.0, max(0.0, value))


def reinforced_confidence(current: float, stated: float, step: float = 0.25, ceiling: float = 0.99) -> float:
    """Confidence after a fact is stated again: the higher of the two, moved ``step`` of the way to 1."""
    base = max(float(current), float(stated))
    return round(min(ceiling, base + (1.0 - base) * step), 3)


def text_score(text_rank: float, weights: RankingWeights = DEFAULT_WEIGHTS) -> float:
    """A full-text rank squashed into 0..1 (0 for no match)."""
    rank = max(0.0, float(text_rank))
    return rank / (rank + weights.text_saturation)


def bm25_score(bm25: float, weights: RankingWeights = DEFAULT_WEIGHTS) -> float:
    """A normalised BM25 score, squashed into 0..1 when ``bm25_saturation`` > 0 (0 for no match)."""
    value = max(0.0, float(bm25))
    if weights.bm25_saturation == 0:
        return value
    return value / (value + weights.bm25_saturation)


def score(
    *,
    similarity: float,
    summary_similarity: float | None = None,
    text_rank: float = 0.0,
    bm25: float = 0.0,
    identifier_match: bool = False,
    confidence: float | None = None,
    age_seconds: float | None = None,
    role_prior: float = 0.0,
    weights: RankingWeights = DEFAULT_WEIGHTS,
    chunk: bool = False,
) -> ScoreParts:
    """Combine the signals of one item (``confidence`` already effective; ``age_seconds`` None for
    items without recency; ``chunk`` True for a code chunk, whose ts_rank_cd weighs ``chunk_text``;
    ``summary_similarity`` the best of a chunk's definition summaries', or None) into its score and the
    parts that explain it."""
    used = float(similarity)
    if weights.summaries and summary_similarity is not None:
        used = max(used, float(summary_similarity))
    squashed = text_score(text_rank, weights)
    lexical = (weights.chunk_text_weight if chunk else weights.text) * squashed + weights.bm25 * bm25_score(
        bm25, weights
    )
    relevance = (
        weights.vector * used
        + lexical
        + (weights.identifier if identifier_match else 0.0)
        + role_prior
    )
    confidence_factor = 1.0
    if confidence is not None:
        confidence_factor = 1.0 - weights.fact_confidence + weights.fact_confidence * confidence
    recency: float | None = None
    recency_factor = 1.0
    if age_seconds is not None:
        recency = half_life_decay(age_seconds, weights.recency_half_life_days)
        recency_factor = 1.0 - weights.recency + weights.recency * recency
    return ScoreParts(
        similarity=float(similarity),
        text_rank=float(text_rank),
        text_score=squashed,
        identifier_match=identifier_match,
        relevance=relevance,
        confidence=confidence,
        confidence_factor=confidence_factor,
        recency=recency,
        recency_factor=recency_factor,
        score=relevance * confidence_factor * recency_factor,
        role_prior=role_prior,
        bm25=max(0.0, float(bm25)),
        lexical=lexical,
        summary_similarity=summary_similarity,
        used_similarity=used,
    )


def mmr_order(scores: list[float], similarity: list[list[float]], diversity: float, limit: int) -> list[int]:
    """Indices of up to ``limit`` items in maximal-marginal-relevance order.

    Each step takes the item whose score minus ``diversity`` times its highest similarity to an item
    already taken is largest; ``diversity`` 0 keeps plain score order.
    """
    remaining = list(range(len(scores)))
    chosen: list[int] = []
    while remaining and len(chosen) < limit:

        def marginal(i: int) -> float:
            if not chosen or diversity == 0:
                return scores[i]
            return scores[i] - diversity * max(similarity[i][j] for j in chosen)

        best = max(remaining, key=lambda i: (marginal(i), -i))
        chosen.append(best)
        remaining.remove(best)
    return chosen
