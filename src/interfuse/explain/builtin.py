"""The built-in relevance as an explainer: the MNL head's shares β_t / Σβ (ours only)."""

from __future__ import annotations

from ..model import MultimodalModel
from ..results import Explanation
from ..terms import term_name
from .base import ExplainContext, register_explainer


@register_explainer
class BuiltinRelevance:
    name = "builtin"
    label = "built-in share"
    description = "β_t / Σβ of the MNL head (models with built-in relevance only)"

    def explain(self, context: ExplainContext) -> Explanation:
        names = [term_name(t) for t in context.terms]
        shares = (
            context.model.relevance().shares if isinstance(context.model, MultimodalModel) else {}
        )
        return Explanation(
            self.name, self.label, self.description, {t: shares.get(t) for t in names}
        )
