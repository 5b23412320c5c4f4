"""Games over modalities: Shapley efficiency, exact Möbius recovery, interaction indices and
rank correlation, checked against brute-force formulas (and shapiq when installed)."""

import itertools
import math

import numpy as np
import pytest
from scipy.stats import spearmanr

from interfuse.explain.coalitions import (
    all_coalitions,
    coalition_name,
    interaction_indices,
    parse_coalition,
    performance_game,
)
from interfuse.games import mobius_transform, shapley_values
from interfuse.ranks import spearman

PLAYERS = ("text", "audio", "video", "eeg")


def random_game(players, seed=0):
    rng = np.random.default_rng(seed)
    return {s: float(rng.normal()) if s else 0.0 for s in all_coalitions(players)}


@pytest.mark.parametrize("seed", range(5))
def test_shapley_values_sum_to_v_all_minus_v_empty(seed):
    game = random_game(PLAYERS, seed)
    game[frozenset()] = 0.7  # efficiency holds for any v(∅)
    phi = shapley_values(game, PLAYERS)
    assert sum(phi.values()) == pytest.approx(game[frozenset(PLAYERS)] - 0.7, abs=1e-12)


def test_mobius_recovers_the_coefficients_of_a_polynomial_game():
    """v(S) = Σ_T c_T Π_{i∈T} [i ∈ S]: a multilinear polynomial in the membership indicators."""
    coefficients = {
        frozenset(): 0.5,
        frozenset({"text"}): 2.0,
        frozenset({"audio"}): -1.0,
        frozenset({"text", "video"}): 3.0,
        frozenset({"audio", "video", "eeg"}): -0.25,
        frozenset(PLAYERS): 1.5,
    }

    def v(s):
        return sum(c for t, c in coefficients.items() if t <= s)

    game = {s: v(s) for s in all_coalitions(PLAYERS)}
    dividends = mobius_transform(game, PLAYERS)
    for s, d in dividends.items():
        assert d == pytest.approx(coefficients.get(s, 0.0), abs=1e-12), s


def brute_force_interaction(game, players, pair):
    """Grabisch–Roubens index from its definition: weighted discrete second derivatives."""
    i, j = pair
    m = len(players)
    rest = [p for p in players if p not in pair]
    total = 0.0
    for k in range(len(rest) + 1):
        for s in itertools.combinations(rest, k):
            s = frozenset(s)
            weight = math.factorial(k) * math.factorial(m - k - 2) / math.factorial(m - 1)
            delta = game[s | {i, j}] - game[s | {i}] - game[s | {j}] + game[s]
            total += weight * delta
    return total


@pytest.mark.parametrize("seed", range(3))
def test_interaction_index_matches_its_definition(seed):
    game = random_game(PLAYERS, seed)
    index = interaction_indices(game, PLAYERS, max_order=2)
    phi = shapley_values(game, PLAYERS)
    assert len(index) == 4 + 6
    for p in PLAYERS:
        assert index[frozenset({p})] == pytest.approx(phi[p], abs=1e-12)
    for pair in itertools.combinations(PLAYERS, 2):
        expected = brute_force_interaction(game, PLAYERS, pair)
        assert index[frozenset(pair)] == pytest.approx(expected, abs=1e-12)


def test_pure_pair_game():
    """XOR-like game: value only when both of a pair are present."""
    game = {s: 1.0 if {"text", "audio"} <= s else 0.0 for s in all_coalitions(PLAYERS)}
    dividends = mobius_transform(game, PLAYERS)
    assert max(dividends, key=dividends.get) == frozenset({"text", "audio"})
    phi = shapley_values(game, PLAYERS)
    assert phi["text"] == pytest.approx(0.5) and phi["video"] == pytest.approx(0.0)
    index = interaction_indices(game, PLAYERS, 2)
    assert index[frozenset({"text", "audio"})] == pytest.approx(1.0)


def test_performance_game_signs():
    metrics = {
        frozenset(): {"loss": 0.7, "accuracy": 0.5},
        frozenset({"a"}): {"loss": 0.2, "accuracy": 0.9},
    }
    assert performance_game(metrics, "loss")[frozenset({"a"})] == pytest.approx(0.5)
    assert performance_game(metrics, "accuracy")[frozenset({"a"})] == pytest.approx(0.4)
    assert performance_game(metrics, "loss")[frozenset()] == 0.0
    with pytest.raises(ValueError, match="unknown metric"):
        performance_game(metrics, "f1")


def test_coalition_names_round_trip():
    for s in all_coalitions(PLAYERS):
        assert parse_coalition(coalition_name(s, PLAYERS)) == s
    assert coalition_name(frozenset(), PLAYERS) == "{}"
    assert coalition_name(frozenset({"eeg", "text"}), PLAYERS) == "{text,eeg}"


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(size=7), rng.normal(size=7)
        x[2] = x[4]  # ties
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert math.isnan(spearman([1.0], [2.0]))
    assert math.isnan(spearman([1.0, 1.0], [1.0, 2.0]))


def test_against_shapiq_when_available():
    """Optional oracle (shapiq is not a dependency): exact SV and Möbius of the same game."""
    shapiq = pytest.importorskip("shapiq")
    game = random_game(PLAYERS, 7)

    def value_function(coalitions):
        return np.array([game[frozenset(p for p, x in zip(PLAYERS, c) if x)] for c in coalitions])

    exact = shapiq.ExactComputer(n_players=len(PLAYERS), game=value_function)
    sv = exact("SV", order=1)
    phi = shapley_values(game, PLAYERS)
    for i, p in enumerate(PLAYERS):
        assert sv[(i,)] == pytest.approx(phi[p], abs=1e-9)
    moebius = exact("Moebius", order=len(PLAYERS))
    dividends = mobius_transform(game, PLAYERS)
    for s, d in dividends.items():
        if s:
            key = tuple(i for i, p in enumerate(PLAYERS) if p in s)
            assert moebius[key] == pytest.approx(d, abs=1e-9)
