"""Explanations of multimodal models: cooperative games over modalities and run reports.

Post-hoc relevance of any trained model lives in submodules (imported explicitly, since they
build on :mod:`interfuse.train`): :mod:`.removal` (the operator that removes modalities),
:mod:`.coalitions` (coalition scores, Shapley/Möbius/interaction indices), :mod:`.ablation`,
:mod:`.emap` and :mod:`.posthoc` (everything beside the built-in relevance).
"""

from interfuse.explain.games import (
    coalition_values,
    inverse_mobius,
    mobius_transform,
    shapley_values,
)
from interfuse.explain.report import (
    fidelity,
    load_run,
    relevance_table,
    render_comparison,
    render_report,
)

__all__ = [
    "coalition_values",
    "fidelity",
    "inverse_mobius",
    "load_run",
    "mobius_transform",
    "relevance_table",
    "render_comparison",
    "render_report",
    "shapley_values",
]
