"""Möbius (Harsanyi) dividends of the coalition game: the pure effect of each set of modalities.

m(T) = Σ_{S⊆T} (−1)^{|T|−|S|} v(S) (Harsanyi 1963); for a single modality it is v({m}).
"""

from __future__ import annotations

from ..games import mobius_transform
from ..results import Explanation
from ..terms import term_name
from .base import ExplainContext, register_explainer


@register_explainer
class MobiusExplainer:
    name = "mobius"
    label = "Möbius m(T)"
    description = "the Harsanyi dividend m(T) = Σ_{S⊆T} (−1)^{|T|−|S|} v(S), the pure effect of T"

    def explain(self, context: ExplainContext) -> Explanation:
        dividends = mobius_transform(context.game, context.players)
        scores: dict[str, float | None] = {
            term_name(t): dividends[frozenset(t)] for t in context.terms
        }
        return Explanation(self.name, self.label, self.description, scores)
