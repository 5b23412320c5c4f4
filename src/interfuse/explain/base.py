"""The explainer interface: one protocol, one context, one result type, one registry.

An explainer turns an :class:`ExplainContext` (a trained model, an evaluation split, a removal
operator and the coalition metrics computed once for all methods) into an
:class:`~interfuse.results.Explanation` (a value per term plus details). Explainers register
themselves with :func:`register_explainer` in their own file; ``interfuse explain`` and
:func:`interfuse.explain.posthoc.explain_model` run every registered one, and one shared
contract test checks them all. Adding an explainer is one new file (and its import in
``explain/__init__.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import Protocol, runtime_checkable

from torch import nn

from ..data.batching import TensorData
from ..games import MAX_PLAYERS, Coalition
from ..model import MultimodalModel
from ..registry import Registry
from ..results import Explanation
from ..terms import Term
from .coalitions import all_coalitions, coalition_metrics, performance_game
from .removal import ModalityRemoval, model_modalities

__all__ = [
    "EXPLAINERS",
    "ExplainContext",
    "Explainer",
    "explanation_terms",
    "register_explainer",
]


def explanation_terms(model: nn.Module, modalities: Sequence[str]) -> list[Term]:
    """The model's own terms (:class:`MultimodalModel`), else every modality and every pair."""
    if isinstance(model, MultimodalModel):
        return [tuple(t) for t in model.terms]
    pairs = [(a, b) for i, a in enumerate(modalities) for b in modalities[i + 1 :]]
    return [(m,) for m in modalities] + pairs


class ExplainContext:
    """Everything an explainer may use; expensive shared pieces are computed once, on demand.

    Args:
        model: the trained model (ours or a baseline).
        data: the evaluation split (normally test). ``reference``: the training split, whose
            means replace removed modalities for the ``embedding``/``input`` methods.
        task: ``"classification"`` or ``"regression"``; ``metric_set`` as in training.
        method: removal operator (``auto``, ``mask``, ``embedding``, ``input``).
        metric: the metric of the coalition game ``v(S)`` and of ablation Δ.
        seed: seed of any subsampling; ``emap_samples``: EMAP subsample size (0 skips EMAP).
    """

    def __init__(
        self,
        model: nn.Module,
        data: TensorData,
        task: str,
        reference: TensorData | None = None,
        *,
        method: str = "auto",
        metric: str = "loss",
        metric_set: str = "default",
        seed: int = 0,
        emap_samples: int = 256,
        batch_size: int = 1024,
        progress: bool = False,
    ) -> None:
        self.model = model
        self.data = data
        self.task = task
        self.metric = metric
        self.metric_set = metric_set
        self.seed = seed
        self.emap_samples = emap_samples
        self.batch_size = batch_size
        self.progress = progress
        self.players = model_modalities(model)
        if len(self.players) > MAX_PLAYERS:
            raise ValueError(
                f"{len(self.players)} modalities: exact games are limited to {MAX_PLAYERS}"
            )
        self.removal = ModalityRemoval(model, reference, method, batch_size)
        self.terms = explanation_terms(model, self.players)

    @cached_property
    def coalitions(self) -> dict[Coalition, dict[str, float]]:
        """Metrics with only the modalities of S present, for all ``2^M`` coalitions S."""
        return coalition_metrics(
            self.removal,
            self.data,
            self.task,
            all_coalitions(self.players),
            self.metric_set,
            self.progress,
        )

    @cached_property
    def game(self) -> dict[Coalition, float]:
        """``v(S)``: improvement of ``metric`` with S present over no modality."""
        return performance_game(self.coalitions, self.metric)


@runtime_checkable
class Explainer(Protocol):
    """``name`` (registry key), ``label`` (column heading), ``description`` and ``explain``."""

    name: str
    label: str
    description: str

    def explain(self, context: ExplainContext) -> Explanation: ...


EXPLAINERS: Registry[Explainer] = Registry("explainer")

register_explainer = EXPLAINERS.instance_decorator(Explainer)
"""Class decorator: register one instance of an explainer class under its ``name``."""
