"""``explain.md``: the markdown page of a :class:`~interfuse.results.PosthocResult`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..metrics import LOWER_IS_BETTER
from ..ranks import TIE_TOLERANCE
from ..results import PosthocResult, RelevanceEstimate
from .tables import code, fmt, markdown_table

__all__ = ["agreement_summary", "comparison_table", "render_explanation"]


def comparison_table(result: PosthocResult) -> str:
    """Markdown: one row per term, one column per method with per-term values (rows ranked by
    Shapley value when it ran, else in the model's term order)."""
    columns = [name for name, e in result.explanations.items() if e.has_scores]
    labels = [result.explanations[name].label for name in columns]
    if result.truth is not None:
        columns.append("truth")
        labels.append("ground truth")
    values = {c: result.column(c) for c in columns}
    order = list(result.terms)
    if "shapley" in values:
        order.sort(key=lambda t: -(values["shapley"].get(t) or 0.0))
    rows = [[code(t), *(fmt(values[c].get(t), 4) for c in columns)] for t in order]
    return markdown_table(["term", *labels], rows)


def agreement_summary(result: PosthocResult) -> str:
    """One line: Spearman ρ over unimodal terms for every pair of methods."""
    parts = [
        f"{pair.replace('~', '/')} "
        # NaN in memory; null (None) once read back from explain.json
        f"{'n/a' if rho is None or math.isnan(rho) else format(rho, '.2f')}"
        for pair, rho in result.agreement.get("unimodal", {}).items()
    ]
    return "Spearman ρ over unimodal terms: " + ", ".join(parts) if parts else ""


def absent_warning(result: PosthocResult) -> str:
    """The warning (plain text) for modalities that no explained sample has ("" if none)."""
    if not result.absent:
        return ""
    names = ", ".join(repr(m) for m in result.absent)
    return (
        f"Warning: no sample of the explained split has {names}. Removing a modality that "
        "is absent everywhere changes nothing, so its post-hoc values (and those of its "
        "interactions) are 0 by construction, whatever the model learnt from it; they and the "
        "rank agreements that include them say nothing about its relevance."
    )


def render_explanation(result: PosthocResult, title: str = "") -> str:
    """The markdown page (``explain.md``)."""
    metric = result.metric
    unit = "loss increase" if metric in LOWER_IS_BETTER else f"{metric} drop"
    described = "; ".join(
        f"*{e.label}*: {e.description}" for e in result.explanations.values() if e.has_scores
    )
    parts = [
        f"# Post-hoc explanations{': ' + title if title else ''}\n",
        f"Computed on {result.split_size} test samples with the removal method "
        f"`{result.removal}` (`mask`: the model's own missing-modality path; "
        "`embedding`/`input`: the modality's encoder output / input replaced by its training "
        f"mean). Game: v(S) = {metric} improvement of coalition S over no modality. "
        f"{result.cost} Took {result.seconds:.1f} s.\n",
        "## Built-in relevance vs post-hoc relevance\n",
        f"{described}. Ablation Δ is the {unit} when the modalities are removed.\n",
        comparison_table(result),
        "### Rank agreement (Spearman ρ)\n",
    ]
    if result.absent:
        parts.insert(1, f"**{absent_warning(result)}**\n")
    pairs = list(result.agreement.get("unimodal", {}))
    if pairs:
        rows = [
            [
                p.replace("~", " vs "),
                fmt(result.agreement["unimodal"][p]),
                fmt(result.agreement["all"].get(p)),
            ]
            for p in pairs
        ]
        parts.append(markdown_table(["methods", "unimodal terms", "all terms"], rows))
        parts.append(
            "Values within "
            f"{TIE_TOLERANCE:.0%} of a method's largest absolute value count as tied at 0 (their "
            "order is noise, not a ranking); n/a: a method gives every term of the group the same "
            "value (no ranking), or has no value for some term of the group (modality ablation "
            "has none for interaction terms).\n"
        )
    else:
        parts.append("Fewer than two methods with a value for every term: no rank correlation.\n")

    held_out = result.explanations.get("estimators")
    if held_out is not None and held_out.details:
        parts += [_estimators_section(held_out.details, result)]
    ablation = result.explanations.get("ablation")
    if ablation is not None and ablation.details:
        full, removed = ablation.details["full"], ablation.details["removed"]
        names = list(full)
        parts += [
            "## Modality ablation and missing-modality evaluation\n",
            "Test metrics with the listed set of modalities removed (a single modality: the "
            "model's performance when that modality is missing). A set `{a,b}` removes both "
            "modalities, hence every term that contains a or b; removing only the interaction "
            "term `a*b` is the *term removal Δ* column above.\n",
            markdown_table(
                ["removed", *names],
                [["(none)", *(fmt(full[k], 4) for k in names)]]
                + [
                    [code("{" + t.replace("*", ",") + "}"), *(fmt(m.get(k), 4) for k in names)]
                    for t, m in removed.items()
                ],
            ),
        ]
    if len(result.coalitions) <= 64 and result.coalitions:
        names = list(next(iter(result.coalitions.values())))
        parts += [
            "## Coalitions\n",
            f"Test metrics with only the modalities of S present, and the game value v(S) "
            f"({metric}).\n",
            markdown_table(
                ["S", "v(S)", *names],
                [
                    [code(s), fmt(result.game[s], 4), *(fmt(m.get(k), 4) for k in names)]
                    for s, m in result.coalitions.items()
                ],
            ),
        ]
    emap = result.explanations.get("emap")
    if emap is not None and emap.details.get("skipped"):
        parts += [
            "## EMAP (additive projection)\n",
            f"EMAP skipped: {emap.details['skipped']} (EMAP recombines samples that have every "
            f"modality).\n",
        ]
    elif emap is not None and emap.details:
        d = emap.details
        names = [k for k in d["model"] if k in d["emap"]]
        gap = d.get("accuracy_gap")
        parts += [
            "## EMAP (additive projection)\n",
            f"EMAP (Hessel & Lee, EMNLP 2020) replaces the model by its first-order additive "
            f"projection f̂(x) = Σ_m E_x'[f(x_m, x'_−m)] − (M−1) E[f], estimated on "
            f"{d['n_samples']} test samples ({d['evaluations']:,} evaluations). "
            + (
                f"**EMAP accuracy gap: {gap:+.4f}** (model − EMAP: the accuracy that depends on "
                "cross-modal interactions).\n"
                if gap is not None
                else "\n"
            ),
            markdown_table(
                ["metric", "model", "EMAP", "model − EMAP"],
                [
                    [k, fmt(d["model"][k], 4), fmt(d["emap"][k], 4), fmt(d["gap"][k], 4)]
                    for k in names
                ],
            ),
        ]
    return "\n".join(parts)


def _estimators_section(details: Mapping[str, Any], result: PosthocResult) -> str:
    """Every relevance estimator on the explained split: share [95 % interval] and verdict."""
    estimates = {
        k: RelevanceEstimate.from_dict(v) for k, v in details.items() if isinstance(v, Mapping)
    }
    headline = str(details.get("headline", ""))
    if headline not in estimates:
        return ""
    order = sorted(result.terms, key=lambda t: -estimates[headline].terms[t].share)

    def cell(e: RelevanceEstimate, t: str) -> str:
        term = e.terms[t]
        if not math.isfinite(term.low):
            return fmt(term.share, 3)
        mark = "" if term.verdict == "relevant" else " (n.s.)"
        return f"{term.share:.3f} [{term.low:.3f}, {term.high:.3f}]{mark}"

    rows = [[code(t), *(cell(e, t) for e in estimates.values())] for t in order]
    described = "; ".join(f"*{e.label}*: {e.description}" for e in estimates.values())
    return "\n".join(
        [
            "## Relevance estimators with 95 % intervals\n",
            f"On the {result.split_size} explained samples (bootstrap over them); (n.s.): not "
            f"significantly above a share of {details.get('margin', 0.01):g}. The headline is "
            f"*{estimates[headline].label}*. {described}.\n",
            markdown_table(["term", *(e.label for e in estimates.values())], rows),
        ]
    )
