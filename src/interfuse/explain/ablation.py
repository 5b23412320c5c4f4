"""Modality ablation and missing-modality evaluation.

Remove a modality (or a set T of them, through :class:`~interfuse.explain.removal.ModalityRemoval`)
and measure how much the model's performance drops:

    Δ(T) = metric(N ∖ T) − metric(N)   for losses (lower is better),
    Δ(T) = metric(N) − metric(N ∖ T)   for scores such as accuracy,

so that Δ > 0 means the model needs ``T``. With the ``mask`` method the metrics of ``N ∖ {m}``
are the model's test performance when modality ``m`` is missing (missing-modality evaluation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from ..data.batching import TensorData
from ..games import Coalition
from ..metrics import LOWER_IS_BETTER
from ..results import Explanation
from ..terms import TERM_SEPARATOR, term_name
from .base import ExplainContext, register_explainer
from .coalitions import coalition_metrics
from .removal import ModalityRemoval


@dataclass(frozen=True)
class Ablation:
    """Metrics with every modality present (``full``) and with each removed set (``removed``,
    keyed by term name, e.g. ``"m0"`` or ``"m0*m1"``)."""

    full: dict[str, float]
    removed: dict[str, dict[str, float]]

    def drop(self, metric: str = "loss") -> dict[str, float]:
        """Δ per removed set: how much worse ``metric`` gets (positive = the model needs it)."""
        if metric not in self.full:
            raise ValueError(f"unknown metric {metric!r}; available: {sorted(self.full)}")
        sign = 1.0 if metric in LOWER_IS_BETTER else -1.0
        return {t: sign * (m[metric] - self.full[metric]) for t, m in self.removed.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"full": dict(self.full), "removed": {t: dict(m) for t, m in self.removed.items()}}


def removal_sets(players: Sequence[str], max_order: int = 2) -> list[tuple[str, ...]]:
    """Every set of 1 … ``max_order`` modalities, as terms in the players' order."""
    return [t for k in range(1, max_order + 1) for t in combinations(players, k)]


def ablation_from_coalitions(
    metrics: Mapping[Coalition, Mapping[str, float]],
    players: Sequence[str],
    terms: Sequence[Sequence[str]] | None = None,
    max_order: int = 2,
) -> Ablation:
    """:class:`Ablation` read off coalition metrics (``metrics[N ∖ T]`` for each term T)."""
    everyone = frozenset(players)
    terms = removal_sets(players, max_order) if terms is None else terms
    return Ablation(
        full=dict(metrics[everyone]),
        removed={term_name(t): dict(metrics[everyone - set(t)]) for t in terms},
    )


def modality_ablation(
    removal: ModalityRemoval,
    data: TensorData,
    task: str,
    max_order: int = 2,
    metric_set: str = "default",
    progress: bool = False,
) -> Ablation:
    """Metrics of the model on ``data`` with every set of up to ``max_order`` modalities removed
    (``1 + Σ_k C(M, k)`` evaluations)."""
    players = removal.modalities
    terms = removal_sets(players, max_order)
    everyone = frozenset(players)
    coalitions = [everyone, *(everyone - set(t) for t in terms)]
    metrics = coalition_metrics(removal, data, task, coalitions, metric_set, progress)
    return ablation_from_coalitions(metrics, players, terms)


@register_explainer
class AblationExplainer:
    """Δ when a term's modalities are removed, read off the shared coalition metrics."""

    name = "ablation"
    label = "modality ablation Δ"
    description = (
        "how much worse the metric gets when the modality is removed (unimodal terms only: "
        "removing the modalities {a,b} of an interaction term also removes a and b, so that "
        "row is in the ablation table, and the interaction term itself is ablated by term "
        "removal)"
    )

    def explain(self, context: ExplainContext) -> Explanation:
        ablation = ablation_from_coalitions(context.coalitions, context.players, context.terms)
        scores: dict[str, float | None] = {
            t: (v if TERM_SEPARATOR not in t else None)
            for t, v in ablation.drop(context.metric).items()
        }
        return Explanation(self.name, self.label, self.description, scores, ablation.to_dict())
