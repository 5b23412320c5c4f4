"""Rank agreement does not rank noise: values near 0 tie (issue 12 item 4)."""

import math

import pytest

from interfuse.explain.posthoc import rank_agreement
from interfuse.ranks import TIE_TOLERANCE, tied_near_zero
from interfuse.results import Explanation


def _explanation(name: str, scores: dict[str, float | None]) -> Explanation:
    return Explanation(name, name, name, scores)


def test_values_near_zero_are_tied():
    assert tied_near_zero([1.0, 0.5, 0.004, -0.002]) == [1.0, 0.5, 0.0, 0.0]
    assert tied_near_zero([0.0, 0.0]) == [0.0, 0.0]
    assert TIE_TOLERANCE == 0.01


def test_agreement_is_not_lowered_by_the_order_of_near_zero_values():
    """Two methods agree on the three real terms and give the two spurious ones tiny values in
    opposite orders: without ties ρ = 0.8, with ties 1."""
    terms = ["a", "b", "c", "d", "e"]
    x = _explanation("x", {"a": 0.6, "b": 0.3, "c": 0.1, "d": 1e-4, "e": 2e-4})
    y = _explanation("y", {"a": 0.5, "b": 0.35, "c": 0.15, "d": 3e-4, "e": 1e-4})
    rho = rank_agreement(terms, {"x": x, "y": y})["all"]["x~y"]
    assert rho == pytest.approx(1.0)


def test_a_method_without_interaction_values_is_compared_on_unimodal_terms_only():
    terms = ["a", "b", "a*b"]
    full = _explanation("full", {"a": 0.5, "b": 0.3, "a*b": 0.2})
    modal = _explanation("modal", {"a": 0.4, "b": 0.1, "a*b": None})
    agreement = rank_agreement(terms, {"full": full, "modal": modal})
    assert agreement["unimodal"]["full~modal"] == pytest.approx(1.0)
    assert "full~modal" not in agreement["all"]
    assert not any(math.isnan(v) for v in agreement["unimodal"].values())


def test_a_nan_value_is_not_tied_at_zero():
    """NaN is not a magnitude below the tolerance: it stays NaN wherever it stands, so the
    agreement is NaN (as scipy's Spearman ρ) instead of a number from a NaN read as 0."""
    nan = math.nan
    tied = tied_near_zero([1.0, nan, 0.5])
    assert tied[0] == 1.0 and math.isnan(tied[1]) and tied[2] == 0.5
    assert math.isnan(tied_near_zero([nan, 1.0, 0.5])[0])
    terms = ["a", "b", "c"]
    x = _explanation("x", {"a": 1.0, "b": nan, "c": 0.5})
    y = _explanation("y", {"a": 1.0, "b": 0.2, "c": 0.5})
    assert math.isnan(rank_agreement(terms, {"x": x, "y": y})["all"]["x~y"])
