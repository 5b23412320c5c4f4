"""Post-hoc explanations of trained multimodal models, beside the built-in relevance.

Every method rests on one operator that removes modalities (:mod:`.removal`) and on the
coalition metrics computed from it (:mod:`.coalitions`). Each explainer is one file that
registers itself (:mod:`.base`; the list is :data:`EXPLAINERS`), imported below;
:func:`explain_model` (:mod:`.posthoc`) runs them all.
The pure game theory (Shapley, Möbius) lives in :mod:`interfuse.games`.
"""

# registration order = column order in explain.md, so these imports are not sorted
from interfuse.explain import builtin  # noqa: I001
from interfuse.explain import ablation
from interfuse.explain import shapley
from interfuse.explain import mobius
from interfuse.explain import emap
from interfuse.explain import term_ablation
from interfuse.explain import estimators
from interfuse.explain.base import EXPLAINERS, ExplainContext, Explainer, register_explainer
from interfuse.explain.posthoc import explain_cost, explain_model, rank_agreement
from interfuse.explain.removal import ModalityRemoval

__all__ = [
    "EXPLAINERS",
    "ExplainContext",
    "Explainer",
    "ModalityRemoval",
    "ablation",
    "builtin",
    "emap",
    "estimators",
    "explain_cost",
    "explain_model",
    "mobius",
    "rank_agreement",
    "register_explainer",
    "shapley",
    "term_ablation",
]
