"""Is the built-in relevance right? Compare it with post-hoc relevance on the same trained model.

:func:`explain_model` computes, on one split (normally test):

* the metrics of all ``2^M`` coalitions of modalities (:mod:`.coalitions`), through one removal
  operator (:mod:`.removal`: the model's missing-modality path, or mean replacement);
* modality ablation / missing-modality evaluation (:mod:`.ablation`), read off those coalitions;
* exact Shapley values, Möbius (Harsanyi) dividends and Shapley interaction indices of the game
  ``v(S) = ±(metric(S) − metric(∅))``;
* EMAP (:mod:`.emap`) and its accuracy gap;

and sets them beside the built-in relevance shares per term, with Spearman rank correlations
between the methods. :func:`render_explanation` writes the result as markdown.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from ..data.batching import TensorData
from ..terms import TERM_SEPARATOR, term_name
from .ablation import ablation_from_coalitions
from .coalitions import (
    all_coalitions,
    coalition_metrics,
    coalition_name,
    interaction_indices,
    performance_game,
)
from .emap import emap, emap_cost, subsample
from .games import MAX_PLAYERS, mobius_transform, shapley_values
from .ranks import spearman
from .removal import ModalityRemoval, has_encode_fuse, model_modalities, resolve_method

METHOD_COLUMNS = ("builtin", "ablation", "shapley", "mobius")
_LABELS = {
    "builtin": "built-in share",
    "ablation": "ablation Δ",
    "shapley": "Shapley (φ / I)",
    "mobius": "Möbius m(T)",
    "truth": "ground truth",
}


def explanation_terms(model: nn.Module, modalities: Sequence[str]) -> list[tuple[str, ...]]:
    """The model's terms if it has any (``MultimodalModel``), else all unimodal terms and pairs."""
    terms = getattr(model, "terms", None)
    if terms:
        return [tuple(t) for t in terms]
    pairs = [(a, b) for i, a in enumerate(modalities) for b in modalities[i + 1 :]]
    return [(m,) for m in modalities] + pairs


def explain_cost(
    model: nn.Module, n_eval: int, n_emap: int, method: str = "auto"
) -> dict[str, Any]:
    """How many evaluations the explanation needs, and a one-paragraph description."""
    modalities = model_modalities(model)
    method = resolve_method(model, method)
    m = len(modalities)
    coalitions = 2**m
    fusion_only = method in ("mask", "embedding")
    n_emap = min(n_emap, n_eval)
    part = "fusion-part" if fusion_only else "full-model"
    text = (
        f"{m} modalities, method {method!r}: 2^{m} = {coalitions} coalitions × {n_eval} samples "
        f"= {coalitions * n_eval:,} {part} evaluations"
        + (f" (+ {n_eval:,} encoder passes)" if fusion_only else "")
        + (
            f"; EMAP on {n_emap} samples: M·N² = {emap_cost(n_emap, m):,} "
            f"{'fusion-part' if has_encode_fuse(model) else 'full-model'} evaluations."
            if n_emap > 0
            else "; EMAP skipped."
        )
    )
    return {
        "method": method,
        "modalities": m,
        "coalitions": coalitions,
        "coalition_evaluations": coalitions * n_eval,
        "emap_samples": n_emap,
        "emap_evaluations": emap_cost(n_emap, m),
        "text": text,
    }


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
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Post-hoc relevance of a trained ``model`` on ``data``, beside its built-in relevance.

    Args:
        model: trained model (``MultimodalModel`` or a baseline).
        data: evaluation split (test). ``reference``: training split (baseline means).
        task: ``"classification"`` or ``"regression"``.
        method: removal operator (``auto``/``mask``/``embedding``/``input``).
        metric: the metric of the game and of the ablation Δ (``loss``, ``accuracy``, …).
        emap_samples: N of the EMAP subsample (cost ``M·N²``); 0 skips EMAP.
        ground_truth: known term shares, shown as an extra column.
        log: called with the cost estimate before the long work starts.

    Returns a JSON-safe dict (written as ``explain.json`` by ``interfuse explain``).
    """
    started = time.perf_counter()
    players = model_modalities(model)
    if len(players) > MAX_PLAYERS:
        raise ValueError(f"{len(players)} modalities: exact games are limited to {MAX_PLAYERS}")
    removal = ModalityRemoval(model, reference, method, batch_size)
    cost = explain_cost(model, len(data), emap_samples if emap_samples > 0 else 0, removal.method)
    if log is not None:
        log(f"cost: {cost['text']}")

    metrics = coalition_metrics(removal, data, task, None, metric_set, progress)
    game = performance_game(metrics, metric)
    shapley = shapley_values(game, players)
    mobius = mobius_transform(game, players)
    terms = explanation_terms(model, players)
    max_order = max(len(t) for t in terms)
    index = interaction_indices(game, players, max_order)
    ablation = ablation_from_coalitions(metrics, players, terms)
    drop = ablation.drop(metric)

    relevance = model.relevance().shares if callable(getattr(model, "relevance", None)) else None
    table: dict[str, dict[str, float | None]] = {}
    for t in terms:
        name, s = term_name(t), frozenset(t)
        table[name] = {
            "builtin": None if relevance is None else relevance.get(name),
            "ablation": drop[name],
            "shapley": shapley[t[0]] if len(t) == 1 else index[s],
            "mobius": mobius[s],
        }
        if ground_truth is not None:
            table[name]["truth"] = float(ground_truth.get(name, 0.0))

    emap_result = None
    if emap_samples > 0:
        emap_result = emap(
            model,
            data,
            task,
            emap_samples,
            seed,
            metric_set=metric_set,
            progress=progress,
        ).to_dict()

    return {
        "split_size": len(data),
        "method": removal.method,
        "metric": metric,
        "modalities": list(players),
        "cost": cost,
        "coalitions": {coalition_name(s, players): metrics[s] for s in all_coalitions(players)},
        "game": {coalition_name(s, players): v for s, v in game.items()},
        "shapley": shapley,
        "mobius": {coalition_name(s, players): v for s, v in mobius.items() if s},
        "interaction_index": {coalition_name(s, players): v for s, v in index.items()},
        "ablation": ablation.to_dict(),
        "terms": table,
        "spearman": rank_agreement(table),
        "emap": emap_result,
        "emap_subsample_seed": seed,
        "emap_subsample": (
            None if emap_samples <= 0 else subsample(len(data), emap_samples, seed).tolist()
        ),
        "seconds": round(time.perf_counter() - started, 2),
    }


def rank_agreement(
    table: Mapping[str, Mapping[str, float | None]],
) -> dict[str, dict[str, float]]:
    """Spearman ρ between every two methods' per-term values, over unimodal terms and over all
    terms (``{"unimodal": {"builtin~shapley": ρ, …}, "all": {…}}``; NaN if undefined)."""
    columns = [
        c
        for c in (*METHOD_COLUMNS, "truth")
        if table and all(row.get(c) is not None for row in table.values())
    ]
    groups = {
        "unimodal": [t for t in table if TERM_SEPARATOR not in t],
        "all": list(table),
    }
    result: dict[str, dict[str, float]] = {}
    for group, terms in groups.items():
        result[group] = {}
        for i, a in enumerate(columns):
            for b in columns[i + 1 :]:
                x = [float(table[t][a]) for t in terms]  # type: ignore[arg-type]
                y = [float(table[t][b]) for t in terms]  # type: ignore[arg-type]
                result[group][f"{a}~{b}"] = spearman(x, y)
    return result


# --------------------------------------------------------------------------- markdown


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "—"
    if isinstance(x, float) and math.isnan(x):
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else str(x)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [header, ["---"] + ["---:"] * (len(header) - 1), *rows]
    return "\n".join("| " + " | ".join(str(c) for c in line) + " |" for line in lines) + "\n"


def comparison_table(explanation: Mapping[str, Any]) -> str:
    """Markdown: one row per term, one column per method (ranked by Shapley)."""
    table = explanation["terms"]
    columns = [
        c
        for c in (*METHOD_COLUMNS, "truth")
        if any(row.get(c) is not None for row in table.values())
    ]
    order = sorted(table, key=lambda t: -table[t]["shapley"])
    rows = [[f"`{t}`", *(_fmt(table[t].get(c), 4) for c in columns)] for t in order]
    return _table(["term", *(_LABELS[c] for c in columns)], rows)


def render_explanation(explanation: Mapping[str, Any], title: str = "") -> str:
    """The markdown page (``explain.md``) for :func:`explain_model`'s result."""
    metric = explanation["metric"]
    unit = "loss increase" if metric in ("loss", "mae") else f"{metric} drop"
    parts = [
        f"# Post-hoc explanations{': ' + title if title else ''}\n",
        f"Computed on {explanation['split_size']} test samples with the removal method "
        f"`{explanation['method']}` (`mask`: the model's own missing-modality path; "
        "`embedding`/`input`: the modality's encoder output / input replaced by its training "
        f"mean). Game: v(S) = {metric} improvement of coalition S over no modality. "
        f"{explanation['cost']['text']} Took {explanation['seconds']:.1f} s.\n",
        "## Built-in relevance vs post-hoc relevance\n",
        "*built-in share*: β_t / Σβ of the MNL head; *ablation Δ*: "
        f"{unit} when the term's modalities are removed; *Shapley*: φ_m for a modality, the "
        "Shapley interaction index I(T) for an interaction; *Möbius*: the Harsanyi dividend "
        "m(T) = Σ_{S⊆T} (−1)^{|T|−|S|} v(S), the pure interaction of T.\n",
        comparison_table(explanation),
        "### Rank agreement (Spearman ρ)\n",
    ]
    agreement = explanation["spearman"]
    pairs = list(agreement["unimodal"])
    if pairs:
        rows = [
            [
                p.replace("~", " vs "),
                _fmt(agreement["unimodal"][p]),
                _fmt(agreement["all"][p]),
            ]
            for p in pairs
        ]
        parts.append(_table(["methods", "unimodal terms", "all terms"], rows))
    else:
        parts.append("Fewer than two methods: no rank correlation.\n")

    ablation = explanation["ablation"]
    metric_names = list(ablation["full"])
    parts += [
        "## Modality ablation and missing-modality evaluation\n",
        "Test metrics with the listed modalities removed (a single modality: the model's "
        "performance when that modality is missing).\n",
        _table(
            ["removed", *metric_names],
            [["(none)", *(_fmt(ablation["full"][k], 4) for k in metric_names)]]
            + [
                [f"`{t}`", *(_fmt(m.get(k), 4) for k in metric_names)]
                for t, m in ablation["removed"].items()
            ],
        ),
    ]
    coalitions = explanation["coalitions"]
    if len(coalitions) <= 64:
        parts += [
            "## Coalitions\n",
            f"Test metrics with only the modalities of S present, and the game value v(S) "
            f"({metric}).\n",
            _table(
                ["S", "v(S)", *metric_names],
                [
                    [
                        f"`{s}`",
                        _fmt(explanation["game"][s], 4),
                        *(_fmt(m.get(k), 4) for k in metric_names),
                    ]
                    for s, m in coalitions.items()
                ],
            ),
        ]
    result = explanation.get("emap")
    if result:
        names = [k for k in result["model"] if k in result["emap"]]
        gap = result["accuracy_gap"]
        parts += [
            "## EMAP (additive projection)\n",
            f"EMAP (Hessel & Lee, EMNLP 2020) replaces the model by its first-order additive "
            f"projection f̂(x) = Σ_m E_x'[f(x_m, x'_−m)] − (M−1) E[f], estimated on "
            f"{result['n_samples']} test samples ({result['evaluations']:,} evaluations). "
            + (
                f"**EMAP accuracy gap: {gap:+.4f}** (model − EMAP: the accuracy that depends on "
                "cross-modal interactions).\n"
                if gap is not None
                else "\n"
            ),
            _table(
                ["metric", "model", "EMAP", "model − EMAP"],
                [
                    [
                        k,
                        _fmt(result["model"][k], 4),
                        _fmt(result["emap"][k], 4),
                        _fmt(result["gap"][k], 4),
                    ]
                    for k in names
                ],
            ),
        ]
    return "\n".join(parts)
