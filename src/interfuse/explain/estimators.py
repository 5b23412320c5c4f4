"""Relevance estimators of a trained MNL model, on held-out data, with intervals and verdicts.

The head's output is additive over terms: ``f(x) = b + Σ_t c_t(x)`` with ``c_t = W_t z_t``
(:func:`~interfuse.explain.term_ablation.term_contributions`). Every estimator turns the
validation split's contributions into one share per term (non-negative, summing to 1):

* ``beta`` — the paper's quantity: ``β_t / Σβ`` from the trained weights (the closed form of the
  group-norm regulariser). A function of the weights only: it has no sampling distribution
  over held-out data, so no interval and no verdict.
* ``variance`` — the held-out variance of each term's contribution,
  ``V_t = mean_i ‖c_t(x_i) − c̄_t‖²``, share ``V_t / Σ_s V_s`` (how much each term moves the
  prediction on held-out data).
* ``shapley`` — Shapley values (Shapley 1953) over the model's terms of the held-out
  **log-loss game**. A term absent from a coalition ``T`` has its contribution replaced by its
  validation mean ``c̄_t`` (mean replacement, as in Lundberg & Lee 2017's KernelSHAP with a
  mean reference), so ``f_T(x) = b + Σ_{t∈T} c_t(x) + Σ_{t∉T} c̄_t`` and

      v(T) = mean_i [ℓ(f_∅(x_i), y_i) − ℓ(f_T(x_i), y_i)]

  is the loss reduction the terms in T bring on held-out data (nats for cross-entropy: an
  estimate of the information the model extracts, the quantity the synthetic ground truth is
  defined from). ``φ_t`` is exact over all ``2^K`` coalitions for ``K ≤ EXACT_MAX_TERMS``
  (one sum and one loss per coalition, vectorised) unless the split is so large that sampling
  is cheaper (:func:`term_shapley`); else it is estimated from ``SAMPLED_PAIRS`` antithetic pairs
  of random orders (:func:`~interfuse.games.order_shapley`) and the Monte-Carlo error is folded
  into the interval. By efficiency ``Σ_t φ_t = v(all)``;
  the share is ``φ_t⁺ / Σ_s φ_s⁺`` (a term whose presence *raises* the held-out loss gets 0).
* ``shapley_refit`` — the same Shapley shares of a held-out loss game in which each coalition's
  terms are **recalibrated**: ``f_T = b_T + Σ_{t∈T} a_{T,t} c_t`` with one scale per term and a
  bias fitted per coalition on one half of the held-out samples and evaluated on the other
  (2-fold cross-fitting, :func:`refit_losses`), so ``v(T)`` is the held-out loss reduction of the
  best use of the terms in ``T`` rather than of their use inside the full head (a weak term that
  the full head down-weights still shows what it carries). Exact up to
  ``REFIT_EXACT_MAX_TERMS`` terms, else ``REFIT_PAIRS`` antithetic pairs of orders. This is the
  :data:`HEADLINE`.

Uncertainty (Efron 1979): every estimator above except ``beta`` is a function of means of
per-sample quantities (for ``shapley``, per-sample Shapley values of the per-sample games,
whose means are the Shapley values of the mean game by linearity), so one paired bootstrap
(:func:`~interfuse.explain.trust.bootstrap_means`, the same resamples for every estimator) gives
percentile intervals of the shares. The mean ``c̄_t`` is held fixed across resamples.

Verdict: ``"relevant"`` when the one-sided bootstrap test of H0: ``share_t ≤ MARGIN`` rejects at
``ALPHA`` (``p = (#{resamples with share ≤ MARGIN} + 1) / (draws + 1)``), else ``"not
significant"``. The margin is a practical-relevance threshold: a term that accounts for at most
1 % of the model's held-out loss reduction is not called relevant however precisely that is
measured. A term built from noise cannot lower the expected held-out loss (φ_t ≤ 0 in
expectation), so its false-positive rate is at most ``ALPHA`` (asymptotically).

Adding an estimator: a class with ``name``, ``label``, ``description``, ``unit`` and
``estimate(terms, settings)`` decorated with :func:`register_estimator`; ``fit``, results.json,
the report and ``interfuse explain`` pick it up.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from ..data.batching import TensorData
from ..games import antithetic_orders, order_shapley, prefix_masks, shapley_table
from ..metrics import per_sample_loss
from ..model import MultimodalModel
from ..registry import Registry
from ..results import Explanation, RelevanceEstimate, RelevanceEstimates, TermEstimate
from .base import ExplainContext, register_explainer
from .term_ablation import term_contributions
from .trust import bootstrap_means

__all__ = [
    "ALPHA",
    "ESTIMATORS",
    "EXACT_MAX_TERMS",
    "HEADLINE",
    "MARGIN",
    "SAMPLED_PAIRS",
    "EstimateSettings",
    "Estimator",
    "HeldoutTerms",
    "estimate_all",
    "heldout_terms",
    "refit_losses",
    "register_estimator",
    "relevance_estimates",
    "term_shapley",
]

HEADLINE = "shapley_refit"
"""The estimator the report leads with: the most faithful in the fidelity suite (lowest mean L1
to the ground truth over its eight configurations: 0.084 vs 0.097 for ``shapley``, 0.19 for
``variance`` and 0.37 for ``beta``; BENCHMARKS.md §1.1 gives the numbers)."""

MARGIN = 0.01
"""Practical-relevance margin: a term is "relevant" only if its share clearly exceeds this."""

ALPHA = 0.05
"""False-positive rate per term of the "relevant" verdict (for terms with share ≤ MARGIN)."""

EXACT_MAX_TERMS = 14
"""Exact Shapley values up to this many terms (2^K coalitions); sampled above."""

EXACT_MAX_CELLS = 2**25
"""… and while ``2^K × N`` per-sample losses fit this many cells (256 MiB in float64), or while
``2^K`` is no more than the ``2·pairs·(K+1)`` coalitions the sampled estimator would evaluate."""

SAMPLED_PAIRS = 128
"""Antithetic pairs of random orders of the sampled Shapley estimator (256 orders)."""

CHUNK = 2048
"""Coalitions evaluated at once."""

REFIT_ITERATIONS = 50
"""L-BFGS iterations of each recalibration (:func:`refit_losses`)."""

REFIT_EXACT_MAX_TERMS = 10
"""The recalibrated game fits one small model per coalition: exact up to 2^10 coalitions."""

REFIT_PAIRS = 64
"""Antithetic pairs of orders of the sampled recalibrated game (128 orders)."""

REFIT_RIDGE = 1e-3
"""Ridge on the recalibration scales (towards the trained head's 1)."""


@dataclass(frozen=True)
class HeldoutTerms:
    """A fixed model's additive head on one split: ``outputs = rest + Σ_t parts[t]``.

    ``outputs`` and every ``parts[t]`` are ``(N, C)``; ``beta`` the model's β shares.
    """

    task: str
    outputs: Tensor
    parts: dict[str, Tensor]
    targets: Tensor
    beta: dict[str, float]

    @property
    def terms(self) -> list[str]:
        return list(self.parts)


@dataclass(frozen=True)
class EstimateSettings:
    """Bootstrap and test settings shared by every estimator of one call."""

    draws: int = 1000
    level: float = 0.95
    alpha: float = ALPHA
    margin: float = MARGIN
    seed: int = 0

    def __post_init__(self) -> None:
        if self.draws < 1:
            raise ValueError(f"draws (bootstrap resamples) must be >= 1, got {self.draws}")
        for name, value in (("level", self.level), ("alpha", self.alpha)):
            if not 0 < value < 1:
                raise ValueError(f"{name} must be a fraction in (0, 1) (0.95, not 95), got {value}")
        if not 0 <= self.margin < 1:
            raise ValueError(f"margin must be a share in [0, 1), got {self.margin}")


@runtime_checkable
class Estimator(Protocol):
    """``name`` (registry key), ``label`` (column heading), ``description``, ``unit`` of the raw
    value, and ``estimate``."""

    name: str
    label: str
    description: str
    unit: str

    def estimate(self, terms: HeldoutTerms, settings: EstimateSettings) -> RelevanceEstimate: ...


ESTIMATORS: Registry[Estimator] = Registry("relevance estimator")

register_estimator = ESTIMATORS.instance_decorator(Estimator)
"""Class decorator: register one instance of an estimator class under its ``name``."""


def positive_shares(values: Tensor) -> Tensor:
    """``v⁺ / Σ v⁺`` along the last axis (all zero when no value is positive)."""
    positive = values.clamp(min=0)
    total = positive.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, positive / total.clamp(min=1e-300), torch.zeros_like(positive))


def _estimate(
    estimator: Estimator,
    terms: list[str],
    point: Tensor,
    resampled: Tensor,
    settings: EstimateSettings,
    details: dict[str, object] | None = None,
) -> RelevanceEstimate:
    """Shares, percentile intervals and margin tests from point values ``(K,)`` and the values
    of every bootstrap resample ``(B, K)``."""
    shares = positive_shares(point)
    boot = positive_shares(resampled)
    tail = (1.0 - settings.level) / 2
    low = torch.quantile(boot, tail, dim=0)
    high = torch.quantile(boot, 1.0 - tail, dim=0)
    p_values = ((boot <= settings.margin).double().sum(dim=0) + 1) / (len(boot) + 1)
    return RelevanceEstimate(
        method=estimator.name,
        label=estimator.label,
        description=estimator.description,
        unit=estimator.unit,
        terms={
            t: TermEstimate(
                share=float(shares[k]),
                value=float(point[k]),
                low=float(low[k]),
                high=float(high[k]),
                p_value=float(p_values[k]),
                verdict="relevant" if float(p_values[k]) < settings.alpha else "not significant",
            )
            for k, t in enumerate(terms)
        },
        details=details or {},
    )


@register_estimator
class BetaShares:
    name = "beta"
    label = "β share"
    description = "β_t / Σβ of the trained head (weights only: no held-out interval)"
    unit = "β share"

    def estimate(self, terms: HeldoutTerms, settings: EstimateSettings) -> RelevanceEstimate:
        return RelevanceEstimate(
            self.name,
            self.label,
            self.description,
            self.unit,
            {t: TermEstimate(share=terms.beta[t], value=terms.beta[t]) for t in terms.terms},
        )


@register_estimator
class ContributionVariance:
    name = "variance"
    label = "variance share"
    description = "share of the held-out variance of the head output, Var(W_t z_t) / Σ_s Var"
    unit = "variance of W_t z_t (summed over outputs)"

    def estimate(self, terms: HeldoutTerms, settings: EstimateSettings) -> RelevanceEstimate:
        columns = torch.stack(
            [(c.double() - c.double().mean(dim=0)).pow(2).sum(dim=1) for c in terms.parts.values()],
            dim=1,
        )
        boot = bootstrap_means(columns, settings.draws, settings.seed)
        return _estimate(self, terms.terms, columns.mean(dim=0), boot, settings)


class _ShapleyEstimator:
    """Shared by the two loss games: per-sample Shapley values, bootstrap, Monte-Carlo error."""

    name = ""
    label = ""
    description = ""
    unit = "loss reduction (nats for cross-entropy)"
    exact_max_terms = EXACT_MAX_TERMS
    pairs = SAMPLED_PAIRS

    def losses(self, terms: HeldoutTerms, masks: Tensor, seed: int) -> Tensor:
        """Per-sample held-out losses ``(R, N)`` of the coalitions ``masks`` ``(R, K)``."""
        raise NotImplementedError

    def estimate(self, terms: HeldoutTerms, settings: EstimateSettings) -> RelevanceEstimate:
        phi, mc_error, exact = term_shapley(
            partial(self.losses, terms, seed=settings.seed),
            len(terms.terms),
            seed=settings.seed,
            pairs=self.pairs,
            exact_max_terms=self.exact_max_terms,
        )
        columns = torch.from_numpy(np.ascontiguousarray(phi.T))  # per-sample values (N, K)
        boot = bootstrap_means(columns, settings.draws, settings.seed)
        if mc_error is not None:
            # fold the Monte-Carlo error in: every resample gets an independent N(0, se²) draw
            generator = torch.Generator().manual_seed(settings.seed + 1)
            noise = torch.randn(boot.shape, generator=generator, dtype=torch.float64)
            boot = boot + noise * torch.from_numpy(mc_error)
        point = columns.mean(dim=0)
        k = len(terms.terms)
        details: dict[str, object] = {"exact": exact, "players": k, "total": float(point.sum())}
        details["coalitions" if exact else "orders"] = 2**k if exact else 2 * self.pairs
        if mc_error is not None:
            details["monte_carlo_se"] = float(np.max(mc_error))
        return _estimate(self, terms.terms, point, boot, settings, details)


@register_estimator
class MeanShapley(_ShapleyEstimator):
    name = "shapley"
    label = "loss Shapley share"
    description = (
        "Shapley value of the term in the held-out loss game, absent terms at their held-out "
        "mean (the trained head unchanged), as a share of the loss reduction of all terms"
    )

    def losses(self, terms: HeldoutTerms, masks: Tensor, seed: int) -> Tensor:
        base, deviations = _game_parts(terms)
        k, n = deviations.shape[0], deviations.shape[1]
        logits = base + (masks.double() @ deviations.reshape(k, -1)).reshape(len(masks), n, -1)
        return _losses(terms, logits)


@register_estimator
class RefitShapley(_ShapleyEstimator):
    name = "shapley_refit"
    label = "refit-loss Shapley share"
    description = (
        "Shapley value of the term in the held-out loss game where each coalition's terms are "
        "recalibrated (one scale per term and a bias, 2-fold cross-fitted on held-out data)"
    )

    exact_max_terms = REFIT_EXACT_MAX_TERMS
    pairs = REFIT_PAIRS

    def losses(self, terms: HeldoutTerms, masks: Tensor, seed: int) -> Tensor:
        return refit_losses(terms, masks, seed)


def refit_losses(
    terms: HeldoutTerms, masks: Tensor, seed: int = 0, iterations: int = REFIT_ITERATIONS
) -> Tensor:
    """Out-of-fold per-sample losses ``(R, N)`` of each coalition's recalibrated predictor.

    For coalition T (row of ``masks``) the predictor ``b_T + Σ_{t∈T} a_{T,t} c_t(x)`` (one scale
    per term, a bias per output) is fitted by L-BFGS to minimise the loss on one half of the
    held-out samples and evaluated on the other half, and vice versa (2-fold cross-fitting, so a
    term carrying no signal cannot lower the loss in expectation). The scales start at 1 (the
    trained head) and the bias at the mean-replacement value; the empty coalition fits the
    bias only (the best constant). A ridge ``REFIT_RIDGE · Σ (a − 1)²`` keeps separable
    coalitions finite.

    Held-out targets of one class (every label constant): the best constant predicts every
    sample with certainty (its loss → 0 as the bias grows), so every coalition's loss is 0
    (``v(T) = 0``), not the residue where the optimiser stops.
    """
    parts = torch.stack([terms.parts[t].double() for t in terms.terms])  # (K, N, C)
    rest = terms.outputs.double() - parts.sum(dim=0)  # (N, C): the head's bias
    n = parts.shape[1]
    if terms.task != "regression" and bool((terms.targets == terms.targets[0]).all()):
        return torch.zeros(len(masks), n, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    fold = torch.randperm(n, generator=generator) % 2
    mask = masks.double()
    out = torch.empty(len(masks), n, dtype=torch.float64)
    for f in (0, 1):
        train, test = fold != f, fold == f
        out[:, test] = _refit_fold(terms, parts, rest, mask, train, test, iterations)
    return out


def _refit_fold(
    terms: HeldoutTerms,
    parts: Tensor,
    rest: Tensor,
    mask: Tensor,
    train: Tensor,
    test: Tensor,
    iterations: int,
) -> Tensor:
    """Fit every coalition's scales and bias on ``train``; losses on ``test`` ``(R, n_test)``."""
    absent_mean = ((1 - mask) @ parts[:, train].mean(dim=1)) + rest[train].mean(dim=0)
    scale = torch.ones_like(mask, requires_grad=True)
    bias = absent_mean.clone().requires_grad_(True)
    fit_parts, targets = parts[:, train], terms.targets[train]
    optimiser = torch.optim.LBFGS(
        [scale, bias],
        max_iter=iterations,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
    )

    def closure() -> Tensor:
        optimiser.zero_grad()
        logits = bias[:, None, :] + torch.einsum("rk,knc->rnc", scale * mask, fit_parts)
        loss = _losses(terms, logits, targets, differentiable=True).mean(dim=1).sum()
        loss = loss + REFIT_RIDGE * ((scale - 1) * mask).pow(2).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        logits = bias[:, None, :] + torch.einsum("rk,knc->rnc", scale * mask, parts[:, test])
        return _losses(terms, logits, terms.targets[test])


def term_shapley(
    losses: Callable[[Tensor], Tensor],
    k: int,
    seed: int = 0,
    pairs: int = SAMPLED_PAIRS,
    exact_max_terms: int = EXACT_MAX_TERMS,
) -> tuple[NDArray[np.float64], NDArray[np.float64] | None, bool]:
    """Per-sample Shapley values ``(K, N)`` of the game ``v_i(T) = ℓ_i(∅) − ℓ_i(T)`` given the
    per-sample losses of coalitions (``losses(masks (R, K)) -> (R, N)``), the Monte-Carlo
    standard error of their means ``(K,)`` (``None`` when exact) and whether they are exact.

    Exact over the ``2^K`` coalitions (:func:`~interfuse.games.shapley_table`) for
    ``K ≤ exact_max_terms`` while ``2^K·N ≤ EXACT_MAX_CELLS`` or ``2^K ≤ 2·pairs·(K+1)`` (the
    sampled estimator evaluates ``K+1`` coalitions per order, so it would cost more); else from
    ``pairs`` antithetic pairs of random orders (:func:`~interfuse.games.order_shapley`).
    """
    empty = losses(torch.zeros(1, k, dtype=torch.bool))
    n = empty.shape[1]
    cheaper = 2**k <= 2 * pairs * (k + 1)
    if k <= exact_max_terms and (2**k * n <= EXACT_MAX_CELLS or cheaper):
        bits = torch.arange(k)
        rows = []
        for start in range(0, 2**k, CHUNK):
            codes = torch.arange(start, min(start + CHUNK, 2**k))
            rows.append(losses(((codes[:, None] >> bits) & 1).bool()))
        table = (empty - torch.cat(rows)).numpy()
        return shapley_table(table, k), None, True
    orders = antithetic_orders(k, pairs, seed)
    masks = torch.from_numpy(prefix_masks(orders).reshape(-1, k))
    values = torch.cat([empty - losses(masks[i : i + CHUNK]) for i in range(0, len(masks), CHUNK)])
    mean, per_pair = order_shapley(values.reshape(len(orders), k + 1, n).numpy(), orders)
    se = per_pair.std(axis=0, ddof=1) / math.sqrt(pairs) if pairs > 1 else np.zeros(k)
    return mean, se, False


def _game_parts(terms: HeldoutTerms) -> tuple[Tensor, Tensor]:
    """``f_∅`` ``(N, C)`` (every term at its mean) and the deviations ``c_t − c̄_t``
    ``(K, N, C)``."""
    parts = torch.stack([terms.parts[t].double() for t in terms.terms])
    means = parts.mean(dim=1, keepdim=True)
    base = terms.outputs.double() - parts.sum(dim=0) + means.sum(dim=0)
    return base, parts - means


def _losses(
    terms: HeldoutTerms,
    logits: Tensor,
    targets: Tensor | None = None,
    differentiable: bool = False,
) -> Tensor:
    """Per-sample losses of a stack of predictions ``(R, N, C)``: ``(R, N)``."""
    targets = terms.targets if targets is None else targets
    r, n = logits.shape[0], logits.shape[1]
    repeated = targets.repeat(r, *([1] * (targets.dim() - 1)))
    flat = logits.reshape(r * n, -1)
    return per_sample_loss(terms.task, flat, repeated, differentiable).reshape(r, n)


def heldout_terms(model: MultimodalModel, task: str, data: TensorData) -> HeldoutTerms:
    """Contributions of every term of ``model`` on ``data`` (one forward pass)."""
    outputs, parts = term_contributions(model, data)
    return HeldoutTerms(task, outputs, parts, data.targets, dict(model.relevance().shares))


def estimate_all(terms: HeldoutTerms, settings: EstimateSettings) -> dict[str, RelevanceEstimate]:
    """Every registered estimator, in registration order."""
    return {name: ESTIMATORS.get(name).estimate(terms, settings) for name in ESTIMATORS.names()}


def relevance_estimates(
    model: MultimodalModel,
    task: str,
    data: TensorData,
    draws: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    split: str = "val",
) -> RelevanceEstimates:
    """Every estimator on ``data`` (the validation split in ``fit``), with the headline."""
    if len(data) < 2:
        raise ValueError(f"relevance estimates need at least 2 held-out samples, got {len(data)}")
    settings = EstimateSettings(draws=draws, level=level, seed=seed)
    return RelevanceEstimates(
        headline=HEADLINE,
        estimates=estimate_all(heldout_terms(model, task, data), settings),
        level=level,
        alpha=settings.alpha,
        margin=settings.margin,
        draws=draws,
        split=split,
    )


@register_explainer
class HeldoutEstimators:
    """``interfuse explain``: the held-out estimators on the explained split, with intervals."""

    name = "estimators"
    label = "headline share"
    description = (
        "the headline relevance estimator's share of the term on the explained split "
        "(relevance estimators, docs/explain.md §8); details hold every registered estimator "
        "with 95 % intervals"
    )

    def explain(self, context: ExplainContext) -> Explanation:
        model = context.model
        names = list(model.term_names) if isinstance(model, MultimodalModel) else []
        if not names:
            return Explanation(self.name, self.label, self.description, {})
        terms = heldout_terms(model, context.task, context.data)
        settings = EstimateSettings(seed=context.seed)
        estimates = estimate_all(terms, settings)
        return Explanation(
            self.name,
            self.label,
            self.description,
            dict(estimates[HEADLINE].shares),
            {
                "headline": HEADLINE,
                "margin": settings.margin,
                **{k: e.to_dict() for k, e in estimates.items()},
            },
        )
