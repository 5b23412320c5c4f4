"""Is the built-in relevance right? Compare it with post-hoc relevance on the same trained model.

:func:`explain_model` runs every registered explainer (:data:`interfuse.explain.base.EXPLAINERS`:
built-in shares, ablation Δ, exact Shapley values and interaction indices, Möbius dividends,
EMAP) on one split (normally test), through one removal operator (:mod:`.removal`: the model's
missing-modality path, or mean replacement) and one set of coalition metrics computed once, and
returns a typed :class:`~interfuse.results.PosthocResult` with Spearman rank correlations between
the methods. :mod:`interfuse.report.explain` renders it as markdown.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from ..data.batching import TensorData
from ..ranks import spearman, tied_near_zero
from ..results import Explanation, PosthocResult
from ..terms import TERM_SEPARATOR, term_name
from .base import EXPLAINERS, ExplainContext
from .coalitions import all_coalitions, coalition_name
from .emap import emap_cost, no_complete_sample
from .removal import has_encode_fuse, model_modalities, resolve_method

__all__ = ["explain_cost", "explain_model", "rank_agreement"]


def explain_cost(
    model: nn.Module,
    n_eval: int,
    n_emap: int,
    method: str = "auto",
    *,
    emap_skipped: str | None = None,
) -> str:
    """How many evaluations the explanation needs, as one paragraph. ``emap_skipped``: why
    EMAP will not run although ``n_emap > 0`` (e.g. no sample has every modality)."""
    modalities = model_modalities(model)
    method = resolve_method(model, method)
    m = len(modalities)
    coalitions = 2**m
    fusion_only = method in ("mask", "embedding")
    n_emap = min(n_emap, n_eval)
    part = "fusion-part" if fusion_only else "full-model"
    if n_emap == 0:
        emap = "EMAP skipped."
    elif emap_skipped is not None:
        emap = f"EMAP skipped: {emap_skipped} (it recombines samples that have every modality)."
    else:
        emap = (
            f"EMAP on {n_emap} samples: M·N² = {emap_cost(n_emap, m):,} "
            f"{'fusion-part' if has_encode_fuse(model) else 'full-model'} evaluations."
        )
    return (
        f"{m} modalities, method {method!r}: 2^{m} = {coalitions} coalitions × {n_eval} samples "
        f"= {coalitions * n_eval:,} {part} evaluations"
        + (f" (+ {n_eval:,} encoder passes)" if fusion_only else "")
        + f"; {emap}"
    )


def explain_model(
    model: nn.Module,
    data: TensorData,
    task: str,
    reference: TensorData | None = None,
    *,
    method: str = "auto",
    metric: str = "loss",
    emap_samples: int = 256,
    seed: int = 0,
    batch_size: int = 1024,
    metric_set: str = "default",
    ground_truth: Mapping[str, float] | None = None,
    explainers: Sequence[str] | None = None,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> PosthocResult:
    """Post-hoc relevance of a trained ``model`` on ``data``, beside its built-in relevance.

    Args:
        model: trained model (``MultimodalModel`` or a baseline).
        data: evaluation split (test). ``reference``: training split (baseline means).
        task: ``"classification"`` or ``"regression"``.
        method: removal operator (``auto``/``mask``/``embedding``/``input``).
        metric: the metric of the game and of the ablation Δ (``loss``, ``accuracy``, …).
        emap_samples: N of the EMAP subsample (cost ``M·N²``); 0 skips EMAP.
        ground_truth: known term shares, shown as an extra column.
        explainers: names of registered explainers to run (default: all).
        log: called with the cost estimate before the long work starts.
    """
    started = time.perf_counter()
    context = ExplainContext(
        model,
        data,
        task,
        reference,
        method=method,
        metric=metric,
        metric_set=metric_set,
        seed=seed,
        emap_samples=max(emap_samples, 0),
        batch_size=batch_size,
        progress=progress,
    )
    players = context.players
    incomplete = no_complete_sample(data) if emap_samples > 0 else None
    cost = explain_cost(
        model,
        len(data),
        max(emap_samples, 0),
        context.removal.method,
        emap_skipped=None if incomplete is None else f"{incomplete} in the explained split",
    )
    if log is not None:
        log(f"cost: {cost}")
    names = EXPLAINERS.names() if explainers is None else list(explainers)
    explanations: dict[str, Explanation] = {
        name: EXPLAINERS.get(name).explain(context) for name in names
    }
    terms = [term_name(t) for t in context.terms]
    truth = None if ground_truth is None else {t: float(ground_truth.get(t, 0.0)) for t in terms}
    return PosthocResult(
        split_size=len(data),
        removal=context.removal.method,
        metric=metric,
        modalities=list(players),
        terms=terms,
        cost=cost,
        coalitions={
            coalition_name(s, players): context.coalitions[s] for s in all_coalitions(players)
        },
        game={coalition_name(s, players): v for s, v in context.game.items()},
        explanations=explanations,
        truth=truth,
        agreement=rank_agreement(terms, explanations, truth),
        seconds=round(time.perf_counter() - started, 2),
        absent=[m for m in players if m in data.masks and not bool(data.masks[m].any())],
    )


def rank_agreement(
    terms: Sequence[str],
    explanations: Mapping[str, Explanation],
    truth: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Spearman ρ between every two methods with a value for every term of a group, over
    unimodal terms and over all terms (``{"unimodal": {"builtin~shapley": ρ, …}, "all": {…}}``;
    NaN if undefined). Values within :data:`TIE_TOLERANCE` of 0 (relative to the method's
    largest) count as tied at 0."""
    columns = {name: e.scores for name, e in explanations.items()}
    if truth is not None:
        columns["truth"] = dict(truth)
    groups = {"unimodal": [t for t in terms if TERM_SEPARATOR not in t], "all": list(terms)}
    result: dict[str, dict[str, float]] = {}
    for group, members in groups.items():
        names = [
            n for n, c in columns.items() if members and all(c.get(t) is not None for t in members)
        ]
        result[group] = {
            f"{a}~{b}": spearman(
                tied_near_zero([float(columns[a][t]) for t in members]),  # type: ignore[arg-type]
                tied_near_zero([float(columns[b][t]) for t in members]),  # type: ignore[arg-type]
            )
            for i, a in enumerate(names)
            for b in names[i + 1 :]
        }
    return result
