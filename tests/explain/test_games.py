from __future__ import annotations

import itertools

import numpy as np
import pytest

from interfuse.games import (
    MAX_PLAYERS,
    coalition_values,
    inverse_mobius,
    mobius_transform,
    shapley_values,
)

PLAYERS = ("a", "b", "c", "d", "e")


def random_game(players, seed=0):
    rng = np.random.default_rng(seed)
    return coalition_values(lambda s: rng.normal() if s else 0.0, players)


def brute_force_shapley(values, players):
    """Average marginal contribution over all orderings of the players."""
    totals = dict.fromkeys(players, 0.0)
    orders = list(itertools.permutations(players))
    for order in orders:
        coalition = frozenset()
        for p in order:
            totals[p] += values[coalition | {p}] - values[coalition]
            coalition = coalition | {p}
    return {p: t / len(orders) for p, t in totals.items()}


def test_coalition_values_calls_once_per_coalition():
    calls = []
    values = coalition_values(lambda s: calls.append(s) or len(s), PLAYERS)
    assert len(calls) == len(set(calls)) == 2 ** len(PLAYERS)
    assert set(values) == set(calls)
    assert values[frozenset(PLAYERS)] == len(PLAYERS)


def test_shapley_matches_permutation_average():
    values = random_game(PLAYERS, seed=1)
    expected = brute_force_shapley(values, PLAYERS)
    got = shapley_values(values, PLAYERS)
    assert list(got) == list(PLAYERS)
    for p in PLAYERS:
        assert got[p] == pytest.approx(expected[p], abs=1e-12)


def test_shapley_efficiency():
    values = coalition_values(lambda s: 3.0 + len(s) ** 2 - ("a" in s) * ("c" in s), PLAYERS)
    phi = shapley_values(values, PLAYERS)
    assert sum(phi.values()) == pytest.approx(values[frozenset(PLAYERS)] - values[frozenset()])


def test_shapley_symmetry_and_dummy():
    # b and c are interchangeable; e never changes the value
    def v(s):
        return 2.0 * ("a" in s) + (("b" in s) + ("c" in s)) ** 2 + 0.5 * ("a" in s) * ("d" in s)

    phi = shapley_values(coalition_values(v, PLAYERS), PLAYERS)
    assert phi["b"] == pytest.approx(phi["c"])
    assert phi["e"] == 0.0


def test_glove_game():
    # one left glove, two right gloves: a pair is worth 1
    players = ("L", "R1", "R2")
    values = coalition_values(lambda s: min("L" in s, len(s - {"L"})), players)
    phi = shapley_values(values, players)
    assert phi == pytest.approx({"L": 2 / 3, "R1": 1 / 6, "R2": 1 / 6})


def test_weighted_majority_game():
    # quota 4, weights 3, 2, 1, 1: the winning coalitions are A with anyone, and {B, C, D}
    weights = {"A": 3, "B": 2, "C": 1, "D": 1}
    values = coalition_values(lambda s: float(sum(weights[p] for p in s) >= 4), tuple(weights))
    phi = shapley_values(values, tuple(weights))
    assert phi == pytest.approx({"A": 1 / 2, "B": 1 / 6, "C": 1 / 6, "D": 1 / 6})


def test_mobius_recovers_polynomial_coefficients_exactly():
    rng = np.random.default_rng(3)
    coalitions = list(coalition_values(lambda s: 0.0, PLAYERS))
    coef = {s: float(rng.integers(-5, 6)) for s in coalitions}
    values = {s: sum(c for t, c in coef.items() if t <= s) for s in coalitions}
    assert mobius_transform(values, PLAYERS) == coef
    assert inverse_mobius(coef, PLAYERS) == values


def test_unanimity_game():
    # u_T(S) = [T ⊆ S]: dividend 1 on T only, Shapley 1/|T| to each member of T
    t = frozenset({"b", "d"})
    values = coalition_values(lambda s: float(t <= s), PLAYERS)
    dividends = mobius_transform(values, PLAYERS)
    assert dividends == {s: float(s == t) for s in dividends}
    assert shapley_values(values, PLAYERS) == pytest.approx(
        {"a": 0, "b": 0.5, "c": 0, "d": 0.5, "e": 0}
    )


def test_mobius_round_trip_and_shapley_from_dividends():
    values = random_game(PLAYERS, seed=4)
    dividends = mobius_transform(values, PLAYERS)
    back = inverse_mobius(dividends, PLAYERS)
    assert back.keys() == values.keys()
    assert np.allclose([back[s] for s in values], list(values.values()), atol=1e-12)
    # Harsanyi: φ_i = Σ_{T ∋ i} m(T) / |T|
    phi = shapley_values(values, PLAYERS)
    for p in PLAYERS:
        expected = sum(m / len(s) for s, m in dividends.items() if p in s)
        assert phi[p] == pytest.approx(expected, abs=1e-12)


def test_single_and_no_player():
    values = {frozenset(): 1.0, frozenset({"x"}): 3.5}
    assert shapley_values(values, ["x"]) == {"x": 2.5}
    assert mobius_transform(values, ["x"]) == {frozenset(): 1.0, frozenset({"x"}): 2.5}
    assert shapley_values({frozenset(): 1.0}, []) == {}


def test_missing_coalition_is_named():
    values = coalition_values(len, ("a", "b", "c"))
    del values[frozenset({"a", "c"})]
    for fn in (shapley_values, mobius_transform, inverse_mobius):
        with pytest.raises(ValueError, match=r"missing value for coalition \{a, c\}"):
            fn(values, ("a", "b", "c"))


def test_unknown_player_rejected():
    values = coalition_values(len, ("a", "b"))
    with pytest.raises(ValueError, match="unknown players"):
        shapley_values(values, ("a",))


def test_duplicate_players_rejected():
    with pytest.raises(ValueError, match="duplicate players"):
        coalition_values(len, ("a", "b", "a"))
    with pytest.raises(ValueError, match="duplicate players"):
        shapley_values({}, ("a", "a"))


def test_too_many_players_rejected_before_enumeration():
    players = [f"p{i}" for i in range(MAX_PLAYERS + 1)]
    calls = []
    with pytest.raises(ValueError, match=r"2\^M"):
        coalition_values(calls.append, players)
    assert calls == []
    for fn in (shapley_values, mobius_transform, inverse_mobius):
        with pytest.raises(ValueError, match=str(MAX_PLAYERS)):
            fn({}, players)
