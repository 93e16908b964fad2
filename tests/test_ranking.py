"""Ranking arithmetic with controlled inputs: half-lives, confidence, fusion, diversity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from knowledgebase.ranking import (
    DEFAULT_WEIGHTS,
    RankingWeights,
    effective_confidence,
    half_life_decay,
    mmr_order,
    reinforced_confidence,
    score,
    text_score,
)

NOW = datetime(2025, 6, 1, tzinfo=UTC)
DAY = 86_400.0


def test_half_life_decay() -> None:
    assert half_life_decay(0, 30) == 1.0
    assert half_life_decay(30 * DAY, 30) == pytest.approx(0.5)
    assert half_life_decay(60 * DAY, 30) == pytest.approx(0.25)
    assert half_life_decay(15 * DAY, 30) == pytest.approx(0.5**0.5)
    assert half_life_decay(-5 * DAY, 30) == 1.0  # clock skew never boosts


def test_confidence_decays_since_last_confirmation() -> None:
    weights = DEFAULT_WEIGHTS.with_(confidence_half_life_days=10.0)
    fresh = effective_confidence(0.8, last_confirmed_at=NOW, now=NOW, weights=weights)
    assert fresh == pytest.approx(0.8)
    old = effective_confidence(0.8, last_confirmed_at=NOW - timedelta(days=10), now=NOW, weights=weights)
    assert old == pytest.approx(0.4)
    pinned = effective_confidence(
        0.8, last_confirmed_at=NOW - timedelta(days=10), now=NOW, pinned=True, weights=weights
    )
    assert pinned == pytest.approx(0.8)


def test_stale_facts_lose_confidence() -> None:
    weights = DEFAULT_WEIGHTS.with_(stale_factor=0.25)
    stale = effective_confidence(0.8, last_confirmed_at=NOW, now=NOW, is_stale=True, weights=weights)
    assert stale == pytest.approx(0.2)


def test_reinforced_confidence() -> None:
    assert reinforced_confidence(0.5, 0.5) == pytest.approx(0.625)
    assert reinforced_confidence(0.5, 0.9) == pytest.approx(0.925)  # a stronger statement counts
    assert reinforced_confidence(0.98, 0.98) == pytest.approx(0.985)
    assert reinforced_confidence(0.99, 1.0) == 0.99  # never certain
    values = [0.1]
    for _ in range(5):
        values.append(reinforced_confidence(values[-1], 0.1))
    assert values == sorted(values) and len(set(values)) == len(values)


def test_text_score_is_bounded_and_monotonic() -> None:
    weights = RankingWeights(text_saturation=0.2)
    assert text_score(0.0, weights) == 0.0
    assert text_score(0.2, weights) == pytest.approx(0.5)
    ranks = [0.01, 0.1, 1.0, 10.0, 1000.0]
    squashed = [text_score(r, weights) for r in ranks]
    assert squashed == sorted(squashed) and squashed[-1] < 1.0


def test_score_fusion_arithmetic() -> None:
    weights = RankingWeights(vector=1.0, text=0.2, text_saturation=0.1, identifier=0.05)
    parts = score(similarity=0.6, text_rank=0.1, identifier_match=True, weights=weights)
    assert parts.text_score == pytest.approx(0.5)
    assert parts.relevance == pytest.approx(0.6 + 0.2 * 0.5 + 0.05)
    assert parts.score == pytest.approx(parts.relevance)  # no confidence, no recency for chunks
    assert parts.confidence is None and parts.recency is None
    explained = parts.explain()
    for piece in ("similarity 0.600", "text 0.500", "identifier match", "score 0.7500"):
        assert piece in explained


def test_confidence_and_recency_scale_facts() -> None:
    weights = RankingWeights(fact_confidence=0.5, recency=0.2, recency_half_life_days=10.0)
    parts = score(similarity=0.8, confidence=0.4, age_seconds=10 * DAY, weights=weights)
    assert parts.confidence_factor == pytest.approx(0.5 + 0.5 * 0.4)
    assert parts.recency == pytest.approx(0.5)
    assert parts.recency_factor == pytest.approx(0.8 + 0.2 * 0.5)
    assert parts.score == pytest.approx(0.8 * 0.7 * 0.9)
    # a trusted fact outranks an untrusted one of equal similarity; a recent one an old one
    trusted = score(similarity=0.8, confidence=0.9, age_seconds=0, weights=weights)
    doubtful = score(similarity=0.8, confidence=0.2, age_seconds=0, weights=weights)
    old = score(similarity=0.8, confidence=0.9, age_seconds=100 * DAY, weights=weights)
    assert trusted.score > doubtful.score and trusted.score > old.score
    explained = trusted.explain()
    assert "confidence 0.900" in explained and "recency 1.000" in explained


def test_weights_override_per_call() -> None:
    vector_only = DEFAULT_WEIGHTS.with_(text=0.0, identifier=0.0)
    parts = score(similarity=0.42, text_rank=5.0, identifier_match=True, weights=vector_only)
    assert parts.score == pytest.approx(0.42)
    assert DEFAULT_WEIGHTS.text > 0  # the default is untouched


def test_lexical_signal_cannot_overturn_a_clearly_better_meaning() -> None:
    """Full text reorders close calls; it does not beat a much better vector match (see module docstring)."""
    strong_meaning = score(similarity=0.75)
    strong_text = score(similarity=0.45, text_rank=100.0, identifier_match=True)
    assert strong_meaning.score > strong_text.score
    close_meaning = score(similarity=0.50)
    close_with_identifier = score(similarity=0.48, text_rank=0.2, identifier_match=True)
    assert close_with_identifier.score > close_meaning.score


@pytest.mark.parametrize(
    ("field", "value"),
    [("text", -0.1), ("fact_confidence", 1.5), ("recency_half_life_days", 0.0), ("candidates", 0), ("stale_factor", 2)],
)
def test_bad_weights_are_refused(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        DEFAULT_WEIGHTS.with_(**{field: value})


def test_mmr_order() -> None:
    scores = [0.9, 0.89, 0.5]
    similarity = [[1.0, 0.99, 0.1], [0.99, 1.0, 0.1], [0.1, 0.1, 1.0]]
    assert mmr_order(scores, similarity, 0.0, 3) == [0, 1, 2]
    assert mmr_order(scores, similarity, 0.5, 3) == [0, 2, 1]  # the near-duplicate goes last
    assert mmr_order(scores, similarity, 0.5, 2) == [0, 2]
    assert mmr_order([], [], 0.5, 3) == []
