"""Removing one term: the head without that term's block (ours only).

Modality ablation removes modalities, and with them every term that contains them; it cannot
tell an interaction term ``a*b`` from the unimodal terms of ``a`` and ``b``. Term ablation
removes exactly one term t: its block is replaced by its expectation 0 in the head, so the
prediction loses W_t z_t and nothing else,

    Δ(t) = metric(f − W_t z_t) − metric(f)     (sign flipped for scores: Δ > 0 = needed).

Only models with an MNL head have separate term blocks; for others every value is ``None``.
"""

from __future__ import annotations

import torch

from ..data.batching import TensorData, batch_loader
from ..metrics import LOWER_IS_BETTER, compute_metrics
from ..model import MultimodalModel
from ..results import Explanation
from ..terms import term_name
from .base import ExplainContext, register_explainer
from .removal import evaluation_mode


@register_explainer
class TermAblation:
    name = "term_ablation"
    label = "term removal Δ"
    description = (
        "how much worse the metric gets when only this term's block is removed from the head"
    )

    def explain(self, context: ExplainContext) -> Explanation:
        model = context.model
        names = [term_name(t) for t in context.terms]
        if not isinstance(model, MultimodalModel):
            return Explanation(self.name, self.label, self.description, {})
        full, parts = term_contributions(model, context.data, context.batch_size)
        targets = context.data.targets
        metric, sign = context.metric, -1.0 if context.metric in LOWER_IS_BETTER else 1.0
        reference = compute_metrics(context.task, full, targets, context.metric_set)[metric]
        scores: dict[str, float | None] = {}
        for t in names:
            removed = compute_metrics(context.task, full - parts[t], targets, context.metric_set)
            scores[t] = sign * (reference - removed[metric])
        return Explanation(self.name, self.label, self.description, scores)


def term_contributions(
    model: MultimodalModel, data: TensorData, batch_size: int = 1024
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Predictions ``(N, C)`` and each term's share of them, ``W_t z_t`` ``(N, C)``."""
    device = next(model.parameters()).device
    outputs: list[torch.Tensor] = []
    parts: dict[str, list[torch.Tensor]] = {t: [] for t in model.head.blocks}
    with evaluation_mode(model):
        for inputs, _, masks in batch_loader(data, batch_size, shuffle=False):
            batch = {m: x.to(device) for m, x in inputs.items()}
            out = model(batch, masks={m: k.to(device) for m, k in masks.items()} or None)
            outputs.append(out.prediction.cpu())
            for t, layer in model.head.blocks.items():
                parts[t].append(layer(out.blocks[t]).cpu())
    return torch.cat(outputs), {t: torch.cat(p) for t, p in parts.items()}
