"""Relevance estimators on held-out data (issue 12): exact and sampled Shapley values, intervals
with a known truth, verdicts, results.json."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from interfuse.explain.estimators import (
    ESTIMATORS,
    HEADLINE,
    EstimateSettings,
    HeldoutTerms,
    estimate_all,
    term_shapley,
)
from interfuse.explain.trust import bootstrap_means
from interfuse.games import (
    antithetic_orders,
    coalition_values,
    order_shapley,
    prefix_masks,
    shapley_table,
    shapley_values,
)
from interfuse.results import SCHEMA, RunResult


def _random_games(m: int, games: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2**m, games))


def test_exact_table_matches_the_definition():
    """shapley_table on 3 games at once = shapley_values (the subset formula) game by game."""
    m, players = 4, ["a", "b", "c", "d"]
    table = _random_games(m, 3, 0)
    phi = shapley_table(table, m)
    for j in range(3):
        lookup = {}
        for code in range(2**m):
            lookup[frozenset(p for i, p in enumerate(players) if code >> i & 1)] = table[code, j]
        expected = shapley_values(coalition_values(lookup.__getitem__, players), players)
        assert phi[:, j] == pytest.approx([expected[p] for p in players], abs=1e-12)
    assert phi.sum(axis=0) == pytest.approx(table[-1] - table[0])  # efficiency


def test_sampled_estimator_is_unbiased():
    """The mean of the antithetic order estimator over independent seeds is the exact value
    (within 4 standard errors of that mean), and its own error estimate is honest."""
    m = 5
    table = _random_games(m, 1, 1)[:, 0]
    exact = shapley_table(table, m)
    estimates, errors = [], []
    for seed in range(200):
        orders = antithetic_orders(m, 4, seed)
        masks = prefix_masks(orders)
        codes = (masks * (1 << np.arange(m))).sum(axis=2)
        mean, per_pair = order_shapley(table[codes], orders)
        estimates.append(mean)
        errors.append(per_pair.std(axis=0, ddof=1) / 2)
    estimates = np.array(estimates)
    se_of_mean = estimates.std(axis=0, ddof=1) / math.sqrt(len(estimates))
    assert np.all(np.abs(estimates.mean(axis=0) - exact) < 4 * se_of_mean + 1e-12)
    # the per-run Monte-Carlo error estimate matches the spread over runs (within 35 %)
    ratio = np.mean(errors, axis=0) / estimates.std(axis=0, ddof=1)
    assert np.all((ratio > 0.65) & (ratio < 1.35)), ratio


def test_orders_are_antithetic_and_prefixes_grow():
    orders = antithetic_orders(4, 3, 0)
    assert orders.shape == (6, 4)
    assert (orders[1] == orders[0][::-1]).all()
    masks = prefix_masks(orders)
    assert masks.shape == (6, 5, 4)
    assert (masks.sum(axis=2) == np.arange(5)).all()
    assert masks[0, 1, orders[0, 0]] and masks[0, 1].sum() == 1


WEIGHTS = {"a": 1.0, "b": 0.5, "a*b": 0.25, "noise": 0.0}
"""Additive regression head: c_t = w_t z_t, z_t ~ N(0, 1) independent, y = Σ c_t + ε."""


def _additive(n: int, generator: torch.Generator) -> HeldoutTerms:
    parts = {t: w * torch.randn(n, 1, generator=generator) for t, w in WEIGHTS.items()}
    parts["noise"] = 0.3 * torch.randn(n, 1, generator=generator)  # used by the model, no signal
    outputs = sum(parts.values()) - parts["noise"] + parts["noise"]
    targets = (
        sum(p for t, p in parts.items() if t != "noise") + torch.randn(n, 1, generator=generator)
    )[:, 0]
    return HeldoutTerms("regression", outputs, parts, targets, dict.fromkeys(parts, 0.25))


def test_intervals_cover_the_closed_form_truth():
    """For squared error and independent centred contributions, the mean-replacement loss game
    is additive, v(T) = Σ_{t∈T} (2 Cov(c_t, y − f) + Var c_t) = Σ_{t∈T} w_t², so the Shapley
    share of a signal term is w_t² / Σ w² and the noise term's value is −Var(noise) < 0
    (share 0). The contribution-variance share of a term is its variance over the total. Over
    independent validation sets the 95 % intervals cover these values at least 85 % of the
    time, and the noise term is never called relevant more often than the 5 % test allows."""
    total = sum(w**2 for w in WEIGHTS.values())
    shapley_truth = {t: w**2 / total for t, w in WEIGHTS.items()}
    var_total = total + 0.09
    variance_truth = {
        **{t: w**2 / var_total for t, w in WEIGHTS.items()},
        "noise": 0.09 / var_total,
    }
    generator = torch.Generator().manual_seed(0)
    replicates = 40
    hits = {name: dict.fromkeys(WEIGHTS, 0) for name in ("shapley", "variance")}
    noise_relevant = signal_missed = 0
    for r in range(replicates):
        terms = _additive(400, generator)
        settings = EstimateSettings(draws=300, seed=r)
        shap = ESTIMATORS.get("shapley").estimate(terms, settings)
        var = ESTIMATORS.get("variance").estimate(terms, settings)
        for t in WEIGHTS:
            hits["shapley"][t] += shap.terms[t].low <= shapley_truth[t] <= shap.terms[t].high
            hits["variance"][t] += var.terms[t].low <= variance_truth[t] <= var.terms[t].high
        noise_relevant += shap.terms["noise"].verdict == "relevant"
        signal_missed += (
            shap.terms["a"].verdict != "relevant" or shap.terms["b"].verdict != "relevant"
        )
    for name, counts in hits.items():
        coverage = {t: h / replicates for t, h in counts.items()}
        assert all(c >= 0.85 for c in coverage.values()), (name, coverage)
    assert noise_relevant / replicates <= 0.1 and signal_missed / replicates <= 0.05


def test_sampled_shapley_agrees_with_exact(monkeypatch):
    """Above the exact limit the order estimator is used; on the same data it agrees with the
    exact values within its Monte-Carlo error, and its interval is at least as wide."""
    terms = _additive(300, torch.Generator().manual_seed(3))
    estimator = ESTIMATORS.get("shapley")
    exact = estimator.estimate(terms, EstimateSettings(draws=200))
    monkeypatch.setattr(type(estimator), "exact_max_terms", 0)
    sampled = estimator.estimate(terms, EstimateSettings(draws=200))
    assert exact.details["exact"] and not sampled.details["exact"]
    se = sampled.details["monte_carlo_se"] / exact.details["total"]
    for t in terms.terms:
        assert abs(sampled.terms[t].share - exact.terms[t].share) <= 5 * se + 1e-9
    phi, error, is_exact = term_shapley(
        lambda masks: estimator.losses(terms, masks, 0), len(terms.terms), 0, 8, exact_max_terms=0
    )
    assert not is_exact and error is not None and phi.shape == (4, 300)


def test_large_splits_stay_exact_while_sampling_would_cost_more(monkeypatch):
    """The cell cap sends a game to the sampled estimator only when that evaluates fewer
    coalitions: 3 terms need 8 coalitions exactly but 2·128·4 = 1024 sampled (it used to switch to
    sampling once 2^K·N exceeded the cap, e.g. K = 3 above 4.2 M samples, K = 10 above 32 768)."""
    import interfuse.explain.estimators as estimators

    monkeypatch.setattr(estimators, "EXACT_MAX_CELLS", 2**10)  # 2^3 · 200 = 1600 cells > cap
    rows = []

    def losses(masks):
        rows.append(len(masks))
        return masks.double().sum(dim=1, keepdim=True).expand(-1, 200).contiguous()

    phi, error, exact = term_shapley(losses, 3)
    assert exact and error is None and sum(rows) == 1 + 2**3
    assert phi.mean(axis=1) == pytest.approx([-1.0, -1.0, -1.0])
    _, _, exact = term_shapley(losses, 12, pairs=2)  # 4096 > 2·2·13: sampling is cheaper
    assert not exact


def test_refit_game_gives_noise_no_credit():
    """The cross-fitted recalibrated game: a term without signal does not lower the held-out
    loss (its share is ~0), the signal terms keep the order of their weights."""
    terms = _additive(600, torch.Generator().manual_seed(5))
    refit = ESTIMATORS.get("shapley_refit").estimate(terms, EstimateSettings(draws=200))
    shares = refit.shares
    assert shares["a"] > shares["b"] > shares["a*b"] > shares["noise"]
    assert shares["noise"] < 0.01 and refit.terms["noise"].verdict == "not significant"


def test_every_registered_estimator_reports_every_term():
    terms = _additive(100, torch.Generator().manual_seed(1))
    results = estimate_all(terms, EstimateSettings(draws=50))
    assert list(results) == ESTIMATORS.names() and HEADLINE in results
    for estimate in results.values():
        assert list(estimate.terms) == terms.terms
        assert sum(estimate.shares.values()) == pytest.approx(1.0)
        for e in estimate.terms.values():
            if estimate.has_intervals:
                assert 0.0 <= e.low <= e.high <= 1.0 and e.verdict in (
                    "relevant",
                    "not significant",
                )
            else:
                assert math.isnan(e.low) and e.verdict == ""


def test_run_reports_estimates_and_round_trips(motif_demo_run):
    """The demo's noise modality m3 is not significant under the headline, m0 and m1 are; the
    estimates survive results.json."""
    _, result, _ = motif_demo_run
    estimates = result.estimates
    assert estimates is not None and estimates.split == "val" and estimates.headline == HEADLINE
    best = estimates.best
    assert best.terms["m3"].verdict == "not significant"
    assert best.terms["m0"].verdict == "relevant" and best.terms["m1"].verdict == "relevant"
    assert set(estimates.estimates) == set(ESTIMATORS.names())
    assert RunResult.from_json(result.to_json()).estimates == estimates


def test_results_of_schema_2_still_load(motif_demo_run):
    _, result, _ = motif_demo_run
    values = result.to_dict()
    values.pop("estimates")
    values["schema"] = "interfuse-run/2"
    old = RunResult.from_dict(values)
    assert old.estimates is None and old.relevance == result.relevance


def test_results_of_schema_3_still_load(motif_demo_run):
    """Schema /3 had no ``selected_attempt``: it loads as None and the report omits it."""
    _, result, _ = motif_demo_run
    values = result.to_dict()
    values.pop("selected_attempt")
    values["schema"] = "interfuse-run/3"
    old = RunResult.from_dict(values)
    assert old.selected_attempt is None and old.estimates == result.estimates
    assert old.schema == SCHEMA and result.selected_attempt is not None


def test_results_of_schema_4_still_load_and_judge_convergence_by_the_run(motif_demo_run):
    """Schema /4 had no ``selected_attempt_end``: convergence falls back to the run's last
    epoch (the selected model from an earlier attempt counts as converged)."""
    _, result, _ = motif_demo_run
    values = result.to_dict()
    values.pop("selected_attempt_end")
    values["schema"] = "interfuse-run/4"
    old = RunResult.from_dict(values)
    assert old.selected_attempt_end is None and old.schema == SCHEMA
    assert result.selected_attempt_end is not None
    earlier = dataclasses.replace(old, best_epoch=3, epochs_run=9, stopped_early=False)
    assert earlier.converged
    assert not dataclasses.replace(earlier, selected_attempt_end=3).converged


@pytest.mark.parametrize("task", ["classification", "multilabel"])
def test_refit_game_of_constant_targets_credits_no_term(task):
    """A held-out split with one class (every label constant): the best constant already
    predicts every sample with certainty (its loss → 0 as the bias grows), so no coalition can
    lower the loss and every term's refit share is 0, not a split of the optimiser's residue
    (~1e-11 nats, which used to be called "relevant")."""
    generator = torch.Generator().manual_seed(0)
    parts = {t: torch.randn(200, 2, generator=generator) for t in ("a", "b", "c")}
    targets = torch.ones(200, dtype=torch.long) if task == "classification" else torch.zeros(200, 2)
    terms = HeldoutTerms(task, sum(parts.values()), parts, targets, dict.fromkeys(parts, 1 / 3))
    refit = ESTIMATORS.get("shapley_refit").estimate(terms, EstimateSettings(draws=200))
    for e in refit.terms.values():
        assert e.share == 0.0 and e.verdict == "not significant"


@pytest.mark.parametrize(
    "values, named",
    [
        ({"draws": 0}, "draws"),
        ({"level": 95}, "level"),  # a percentage instead of a fraction
        ({"alpha": 5}, "alpha"),
        ({"margin": -0.1}, "margin"),
    ],
)
def test_settings_out_of_range_are_refused_by_name(values, named):
    """A bad setting is a one-line error naming it (it used to surface from inside torch, e.g.
    "quantile() q must be in the range [0, 1] but got -47" for level=95, or an empty torch.cat
    for draws=0)."""
    with pytest.raises(ValueError, match=named):
        EstimateSettings(**values)
    with pytest.raises(ValueError, match="draws"):
        bootstrap_means(torch.zeros(3, 1), draws=0)
