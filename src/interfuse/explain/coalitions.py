"""Modalities as players: coalition performance, Shapley values, Möbius and interaction indices.

For a trained model and a removal operator (:class:`~interfuse.explain.removal.ModalityRemoval`)
every coalition ``S`` of modalities gets the model's metrics with only ``S`` present. A metric
becomes the game

    v(S) = ± (metric(S) − metric(∅)),   "+" when larger is better (accuracy), "−" for losses,

so ``v(∅) = 0`` and ``v(S)`` is the performance the modalities in ``S`` add over none. From ``v``:
Shapley values ``φ_m`` (Shapley 1953), Möbius/Harsanyi dividends ``m(T)`` (the pure interaction
of the modalities in ``T``) and the Shapley interaction index of Grabisch & Roubens (1999),

    I(T) = Σ_{S ⊇ T} m(S) / (|S| − |T| + 1),

which equals ``φ`` for singletons. All are exact and cost one evaluation of the fusion part (or,
with input replacement, of the model) on the data for each of the ``2^M`` coalitions.

References: L. S. Shapley (1953), A value for n-person games; J. C. Harsanyi (1963), A simplified
bargaining model for the n-person cooperative game; M. Grabisch & M. Roubens (1999), An axiomatic
approach to the concept of interaction among players in cooperative games, Int. J. Game Theory 28.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tqdm.auto import tqdm

from ..data.batching import TensorData
from ..games import MAX_PLAYERS, Coalition, mobius_transform, shapley_values
from ..metrics import LOWER_IS_BETTER, compute_metrics
from .removal import ModalityRemoval

"""Metrics for which smaller values are better (their game is negated)."""


def all_coalitions(players: Sequence[str]) -> list[Coalition]:
    """The ``2^M`` subsets of ``players`` in bit-mask order (as :mod:`interfuse.games`)."""
    coalitions: list[Coalition] = [frozenset()]
    for player in players:
        coalitions += [s | {player} for s in coalitions]
    return coalitions


def coalition_name(coalition: Coalition, players: Sequence[str]) -> str:
    """``{"m1", "m0"}`` → ``"{m0,m1}"`` (players' order; ``"{}"`` for the empty coalition)."""
    return "{" + ",".join(p for p in players if p in coalition) + "}"


def parse_coalition(name: str) -> Coalition:
    """Inverse of :func:`coalition_name`."""
    inner = name.strip()[1:-1]
    return frozenset(p for p in inner.split(",") if p)


def coalition_metrics(
    removal: ModalityRemoval,
    data: TensorData,
    task: str,
    coalitions: Sequence[Coalition] | None = None,
    metric_set: str = "default",
    progress: bool = False,
) -> dict[Coalition, dict[str, float]]:
    """Metrics of the model on ``data`` with only the modalities of each coalition present.

    Default: all ``2^M`` coalitions. The empty coalition is the model with every modality
    replaced by its baseline (a constant prediction for ``input``/``embedding``).
    """
    players = removal.modalities
    if coalitions is None:
        if len(players) > MAX_PLAYERS:
            raise ValueError(f"{len(players)} modalities: 2^M coalitions is too many")
        coalitions = all_coalitions(players)
    representations = removal.representations(data)
    results = {}
    for coalition in tqdm(coalitions, desc="coalitions", disable=not progress, leave=False):
        prediction = removal.predict_from(representations, coalition, data.masks)
        results[frozenset(coalition)] = compute_metrics(task, prediction, data.targets, metric_set)
    return results


def performance_game(
    metrics: Mapping[Coalition, Mapping[str, float]], metric: str = "loss"
) -> dict[Coalition, float]:
    """``v(S) = ±(metric(S) − metric(∅))``, sign + when larger is better (see module doc)."""
    empty = frozenset()
    if empty not in metrics:
        raise ValueError("the metrics need the empty coalition (every modality removed)")
    if metric not in metrics[empty]:
        raise ValueError(f"unknown metric {metric!r}; available: {sorted(metrics[empty])}")
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    base = metrics[empty][metric]
    return {s: sign * (m[metric] - base) for s, m in metrics.items()}


def interaction_indices(
    values: Mapping[Coalition, float], players: Sequence[str], max_order: int | None = None
) -> dict[Coalition, float]:
    """Shapley interaction index ``I(T) = Σ_{S ⊇ T} m(S)/(|S| − |T| + 1)`` (Grabisch & Roubens
    1999) for every non-empty ``T`` with ``|T| ≤ max_order``; ``I({i}) = φ_i``."""
    dividends = mobius_transform(values, players)
    result = {}
    for t in all_coalitions(players):
        if not t or (max_order is not None and len(t) > max_order):
            continue
        result[t] = float(sum(d / (len(s) - len(t) + 1) for s, d in dividends.items() if t <= s))
    return result


def game_summary(
    values: Mapping[Coalition, float], players: Sequence[str], max_order: int = 2
) -> dict[str, dict[Coalition, float] | dict[str, float]]:
    """Shapley values, Möbius dividends and interaction indices (up to ``max_order``) of ``v``."""
    return {
        "shapley": shapley_values(values, players),
        "mobius": mobius_transform(values, players),
        "interaction_index": interaction_indices(values, players, max_order),
    }
