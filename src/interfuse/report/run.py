"""Reports of finished runs: markdown and PNG charts rendered from a typed :class:`RunResult`.

:func:`render_report` writes ``report.md`` with ``relevance.png`` and ``history.png`` into a run
folder; :func:`render_comparison` sets several runs of the same data side by side. Both take
typed results (read them with :func:`interfuse.run.read_results` and
:func:`interfuse.run.read_history`) and never train or load models. Matplotlib is used only
through its object-oriented ``Figure`` API with the Agg canvas (no global pyplot state); every
file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from ..io import atomic_write_bytes, atomic_write_text
from ..ranks import fidelity, interaction_share
from ..results import (
    HISTORY_FIGURE,
    RELEVANCE_FIGURE,
    REPORT,
    RESULTS_OUTDATED,
    RelevanceEstimate,
    RelevanceEstimates,
    RelevanceEvidence,
    RunResult,
    SeedSummary,
)
from ..terms import TERM_SEPARATOR
from .tables import by_share, code, finite_or, fmt, is_number, markdown_table

__all__ = [
    "render_seed_summary",
    "plot_history",
    "plot_relevance",
    "estimates_table",
    "relevance_table",
    "render_comparison",
    "render_report",
]

EXPLAIN_REPORT = "explain.md"
SHARE_PREFIX = "share:"
_SEPARATOR = TERM_SEPARATOR

_UNIMODAL_COLOUR = "#4C72B0"
_INTERACTION_COLOUR = "#DD8452"
_INTERACTION_HATCH = "///"
_INTERACTION_TEXT_COLOUR = "#A5501B"
_EDGE_COLOUR = "#333333"


# --------------------------------------------------------------------------- tables


def term_kind(term: str) -> str:
    """``"m0"`` → ``"unimodal"``; ``"m0*m1"`` → ``"interaction 2-way"``."""
    order = term.count(_SEPARATOR) + 1
    return "unimodal" if order == 1 else f"interaction {order}-way"


def relevance_table(
    shares: Mapping[str, float],
    beta: Mapping[str, float] | None = None,
    truth: Mapping[str, float] | None = None,
    evidence: RelevanceEvidence | None = None,
) -> str:
    """GitHub-markdown table of terms sorted by share, largest first.

    Columns: term, kind, share, and β / ground truth when given (a term missing from
    ``truth`` has ground-truth share 0); with ``evidence``, the held-out share and its interval,
    the loss increase when only the term is removed, its p-value and the verdict.
    """
    header = ["term", "kind", "share"]
    if beta is not None:
        header.append("β")
    if evidence is not None:
        level = f"{evidence.level:.0%}"
        header += [f"held-out share [{level}]", "removal Δloss", "p", "verdict"]
    if truth is not None:
        header.append("ground truth")
    rows = []
    for term in by_share(shares):
        row = [code(term), term_kind(term), fmt(shares[term], 3)]
        if beta is not None:
            row.append(fmt(beta.get(term), 3))
        if evidence is not None:
            e = evidence.terms.get(term)
            row += (
                [
                    f"{fmt(e.heldout_share, 3)} [{fmt(e.share_low, 3)}, {fmt(e.share_high, 3)}]",
                    fmt(e.loss_increase, 4),
                    fmt(e.p_value, 3),
                    e.verdict,
                ]
                if e is not None
                else ["—"] * 4
            )
        if truth is not None:
            row.append(fmt(truth.get(term, 0.0), 3))
        rows.append(row)
    return markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write_bytes(path, buffer.getvalue())


def _term_style(term: str) -> dict[str, Any]:
    if _SEPARATOR in term:
        return {"color": _INTERACTION_COLOUR, "hatch": _INTERACTION_HATCH}
    return {"color": _UNIMODAL_COLOUR, "hatch": None}


def _interval_bars(
    ax: Any, rows: list[tuple[float, Any, Any, Any]], label: str, **style: Any
) -> Any:
    """Horizontal error bars from ``(y, centre, low, high)`` rows (non-finite values as 0)."""
    y = [r[0] for r in rows]
    centre, low, high = (np.array([finite_or(r[k], 0.0) for r in rows]) for k in (1, 2, 3))
    return ax.errorbar(
        centre,
        y,
        xerr=np.vstack([np.maximum(centre - low, 0), np.maximum(high - centre, 0)]),
        color="black",
        capsize=3,
        linewidth=1,
        zorder=4,
        label=label,
        **style,
    )


def _kind_legend_handles() -> list[Any]:
    return [
        Patch(facecolor=_UNIMODAL_COLOUR, edgecolor=_EDGE_COLOUR, label="unimodal term"),
        Patch(
            facecolor=_INTERACTION_COLOUR,
            edgecolor=_EDGE_COLOUR,
            hatch=_INTERACTION_HATCH,
            label="interaction term",
        ),
    ]


def _truth_marker_kwargs() -> dict[str, Any]:
    return {
        "marker": "D",
        "s": 36,
        "facecolors": "none",
        "edgecolors": "black",
        "linewidths": 1.2,
        "zorder": 3,
        "clip_on": False,
        "label": "ground truth",
    }


def plot_relevance(
    shares: Mapping[str, float],
    path: str | Path,
    truth: Mapping[str, float] | None = None,
    title: str | None = None,
    evidence: RelevanceEvidence | None = None,
    estimate: RelevanceEstimate | None = None,
    compare: tuple[str, Mapping[str, float]] | None = None,
    level: float = 0.95,
) -> Path:
    """Horizontal bar chart of the share per term (largest on top), saved as a PNG.

    Interaction terms are orange and hatched, unimodal terms blue; ground-truth shares (a
    missing term counts as 0) are drawn as hollow diamonds; with ``evidence``, the held-out
    share of each term is a black dot with its interval as an error bar; with ``estimate``
    (whose shares should be ``shares``) its ``level`` intervals are error bars on the bars;
    ``compare`` = (label, shares) draws another estimator's shares as grey ticks.
    """
    if not shares:
        raise ValueError("plot_relevance: no terms to plot")
    terms = by_share(shares)
    values = [finite_or(shares[t], 0.0) for t in terms]
    y = np.arange(len(terms))
    fig = _new_figure(7.0, 1.4 + 0.32 * len(terms))
    ax = fig.add_subplot()
    # the value column sits just right of the axes, clear of bars and ground-truth markers
    value_column = blended_transform_factory(ax.transAxes, ax.transData)
    for yi, term, value in zip(y, terms, values, strict=True):
        ax.barh(yi, value, edgecolor=_EDGE_COLOUR, linewidth=0.6, **_term_style(term))
        ax.text(1.01, yi, f"{value:.3f}", transform=value_column, va="center", fontsize=8)
    handles = _kind_legend_handles()
    top = max(values)
    if truth is not None:
        truth_values = [finite_or(truth.get(t, 0.0), 0.0) for t in terms]
        handles.append(ax.scatter(truth_values, y, **_truth_marker_kwargs()))
        top = max(top, *truth_values)
    if estimate is not None and estimate.has_intervals:
        known_terms = [(yi, estimate.terms[t]) for yi, t in zip(y, terms) if t in estimate.terms]
        rows = [(yi, e.share, e.low, e.high) for yi, e in known_terms]
        handles.append(_interval_bars(ax, rows, f"{level:.0%} interval", fmt="none"))
        top = max([top, *(finite_or(r[3], 0.0) for r in rows)])
    if compare is not None:
        label, other = compare
        other_values = [finite_or(other.get(t, 0.0), 0.0) for t in terms]
        handles.append(
            ax.scatter(other_values, y, marker="|", s=180, color="0.35", zorder=5, label=label)
        )
        top = max(top, *other_values)
    if evidence is not None:
        known = [(yi, evidence.terms[t]) for yi, t in zip(y, terms) if t in evidence.terms]
        rows = [(yi, e.heldout_share, e.share_low, e.share_high) for yi, e in known]
        label = f"held-out share, {evidence.level:.0%} interval"
        handles.append(_interval_bars(ax, rows, label, fmt="o", markersize=3))
        top = max([top, *(finite_or(r[3], 0.0) for r in rows)])
    ax.set_yticks(y, terms, fontsize=9 if len(terms) <= 15 else 8)
    ax.invert_yaxis()
    ax.set_xlim(0.0, max(top, 1e-9) * 1.05)
    ax.set_xlabel("share of relevance")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_title(title or "Relevance share per term")
    return _save_png(fig, path)


def plot_history(history: Sequence[Mapping[str, float]], path: str | Path) -> Path | None:
    """Up to three panels over epochs, each on its own axis: the shares per term (interaction
    terms dashed), the losses (training and validation), and the validation scores.

    Does nothing and returns None when ``history`` is empty.
    """
    if not history:
        return None
    columns = list(dict.fromkeys(key for row in history for key in row))
    share_columns = [c for c in columns if c.startswith(SHARE_PREFIX)]
    loss_columns = [c for c in columns if c.endswith("loss") or c == "val_mae" or c == "val_rmse"]
    score_columns = [c for c in columns if c.startswith("val_") and c not in loss_columns]
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]

    def series(column: str) -> list[float]:
        return [row.get(column, float("nan")) for row in history]

    marker = "." if len(epochs) < 40 else None
    colours = colormaps["tab10" if len(share_columns) <= 10 else "tab20"]
    panels = [
        (title, cols)
        for title, cols in (
            ("Relevance share per term (interaction terms dashed)", share_columns),
            ("Losses", loss_columns),
            ("Validation scores", score_columns),
        )
        if cols
    ]
    if not panels:
        return None
    fig = _new_figure(8.0, 3.0 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (title, cols) in zip(axes, panels, strict=True):
        for i, column in enumerate(cols):
            if column.startswith(SHARE_PREFIX):
                term = column[len(SHARE_PREFIX) :]
                style = {
                    "color": colours(i % colours.N),
                    "linestyle": "--" if _SEPARATOR in term else "-",
                }
                ax.plot(epochs, series(column), label=term, marker=marker, **style)
            else:
                ax.plot(epochs, series(column), label=column, marker=marker)
        ax.set_title(title)
        ax.set_ylabel({"Losses": "loss", "Validation scores": "score"}.get(title, "share"))
        ax.grid(alpha=0.3)
        ncol = 1 + len(ax.lines) // 12
        ax.legend(fontsize=7, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch")
    return _save_png(fig, path)


# --------------------------------------------------------------------------- reports

_EXPLANATION = (
    "Each row is one *term* of the model: a unimodal term reads one modality, an interaction "
    "term (modality names joined by `*`) reads the IterBN-normalised tensor product of several "
    "modalities. The MNL fusion head has one weight block W_t per term and learns lp-norm "
    "modality weights β (here p = {p}) through their closed form, "
    "β_t ∝ ‖W_t‖^(2/(p+1)) with ‖β‖_p = 1; a term's **share** is β_t / Σ_s β_s. Shares are "
    "non-negative and sum to 1: a large share means the model leans heavily on that term, a "
    "share near 0 means the term could be dropped with little effect. Shares describe what "
    "this trained model uses, not how the data were generated."
)


def render_report(
    result: RunResult,
    folder: str | Path,
    history: Sequence[Mapping[str, float]] = (),
    explanations_outdated: bool = False,
    results_outdated: bool = False,
) -> Path:
    """Write ``report.md``, ``relevance.png`` and (with a history) ``history.png`` into
    ``folder``; return the path of ``report.md``. ``explanations_outdated``: ``explain.md``
    explains an earlier model of the run (the link to it says so). ``results_outdated``: the
    results were measured on an earlier model than ``best.safetensors`` holds now (a banner at
    the top says so)."""
    folder = Path(folder)
    dataset = result.dataset or folder.name
    truth = result.truth_shares
    relevance = result.relevance
    history_png = plot_history(history, folder / HISTORY_FIGURE)
    parts = [f"# Run report: {dataset}\n"]
    if results_outdated:
        parts.append(f"> **Warning:** {RESULTS_OUTDATED}\n")
    if result.verdict is not None:
        parts.append(_verdict_section(result))
    if relevance is not None and result.estimates is not None:
        estimates = result.estimates
        best = estimates.best
        plot_relevance(
            best.shares,
            folder / RELEVANCE_FIGURE,
            truth=truth,
            title=f"Relevance ({best.label}) — {dataset}",
            estimate=best,
            compare=("β share", relevance.shares) if estimates.headline != "beta" else None,
            level=estimates.level,
        )
        parts += [
            _EXPLANATION.format(p=format(relevance.p, "g")) + "\n",
            "## Relevance\n",
            _estimates_note(estimates),
            estimates_table(estimates, truth, result.relevance_evidence),
            f"![relevance]({RELEVANCE_FIGURE})\n",
        ]
    elif relevance is not None:
        evidence = result.relevance_evidence
        plot_relevance(
            relevance.shares,
            folder / RELEVANCE_FIGURE,
            truth=truth,
            title=f"Relevance — {dataset}",
            evidence=evidence,
        )
        parts += [
            _EXPLANATION.format(p=format(relevance.p, "g")) + "\n",
            "## Relevance\n",
            *([_evidence_note(evidence)] if evidence is not None else []),
            relevance_table(relevance.shares, relevance.beta, truth, evidence),
            f"![relevance]({RELEVANCE_FIGURE})\n",
        ]
    else:
        parts.append(
            f"The model (`{result.model.get('model', 'this model')}`) has no built-in relevance; "
            "run `interfuse explain` on this folder for post-hoc relevance (ablation, Shapley, "
            "Möbius, EMAP).\n"
        )
    if result.label_relevance:
        parts += ["## Relevance per label\n", _label_relevance_section(result)]
    parts += ["## Metrics\n", _metrics_section(result)]
    presence = _presence_section(result)
    if presence:
        parts += ["## Samples with each modality\n", presence]
    if result.missing_modalities:
        parts += ["## Missing modalities at test time\n", _missing_section(result)]
    if truth is not None and relevance is not None:
        columns = {"β share": relevance.shares}
        if result.estimates is not None:
            columns = {e.label: e.shares for e in result.estimates.estimates.values()}
            columns = {
                result.estimates.best.label: result.estimates.best.shares,
                **{k: v for k, v in columns.items() if k != result.estimates.best.label},
            }
        parts += ["## Fidelity to the ground truth\n", _fidelity_section(columns, truth)]
    if (folder / EXPLAIN_REPORT).exists():
        parts += [
            "## Post-hoc explanations\n",
            f"Modality ablation, exact Shapley and Möbius values and EMAP (beside the built-in "
            f"relevance, if any): [{EXPLAIN_REPORT}]({EXPLAIN_REPORT}).\n",
        ]
        if explanations_outdated:
            parts.append(
                f"**{EXPLAIN_REPORT} explains an earlier model of this run** (it was resumed or "
                f"overwritten since): rerun `interfuse explain` on this folder.\n"
            )
    if history_png is not None:
        parts += ["## Training history\n", f"![history]({HISTORY_FIGURE})\n"]
    parts += ["## Configuration\n", _config_table({"dataset": dataset, **result.config})]
    return atomic_write_text(folder / REPORT, "\n".join(parts))


def estimates_table(
    estimates: RelevanceEstimates,
    truth: Mapping[str, float] | None = None,
    evidence: RelevanceEvidence | None = None,
) -> str:
    """Markdown: one row per term, sorted by the headline share: the headline share with its
    interval and verdict, every other estimator's share (β first among them), the loss increase
    when only the term is removed (``evidence``) and the ground truth."""
    best = estimates.best
    others = [e for name, e in estimates.estimates.items() if name != estimates.headline]
    level = f"{estimates.level:.0%}"
    header = ["term", "kind", f"**{best.label}** [{level}]", "verdict"]
    header += [e.label for e in others]
    if evidence is not None:
        header.append("removal Δloss")
    if truth is not None:
        header.append("ground truth")
    rows = []
    for term in by_share(best.shares):
        e = best.terms[term]
        interval = f" [{fmt(e.low, 3)}, {fmt(e.high, 3)}]" if math.isfinite(e.low) else ""
        row = [code(term), term_kind(term), f"**{fmt(e.share, 3)}**{interval}", e.verdict or "—"]
        row += [fmt(o.terms[term].share if term in o.terms else None, 3) for o in others]
        if evidence is not None:
            removal = evidence.terms.get(term)
            row.append(fmt(removal.loss_increase, 4) if removal is not None else "—")
        if truth is not None:
            row.append(fmt(truth.get(term, 0.0), 3))
        rows.append(row)
    return markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


def _estimates_note(estimates: RelevanceEstimates) -> str:
    """What the headline, the intervals and the verdicts are (held-out data, this model)."""
    best = estimates.best
    level = f"{estimates.level:.0%}"
    listed = "; ".join(f"*{e.label}*: {e.description}" for e in estimates.estimates.values())
    # the figure draws β shares as grey ticks beside another headline only
    ticks = (
        "; the grey ticks in the figure are the β shares" if estimates.headline != "beta" else ""
    )
    return (
        f"**Headline: {best.label}** — {best.description}. Computed on the {estimates.split} "
        f"split; the interval is a {level} percentile bootstrap over its samples "
        f"({estimates.draws} resamples) for this trained model, which does not include the "
        f"variability of training (seed, training sample). **Verdict**: *relevant* when the "
        f"share clearly exceeds {estimates.margin:g} (a one-sided bootstrap test of share ≤ "
        f"{estimates.margin:g} rejects at {estimates.alpha:g}, the false-positive rate per "
        f"term), else *not significant*{ticks}. Estimators: {listed}. **removal Δloss**: the "
        f"{estimates.split} loss increase when only the term's block is removed.\n"
    )


def _evidence_note(evidence: RelevanceEvidence) -> str:
    """What the interval and the verdict columns are (they come from held-out data)."""
    level = f"{evidence.level:.0%}"
    return (
        f"The β shares are a function of the trained weights, not of data, so they have no "
        f"interval of their own. The **held-out share** is the same closed form applied to the "
        f"block norms measured on the {evidence.split} split, sqrt(D_t · mean ‖W_t z_t‖²) (equal "
        f"to ‖W_t‖ when the normalised block is isotropic, and then equal to the β share); its "
        f"{level} interval is a percentile bootstrap over {evidence.split} samples "
        f"({evidence.draws} resamples) for this trained model — it does not include the "
        f"variability of training (seed, training sample). **Verdict**: removing only the "
        f"term's block from the head raises the {evidence.split} loss by **removal Δloss**; "
        f"*relevant* when a one-sided bootstrap test of an increase ≤ 0 rejects at "
        f"{evidence.alpha:g} (false-positive rate {evidence.alpha:g} per term), else *not "
        f"significant*.\n"
    )


def _verdict_section(result: RunResult) -> str:
    """The first lines of a report: whether the model learnt anything on held-out data."""
    verdict = result.verdict
    assert verdict is not None
    text = f"**{verdict.headline}**"
    if verdict.status != "learnt":
        text = "> " + text
    return (
        text + f' ({verdict.split} split, {verdict.draws} bootstrap resamples; "clearly": the '
        f"one-sided {verdict.level:.0%} lower bound of the gain exceeds "
        f"{verdict.margin:.0%} of the chance loss.)\n"
    )


def _missing_section(result: RunResult) -> str:
    """Test metrics with each modality (and pair) missing, through the model's mask path."""
    rows_by_set: Mapping[str, Mapping[str, float]] = result.missing_modalities or {}
    names = [k for k in next(iter(rows_by_set.values())) if k in ("accuracy", "loss", "mae")]
    rows = [
        ["none" if missing == "none" else code("{" + missing.replace(_SEPARATOR, ",") + "}")]
        + [fmt(metrics.get(name), 4) for name in names]
        for missing, metrics in rows_by_set.items()
    ]
    intro = (
        "Each row drops the named modalities for every test sample: their blocks, and those of "
        "every interaction containing them, are replaced by their expectation (interfuse docs: "
        "docs/missing-modalities.md). "
        "Modality dropout in training (`--modality-dropout P`, 0.3 by default) makes the model "
        "robust to this.\n"
    )
    return intro + "\n" + markdown_table(["missing", *names], rows, "l" + "r" * len(names))


def _label_relevance_section(result: RunResult) -> str:
    """Shares per term (rows) for each label (columns), from the head rows of that label."""
    labels = result.label_relevance or {}
    terms = list(next(iter(labels.values())).shares)
    rows = [[code(t), *(fmt(labels[k].shares[t], 3) for k in labels)] for t in terms]
    return (
        "Each label has its own rows in the head; the same closed form on those rows gives the "
        "share of each term for that label.\n\n"
        + markdown_table(["term", *map(code, labels)], rows)
    )


def _presence_section(result: RunResult) -> str:
    """How many samples of each split have each modality (only when some lack one)."""
    present = result.data.get("present") or {}
    sizes = result.data.get("split_sizes") or {}
    if not any(c < sizes.get(s, c) for s, counts in present.items() for c in counts.values()):
        return ""
    modalities = list(next(iter(present.values())))
    rows = [
        [
            s,
            str(sizes.get(s, "")),
            *(f"{present[s][m]} ({present[s][m] / sizes[s]:.0%})" for m in modalities),
        ]
        for s in present
    ]
    return (
        "Samples that lack a modality are trained and evaluated through the model's "
        "missing-modality path (their blocks are replaced by their expectation).\n\n"
        + markdown_table(["split", "samples", *map(code, modalities)], rows)
    )


def _metrics_section(result: RunResult) -> str:
    val, test = result.metrics.get("val") or {}, result.metrics.get("test") or {}
    names = list(dict.fromkeys([*val, *test]))
    text = ""
    if names:
        rows = [[name, fmt(val.get(name), 4), fmt(test.get(name), 4)] for name in names]
        text += markdown_table(["metric", "val", "test"], rows, align="lrr") + "\n"
    facts = [
        f"Best epoch: {result.best_epoch} of {result.epochs_run} run"
        + (
            f" (attempt: {result.selected_attempt}, of {result.attempts})."
            if result.selected_attempt is not None and result.attempts > 1
            else "."
        )
        + (
            ""
            if result.converged
            else " **The best epoch is the last one of its attempt: training may not have "
            "converged.**"
        ),
        f"Training time: {result.train_seconds:.1f} s.",
    ]
    bayes = (result.ground_truth or {}).get("bayes_accuracy")
    if is_number(bayes):
        accuracy = test.get("accuracy")
        if is_number(accuracy):
            facts.append(
                f"Test accuracy {accuracy:.4f} vs. Bayes-optimal accuracy {bayes:.4f} "
                f"(gap {bayes - accuracy:+.4f})."
            )
        else:
            facts.append(f"Bayes-optimal accuracy: {bayes:.4f} (no test accuracy recorded).")
    text += "".join(f"- {fact}\n" for fact in facts)
    return text or "No metrics recorded.\n"


def _fidelity_section(
    columns: Mapping[str, Mapping[str, float]], truth: Mapping[str, float]
) -> str:
    """One row per measure, one column per estimator's shares (the headline first)."""
    scores = {label: fidelity(shares, truth) for label, shares in columns.items()}
    meaning = {
        "spearman": "rank correlation with the true shares over unimodal terms (1 = same order)",
        "l1": "Σ |share − true share| over all terms (0 = identical, 2 = disjoint)",
        "leakage": "total share on terms that are irrelevant in truth (0 is ideal)",
        "interaction_share": "total share on interaction terms",
    }
    rows = [
        [code(key), *(fmt(scores[label][key], 3) for label in columns), meaning[key]]
        for key in meaning
    ]
    return markdown_table(
        ["measure", *columns, "meaning"], rows, align="l" + "r" * len(columns) + "l"
    )


def _config_table(config: Mapping[str, Any]) -> str:
    # as code: a list of interaction terms ("a*b", "a*b*c") would otherwise read as emphasis
    rows = [[code(key), code(_config_value(value))] for key, value in config.items()]
    return markdown_table(["setting", "value"], rows, align="ll")


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_comparison(runs: Mapping[str, RunResult], out_dir: str | Path) -> Path:
    """Compare the relevance shares of several runs of the same data.

    Writes ``out_dir/comparison.md`` (one table: a row per term of any run, a column per run
    label, plus the total interaction share and the test accuracy; a "—" marks a term the run's
    model does not have) and the grouped bar chart ``out_dir/comparison.png``. A ground-truth
    column/marker is added from the first run that has one. Returns the markdown path.
    """
    if not runs:
        raise ValueError("render_comparison: no runs given")
    all_shares = {
        label: dict(r.relevance.shares) if r.relevance else {} for label, r in runs.items()
    }
    ground_truth = next((r.ground_truth for r in runs.values() if r.truth_shares), None)
    truth = ground_truth["term_shares"] if ground_truth else None

    union = list(dict.fromkeys(t for shares in all_shares.values() for t in shares))
    mean = {t: np.mean([finite_or(s.get(t, 0.0), 0.0) for s in all_shares.values()]) for t in union}
    terms = sorted(union, key=lambda t: -mean[t])

    rows = [[code(t), *(fmt(s.get(t), 3) for s in all_shares.values())] for t in terms]
    rows.append(
        [
            "interaction share (total)",
            *(fmt(interaction_share(s), 3) if s else "—" for s in all_shares.values()),
        ]
    )
    rows.append(
        [
            "test accuracy",
            *(fmt(r.metrics.get("test", {}).get("accuracy"), 4) for r in runs.values()),
        ]
    )
    header = ["term", *all_shares]
    if truth is not None:
        header.append("ground truth")
        for row, term in zip(rows[: len(terms)], terms, strict=True):
            row.append(fmt(truth.get(term, 0.0), 3))
        rows[-2].append(fmt(interaction_share(truth), 3))
        bayes = ground_truth.get("bayes_accuracy")
        rows[-1].append(f"{fmt(bayes, 4)} (Bayes)" if is_number(bayes) else "—")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot_comparison(all_shares, terms, out / "comparison.png", truth)
    text = "\n".join(
        [
            "# Relevance comparison\n",
            "Share of relevance per term (β_t / Σβ) for each run; "
            "a '—' marks a term that run's model does not have.\n",
            markdown_table(header, rows, align="l" + "r" * (len(header) - 1)),
            "![comparison](comparison.png)\n",
        ]
    )
    return atomic_write_text(out / "comparison.md", text)


def _plot_comparison(
    all_shares: Mapping[str, Mapping[str, float]],
    terms: Sequence[str],
    path: Path,
    truth: Mapping[str, float] | None,
) -> Path:
    """Grouped horizontal bars: one group per term, one bar (colour) per run; interaction
    bars are hatched and interaction labels orange."""
    n_runs = len(all_shares)
    height = 0.8 / n_runs
    y = np.arange(len(terms))
    fig = _new_figure(7.5, 1.6 + 0.22 * len(terms) * max(n_runs, 2))
    ax = fig.add_subplot()
    handles = []
    for i, (label, shares) in enumerate(all_shares.items()):
        values = [finite_or(shares.get(t, 0.0), 0.0) for t in terms]
        offset = (i - (n_runs - 1) / 2) * height
        bars = ax.barh(
            y + offset,
            values,
            height=height,
            color=f"C{i % 10}",
            edgecolor=_EDGE_COLOUR,
            linewidth=0.5,
        )
        for bar, term in zip(bars, terms, strict=True):
            if _SEPARATOR in term:
                bar.set_hatch(_INTERACTION_HATCH)
        handles.append(Patch(facecolor=f"C{i % 10}", edgecolor=_EDGE_COLOUR, label=label))
    handles.append(
        Patch(
            facecolor="white",
            edgecolor=_EDGE_COLOUR,
            hatch=_INTERACTION_HATCH,
            label="interaction term",
        )
    )
    if truth is not None:
        truth_values = [finite_or(truth.get(t, 0.0), 0.0) for t in terms]
        handles.append(ax.scatter(truth_values, y, **_truth_marker_kwargs()))
    ax.set_yticks(y, terms, fontsize=9 if len(terms) <= 15 else 8)
    for tick, term in zip(ax.get_yticklabels(), terms, strict=True):
        if _SEPARATOR in term:
            tick.set_color(_INTERACTION_TEXT_COLOUR)
    ax.invert_yaxis()
    ax.set_xlim(left=0.0)
    ax.set_xlabel("share of relevance")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_title("Relevance share per term, by run")
    return _save_png(fig, path)


def render_seed_summary(summary: SeedSummary, out_dir: str | Path, title: str = "") -> Path:
    """``summary.md``: mean ± std over seeds of every test metric and of every share."""
    out = Path(out_dir)
    test = summary.metrics.get("test", {})
    metric_rows = [[k, mean_std_text(m, d, 4)] for k, (m, d) in test.items()]
    share_rows = [
        [code(t), mean_std_text(m, d, 3)]
        for t, (m, d) in sorted(summary.shares.items(), key=lambda item: -item[1][0])
    ]
    parts = [
        f"# Runs over seeds{': ' + title if title else ''}\n",
        f"Seeds {', '.join(map(str, summary.seeds))} (one run folder each, `seed-<s>/`); mean ± "
        f"standard deviation over the {len(summary.seeds)} runs.\n",
        "## Test metrics\n",
        markdown_table(["metric", "mean ± std"], metric_rows),
    ]
    if summary.headline_shares:
        intervals = summary.headline_intervals
        rows = [
            [
                code(t),
                mean_std_text(m, d, 3),
                f"[{intervals[t][0]:.3f}, {intervals[t][1]:.3f}]" if t in intervals else "—",
                mean_std_text(*summary.shares[t], 3) if t in summary.shares else "—",
            ]
            for t, (m, d) in sorted(summary.headline_shares.items(), key=lambda i: -i[1][0])
        ]
        parts += [
            "## Relevance shares\n",
            f"Headline estimator `{summary.headline}` (mean ± std over seeds, and the 95 % "
            "Student-t interval of the mean over seeds), beside the β shares.\n",
            markdown_table(["term", "headline share", "95 % interval (seeds)", "β share"], rows),
        ]
    elif share_rows:
        parts += [
            "## Relevance shares\n",
            markdown_table(["term", "share (mean ± std)"], share_rows),
        ]
    return atomic_write_text(out / "summary.md", "\n".join(parts))


def mean_std_text(mean: float, std: float, digits: int) -> str:
    """``mean ± std``; ``n/a`` when the mean is not a number (a metric undefined in a run)."""
    return f"{fmt(mean, digits)} ± {fmt(std, digits)}" if math.isfinite(mean) else "n/a"
