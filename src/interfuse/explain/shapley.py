"""Exact Shapley values of the coalition game over modalities, with interaction indices.

A modality's value is its Shapley value φ_m; an interaction term T gets the Shapley interaction
index I(T) = Σ_{S ⊇ T} m(S) / (|S| − |T| + 1) (Grabisch & Roubens 1999), where m are the Möbius
dividends of the game ``v`` (``docs/explain.md``).
"""

from __future__ import annotations

from ..games import shapley_values
from ..results import Explanation
from ..terms import term_name
from .base import ExplainContext, register_explainer
from .coalitions import interaction_indices


@register_explainer
class ShapleyExplainer:
    name = "shapley"
    label = "Shapley (φ / I)"
    description = "φ_m for a modality, the Shapley interaction index I(T) for an interaction"

    def explain(self, context: ExplainContext) -> Explanation:
        phi = shapley_values(context.game, context.players)
        max_order = max(len(t) for t in context.terms)
        index = interaction_indices(context.game, context.players, max_order)
        scores: dict[str, float | None] = {
            term_name(t): phi[t[0]] if len(t) == 1 else index[frozenset(t)] for t in context.terms
        }
        return Explanation(self.name, self.label, self.description, scores)
