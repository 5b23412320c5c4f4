"""Can the relevance be trusted? Held-out checks of a trained model (validation split only).

* :func:`learnt_verdict`: is the model clearly better than chance, and than its best single
  modality, on held-out data? (:class:`~interfuse.results.LearntVerdict`)
* :func:`relevance_evidence`: an interval of each term's held-out share and a verdict per term
  from removing only its block (:class:`~interfuse.results.RelevanceEvidence`, whose docstring
  says what the interval is an interval of).

Every statistic here is a mean of a per-sample quantity over the validation samples, so one
paired bootstrap (:func:`bootstrap_means`: the same resampled indices for every column) gives
intervals of all of them and of their differences. The test split is never used: it stays an
unbiased estimate of what was selected on validation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..data.task import TaskData
from ..fusion.mnl import relevance_from_norms
from ..inference import model_outputs
from ..metrics import per_sample_loss
from ..model import MultimodalModel
from ..results import LearntVerdict, RelevanceEvidence, TermEvidence
from .removal import ModalityRemoval, supports_masks
from .term_ablation import term_contributions

__all__ = [
    "ALPHA",
    "bootstrap_means",
    "chance_prediction",
    "evidence_from_contributions",
    "learnt_verdict",
    "relevance_evidence",
]

ALPHA = 0.05
"""False-positive rate per term of the "relevant" verdict."""

DRAWS = 1000
LEVEL = 0.95
MARGIN = 0.01
"""A gain is "clear" when its one-sided lower bound exceeds this fraction of the chance loss."""


def bootstrap_means(values: Tensor, draws: int = DRAWS, seed: int = 0, chunk: int = 100) -> Tensor:
    """Column means of ``values (N, K)`` over ``draws`` bootstrap resamples of its rows:
    ``(draws, K)``. Resamples are drawn as multinomial counts (seeded), ``chunk`` at a time."""
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 samples, got {n}")
    if draws < 1:
        raise ValueError(f"a bootstrap needs draws >= 1 resamples, got {draws}")
    generator = torch.Generator().manual_seed(seed)
    values = values.double()
    out = []
    for start in range(0, draws, chunk):
        k = min(chunk, draws - start)
        index = torch.randint(0, n, (k, n), generator=generator)
        counts = torch.zeros(k, n, dtype=torch.float64).scatter_add_(
            1, index, torch.ones(k, n, dtype=torch.float64)
        )
        out.append(counts @ values / n)
    return torch.cat(out)


def chance_prediction(data: TaskData, n: int, weight: Tensor | None = None) -> Tensor:
    """The best constant predictor fitted on the training targets, for ``n`` samples: log class
    frequencies (classification), label log-odds (multilabel), the mean (regression).

    With loss weights (``weight`` of :func:`~interfuse.metrics.task_loss`), the best constant
    under the weighted loss: class frequencies weighted by ``w_c`` (uniform for balanced
    weights), positives counted ``pos_weight`` times."""
    targets = data.train.targets
    if data.task == "classification":
        counts = torch.bincount(targets, minlength=data.num_outputs).double()
        if weight is not None:
            counts = counts * weight.double()
        counts = counts + 0.5
        row = (counts / counts.sum()).log()
    elif data.task == "multilabel":
        positive = targets.double().sum(dim=0)
        negative = len(targets) - positive
        if weight is not None:
            positive = positive * weight.double()
        rate = ((positive + 0.5) / (positive + negative + 1.0)).clamp(1e-6, 1 - 1e-6)
        row = (rate / (1 - rate)).log()
    else:
        row = targets.double().reshape(len(targets), -1).mean(dim=0)
    return row.reshape(1, -1).expand(n, -1)


def _lower(gains: Tensor, level: float) -> float:
    """One-sided lower bound of the bootstrap distribution ``gains (B,)``."""
    return float(torch.quantile(gains, 1.0 - level))


def learnt_verdict(
    model: nn.Module,
    data: TaskData,
    draws: int = DRAWS,
    level: float = LEVEL,
    margin: float = MARGIN,
    seed: int = 0,
    weight: Tensor | None = None,
) -> LearntVerdict:
    """Compare the model's validation loss with chance and with its best single modality.

    ``weight``: the loss weights the model was trained with (``class_weights="balanced"``; see
    :func:`~interfuse.metrics.task_loss`); every loss, the chance constant's included, is then
    the weighted one, so that a model that trades frequent-class loss for rare-class loss, as
    weighting asks it to, is not judged against the unweighted optimum.

    ``"not_learnt"`` when the gain over chance is not clearly positive (one-sided ``level``
    lower bound ≤ ``margin`` × chance loss); ``"single_modality"`` when it is, but the gain over
    the best single modality (through the model's missing-modality path; re-chosen in every
    resample, so the choice is part of what is bootstrapped) is not; else ``"learnt"``. Models
    without a missing-modality path are compared with chance only.
    """
    val = data.val
    targets = val.targets

    def loss_of(prediction: Tensor) -> Tensor:
        return per_sample_loss(data.task, prediction, targets, weight=weight)

    full = loss_of(model_outputs(model, val))
    chance = loss_of(chance_prediction(data, len(targets), weight))
    columns = [full, chance]
    singles: list[str] = []
    if supports_masks(model) and len(data.modalities) > 1:
        removal = ModalityRemoval(model, method="mask")
        reps = removal.representations(val)
        for m in removal.modalities:
            prediction = removal.predict_from(reps, {m}, val.masks)
            columns.append(loss_of(prediction))
            singles.append(m)
    values = torch.stack(columns, dim=1)
    means = values.double().mean(dim=0)
    boot = bootstrap_means(values, draws, seed)
    loss, chance_loss = float(means[0]), float(means[1])
    threshold = margin * chance_loss
    gain_chance = chance_loss - loss
    gain_chance_low = _lower(boot[:, 1] - boot[:, 0], level)
    best = single = gain_single = gain_single_low = None
    if singles:
        k = int(means[2:].argmin())
        best, single = singles[k], float(means[2 + k])
        gain_single = single - loss
        gain_single_low = _lower(boot[:, 2:].min(dim=1).values - boot[:, 0], level)
    pct = f"{level:.0%}"
    above_chance = gain_chance_low > threshold
    if not above_chance:
        status = "not_learnt"
        message = (
            f"the validation loss {loss:.4f} is not clearly below chance ({chance_loss:.4f}, a "
            f"constant predictor fitted on the training targets; gain {gain_chance:+.4f}, "
            f"{pct} lower bound {gain_chance_low:+.4f}). The relevance shares do not describe "
            f"the data."
        )
    elif gain_single_low is not None and not gain_single_low > threshold:
        status = "single_modality"
        message = (
            f"the validation loss {loss:.4f} is below chance ({chance_loss:.4f}) but not clearly "
            f"below that of {best} alone ({single:.4f} through the missing-modality path; gain "
            f"{gain_single:+.4f}, {pct} lower bound {gain_single_low:+.4f}). Only {best} is "
            f"supported by held-out performance; the shares of other terms are not."
        )
    else:
        message = (
            f"validation loss {loss:.4f}, clearly below chance ({chance_loss:.4f}; {pct} lower "
            f"bound of the gain {gain_chance_low:+.4f})"
            + (
                f" and below the best single modality, {best} alone ({single:.4f}; lower bound "
                f"{gain_single_low:+.4f})."
                if best is not None
                else " (no missing-modality path: not compared with single modalities)."
            )
        )
        status = "learnt"
    return LearntVerdict(
        status=status,
        message=message,
        loss=loss,
        chance=chance_loss,
        gain_over_chance=gain_chance,
        gain_over_chance_low=gain_chance_low,
        best_single=best,
        single=single,
        gain_over_single=gain_single,
        gain_over_single_low=gain_single_low,
        margin=margin,
        level=level,
        draws=draws,
        split="val",
    )


def relevance_evidence(
    model: MultimodalModel,
    data: TaskData,
    draws: int = DRAWS,
    level: float = LEVEL,
    alpha: float = ALPHA,
    seed: int = 0,
) -> RelevanceEvidence:
    """Intervals of the held-out shares and a verdict per term on the validation split."""
    outputs, parts = term_contributions(model, data.val)
    dims = {t: layer.in_features for t, layer in model.head.blocks.items()}
    return evidence_from_contributions(
        data.task, outputs, parts, data.val.targets, dims, model.head.p, draws, level, alpha, seed
    )


def evidence_from_contributions(
    task: str,
    outputs: Tensor,
    parts: dict[str, Tensor],
    targets: Tensor,
    dims: dict[str, int],
    p: float,
    draws: int = DRAWS,
    level: float = LEVEL,
    alpha: float = ALPHA,
    seed: int = 0,
) -> RelevanceEvidence:
    """:func:`relevance_evidence` from the predictions ``(N, C)``, each term's contribution
    ``W_t z_t`` ``(N, C)`` and its block size ``D_t``.

    Per sample: ``D_t ‖W_t z_t‖²`` (its mean is the squared held-out block norm ``a_t²``) and
    the loss increase when only ``W_t z_t`` is removed. One paired bootstrap of their means
    gives the percentile interval of the held-out share (the β closed form on ``a``) and the
    one-sided test of "removing the term raises the loss" (``p_value = (#{resamples whose
    increase is ≤ 0} + 1) / (draws + 1)``, never 0: the observed sample counts as one draw).
    """
    terms = list(parts)
    base = per_sample_loss(task, outputs, targets)
    columns = [dims[t] * parts[t].double().pow(2).sum(dim=1) for t in terms]
    columns += [per_sample_loss(task, outputs - parts[t], targets) - base for t in terms]
    values = torch.stack(columns, dim=1)
    k = len(terms)
    means = values.mean(dim=0)
    boot = bootstrap_means(values, draws, seed)
    point = relevance_from_norms(terms, means[:k].clamp(min=0).sqrt(), p).shares
    # share_t = β_t / Σβ = a_t^(2/(p+1)) / Σ_s a_s^(2/(p+1)), per resample (a_t² = column mean)
    powered = boot[:, :k].clamp(min=0).pow(1.0 / (p + 1.0))
    shares = powered / powered.sum(dim=1, keepdim=True).clamp(min=1e-300)
    tail = (1.0 - level) / 2
    low = torch.quantile(shares, tail, dim=0)
    high = torch.quantile(shares, 1.0 - tail, dim=0)
    increase = boot[:, k:]
    p_values = ((increase <= 0).double().sum(dim=0) + 1) / (draws + 1)
    lower = torch.quantile(increase, 1.0 - level, dim=0)
    evidence = {
        t: TermEvidence(
            heldout_share=float(point[t]),
            share_low=float(low[i]),
            share_high=float(high[i]),
            loss_increase=float(means[k + i]),
            loss_increase_low=float(lower[i]),
            p_value=float(p_values[i]),
            verdict="relevant" if float(p_values[i]) < alpha else "not significant",
        )
        for i, t in enumerate(terms)
    }
    return RelevanceEvidence(evidence, level=level, alpha=alpha, draws=draws, split="val")
