"""Human-readable reports of finished training runs: markdown tables and PNG charts.

A run folder holds ``results.json`` (relevance shares, metrics, optional ground truth and the
configuration) and, optionally, ``history.csv`` (one row per epoch). :func:`render_report`
turns one folder into ``report.md`` with ``relevance.png`` and ``history.png`` beside it;
:func:`render_comparison` sets several runs of the same data side by side.

Term names are modality names joined by ``*``; a name with a ``*`` is an interaction term.
Everything is read as JSON or CSV text (nothing is unpickled) and every file is written
atomically. Matplotlib is used only through its object-oriented ``Figure`` API with the Agg
canvas, so global pyplot state is never touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from interfuse.explain.ranks import spearman
from interfuse.io import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "RunRecord",
    "fidelity",
    "load_run",
    "plot_history",
    "plot_relevance",
    "relevance_table",
    "render_comparison",
    "render_report",
]

RESULTS_FILE = "results.json"
HISTORY_FILE = "history.csv"
EXPLAIN_REPORT = "explain.md"
SHARE_PREFIX = "share:"
_SEPARATOR = "*"

_UNIMODAL_COLOUR = "#4C72B0"
_INTERACTION_COLOUR = "#DD8452"
_INTERACTION_HATCH = "///"
_INTERACTION_TEXT_COLOUR = "#A5501B"
_EDGE_COLOUR = "#333333"


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RunRecord:
    """One finished run: the parsed ``results.json``, the per-epoch history and the folder."""

    results: dict[str, Any]
    history: list[dict[str, float]]
    path: Path


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run folder; ``history`` is empty when ``history.csv`` is absent.

    Raises ``FileNotFoundError`` for a missing folder or ``results.json`` and ``ValueError``
    (naming the file) for invalid JSON, a missing or malformed ``"relevance"`` entry, or a
    malformed ``history.csv``.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder not found: {path}")
    results = _read_results(path / RESULTS_FILE)
    history_file = path / HISTORY_FILE
    history = _read_history(history_file) if history_file.exists() else []
    return RunRecord(results=results, history=history, path=path)


def _read_results(file: Path) -> dict[str, Any]:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: results file not found")
    try:
        results = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file}: invalid JSON ({err})") from err
    if not isinstance(results, dict):
        raise ValueError(f"{file}: expected a JSON object at the top level")
    if "relevance" not in results:
        raise ValueError(f"{file}: missing required key 'relevance'")
    relevance = results["relevance"]
    if relevance is None:  # a baseline without built-in relevance
        return results
    if (
        not isinstance(relevance, dict)
        or not relevance
        or not all(_is_number(v) for v in relevance.values())
    ):
        raise ValueError(
            f"{file}: 'relevance' must be null or a non-empty object of term -> number"
        )
    return results


def _read_history(file: Path) -> list[dict[str, float]]:
    try:
        with file.open(newline="", encoding="utf-8") as f:
            lines = [(n, row) for n, row in enumerate(csv.reader(f), start=1) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{file}: malformed history ({err})") from err
    if not lines:
        raise ValueError(f"{file}: malformed history (no header row)")
    _, header = lines[0]
    header = [name.strip() for name in header]
    if "epoch" not in header or "" in header or len(set(header)) != len(header):
        raise ValueError(
            f"{file}: malformed history header {header!r} "
            "(needs an 'epoch' column and unique, non-empty column names)"
        )
    history = []
    for n, row in lines[1:]:
        if len(row) != len(header):
            raise ValueError(
                f"{file}: malformed history, line {n} has {len(row)} fields, expected {len(header)}"
            )
        try:
            values = [float(v) if v.strip() else math.nan for v in row]
        except ValueError as err:
            raise ValueError(f"{file}: malformed history, line {n}: {err}") from err
        history.append(dict(zip(header, values, strict=True)))
    return history


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# --------------------------------------------------------------------------- tables


def term_kind(term: str) -> str:
    """``"m0"`` → ``"unimodal"``; ``"m0*m1"`` → ``"interaction 2-way"``."""
    order = term.count(_SEPARATOR) + 1
    return "unimodal" if order == 1 else f"interaction {order}-way"


def relevance_table(
    shares: Mapping[str, float],
    beta: Mapping[str, float] | None = None,
    truth: Mapping[str, float] | None = None,
) -> str:
    """GitHub-markdown table of terms sorted by share, largest first.

    Columns: term, kind, share, and β / ground truth when given (a term missing from
    ``truth`` has ground-truth share 0).
    """
    header = ["term", "kind", "share"]
    if beta is not None:
        header.append("β")
    if truth is not None:
        header.append("ground truth")
    rows = []
    for term in _by_share(shares):
        row = [_code(term), term_kind(term), _fmt(shares[term], 3)]
        if beta is not None:
            row.append(_fmt(beta.get(term), 3))
        if truth is not None:
            row.append(_fmt(truth.get(term, 0.0), 3))
        rows.append(row)
    return _markdown_table(header, rows, align="ll" + "r" * (len(header) - 2))


def _by_share(shares: Mapping[str, float]) -> list[str]:
    """Terms sorted by share, largest first (ties keep their order)."""
    return sorted(shares, key=lambda t: -_finite_or(shares[t], -math.inf))


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """``align`` has one letter per column: ``l`` (left) or ``r`` (right, for numbers)."""
    align = ["---:" if a == "r" else "---" for a in align]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(_cell(c) for c in line) + " |" for line in lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _code(term: str) -> str:
    """Backticks keep the ``*`` in ``a*b*c`` from being read as emphasis."""
    return f"`{term}`"


def _fmt(x: object, digits: int) -> str:
    if x is None:
        return "—"
    if _is_number(x):
        return "n/a" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def _finite_or(x: object, default: float) -> float:
    return float(x) if _is_number(x) and math.isfinite(x) else default


# --------------------------------------------------------------------------- fidelity


def fidelity(shares: Mapping[str, float], truth_shares: Mapping[str, float]) -> dict[str, float]:
    """How well learned shares match known ground-truth shares.

    - ``spearman``: rank correlation (average ranks for ties) over the model's unimodal
      terms; NaN for fewer than two such terms or when either side is constant.
    - ``l1``: Σ |share − truth| over all terms of either side (a missing entry is 0).
    - ``leakage``: total share on terms whose ground-truth share is 0 (or missing).
    - ``interaction_share``: total share on interaction terms (names containing ``*``).
    """
    terms = list(shares) + [t for t in truth_shares if t not in shares]
    share = {t: float(shares.get(t, 0.0)) for t in terms}
    truth = {t: float(truth_shares.get(t, 0.0)) for t in terms}
    unimodal = [t for t in shares if _SEPARATOR not in t]
    return {
        "spearman": spearman([share[t] for t in unimodal], [truth[t] for t in unimodal]),
        "l1": float(sum(abs(share[t] - truth[t]) for t in terms)),
        "leakage": float(sum(share[t] for t in terms if truth[t] == 0.0)),
        "interaction_share": float(sum(share[t] for t in terms if _SEPARATOR in t)),
    }


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


def _kind_legend_handles() -> list[Any]:
    from matplotlib.patches import Patch

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
) -> Path:
    """Horizontal bar chart of the share per term (largest on top), saved as a PNG.

    Interaction terms are orange and hatched, unimodal terms blue; ground-truth shares (a
    missing term counts as 0) are drawn as hollow diamonds.
    """
    if not shares:
        raise ValueError("plot_relevance: no terms to plot")
    from matplotlib.transforms import blended_transform_factory

    terms = _by_share(shares)
    values = [_finite_or(shares[t], 0.0) for t in terms]
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
        truth_values = [_finite_or(truth.get(t, 0.0), 0.0) for t in terms]
        handles.append(ax.scatter(truth_values, y, **_truth_marker_kwargs()))
        top = max(top, *truth_values)
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
    """Shares per term over epochs (interaction terms dashed) and, below, the ``val_*`` columns.

    Does nothing and returns None when ``history`` is empty.
    """
    if not history:
        return None
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    columns = list(dict.fromkeys(key for row in history for key in row))
    share_columns = [c for c in columns if c.startswith(SHARE_PREFIX)]
    val_columns = [c for c in columns if c.startswith("val_")]
    epochs = [row.get("epoch", i + 1) for i, row in enumerate(history)]

    def series(column: str) -> list[float]:
        return [row.get(column, math.nan) for row in history]

    marker = "." if len(epochs) < 40 else None
    colours = colormaps["tab10" if len(share_columns) <= 10 else "tab20"]
    share_panel = bool(share_columns) or not val_columns  # baselines log no shares
    panels = share_panel + bool(val_columns)
    fig = _new_figure(8.0, 3.4 * panels)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    ax = axes[0]
    for i, column in enumerate(share_columns):
        term = column[len(SHARE_PREFIX) :]
        linestyle = "--" if _SEPARATOR in term else "-"
        ax.plot(
            epochs,
            series(column),
            label=term,
            color=colours(i % colours.N),
            linestyle=linestyle,
            marker=marker,
        )
    if share_panel:
        ax.set_ylabel("share")
        ax.set_title("Relevance share per term (interaction terms dashed)")
    if val_columns:
        for column in val_columns:
            axes[-1].plot(epochs, series(column), label=column, marker=marker)
        axes[-1].set_ylabel("validation metric")
        axes[-1].set_title("Validation metrics")
    for a in axes:
        a.grid(alpha=0.3)
        if a.lines:
            ncol = 1 + len(a.lines) // 12
            a.legend(fontsize=7, ncol=ncol, loc="upper left", bbox_to_anchor=(1.01, 1))
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
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


def render_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, ``relevance.png`` and (with a history) ``history.png`` into the run
    folder; return the path of ``report.md``."""
    run = load_run(run_dir)
    results, folder = run.results, run.path
    shares = results["relevance"]
    config = results.get("config") or {}
    dataset = config.get("dataset", folder.name)
    ground_truth = results.get("ground_truth") or {}
    truth = ground_truth.get("term_shares")

    history_png = plot_history(run.history, folder / "history.png")
    parts = [f"# Run report: {dataset}\n"]
    if shares is not None:
        plot_relevance(
            shares, folder / "relevance.png", truth=truth, title=f"Relevance — {dataset}"
        )
        p = results.get("p", config.get("p"))
        parts += [
            _EXPLANATION.format(p=_fmt(p, 1) if _is_number(p) else "?") + "\n",
            "## Relevance\n",
            relevance_table(shares, results.get("relevance_beta"), truth),
            "![relevance](relevance.png)\n",
        ]
    else:
        model = (results.get("model") or {}).get("model", "this model")
        parts.append(
            f"The model (`{model}`) has no built-in relevance; run `interfuse explain` on this "
            "folder for post-hoc relevance (ablation, Shapley, Möbius, EMAP).\n"
        )
    parts += ["## Metrics\n", _metrics_section(results)]
    if results.get("missing_modalities"):
        parts += ["## Missing modalities at test time\n", _missing_section(results)]
    if truth is not None and shares is not None:
        parts += ["## Fidelity to the ground truth\n", _fidelity_section(shares, truth)]
    if (folder / EXPLAIN_REPORT).exists():
        parts += [
            "## Post-hoc explanations\n",
            f"Modality ablation, exact Shapley and Möbius values and EMAP (beside the built-in "
            f"relevance, if any): [{EXPLAIN_REPORT}]({EXPLAIN_REPORT}).\n",
        ]
    if history_png is not None:
        parts += ["## Training history\n", "![history](history.png)\n"]
    if config:
        parts += ["## Configuration\n", _config_table(config)]
    return atomic_write_text(folder / "report.md", "\n".join(parts))


def _missing_section(results: Mapping[str, Any]) -> str:
    """Test metrics with each modality (and pair) missing, through the model's mask path."""
    rows_by_set: Mapping[str, Mapping[str, float]] = results["missing_modalities"]
    names = [k for k in next(iter(rows_by_set.values())) if k in ("accuracy", "loss", "mae")]
    rows = [
        ["none" if missing == "none" else _code(missing)]
        + [_fmt(metrics.get(name), 4) for name in names]
        for missing, metrics in rows_by_set.items()
    ]
    intro = (
        "Each row drops the named modalities for every test sample: their blocks, and those of "
        "every interaction containing them, are replaced by their expectation (SPEC §1.10). "
        "Train with `--modality-dropout P` to make the model robust to this.\n"
    )
    return intro + "\n" + _markdown_table(["missing", *names], rows, "l" + "r" * len(names))


def _metrics_section(results: Mapping[str, Any]) -> str:
    metrics = results.get("metrics") or {}
    val, test = metrics.get("val") or {}, metrics.get("test") or {}
    names = list(dict.fromkeys([*val, *test]))
    text = ""
    if names:
        rows = [[name, _fmt(val.get(name), 4), _fmt(test.get(name), 4)] for name in names]
        text += _markdown_table(["metric", "val", "test"], rows, align="lrr") + "\n"
    facts = []
    if "best_epoch" in results:
        epochs_run = results.get("epochs_run")
        facts.append(
            f"Best epoch: {results['best_epoch']}"
            + (f" of {epochs_run} run." if epochs_run is not None else ".")
        )
    if _is_number(results.get("train_seconds")):
        facts.append(f"Training time: {results['train_seconds']:.1f} s.")
    bayes = (results.get("ground_truth") or {}).get("bayes_accuracy")
    if _is_number(bayes):
        accuracy = test.get("accuracy")
        if _is_number(accuracy):
            facts.append(
                f"Test accuracy {accuracy:.4f} vs. Bayes-optimal accuracy {bayes:.4f} "
                f"(gap {bayes - accuracy:+.4f})."
            )
        else:
            facts.append(f"Bayes-optimal accuracy: {bayes:.4f} (no test accuracy recorded).")
    text += "".join(f"- {fact}\n" for fact in facts)
    return text or "No metrics recorded.\n"


def _fidelity_section(shares: Mapping[str, float], truth: Mapping[str, float]) -> str:
    scores = fidelity(shares, truth)
    meaning = {
        "spearman": "rank correlation with the true shares over unimodal terms (1 = same order)",
        "l1": "Σ |share − true share| over all terms (0 = identical, 2 = disjoint)",
        "leakage": "total share on terms that are irrelevant in truth (0 is ideal)",
        "interaction_share": "total share on interaction terms",
    }
    rows = [[_code(key), _fmt(scores[key], 3), meaning[key]] for key in meaning]
    return _markdown_table(["measure", "value", "meaning"], rows, align="lrl")


def _config_table(config: Mapping[str, Any]) -> str:
    rows = [[_code(key), _config_value(value)] for key, value in config.items()]
    return _markdown_table(["setting", "value"], rows, align="ll")


def _config_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def render_comparison(runs: Mapping[str, str | Path], out_dir: str | Path) -> Path:
    """Compare the relevance shares of several runs of the same data.

    Writes ``out_dir/comparison.md`` (one table: a row per term of any run, a column per run
    label, plus the total interaction share and the test accuracy; a "—" marks a term the run's
    model does not have) and the grouped bar chart ``out_dir/comparison.png``. A ground-truth
    column/marker is added from the first run that has one. Returns the markdown path.
    """
    if not runs:
        raise ValueError("render_comparison: no runs given")
    loaded = {label: load_run(path).results for label, path in runs.items()}
    all_shares = {label: results["relevance"] or {} for label, results in loaded.items()}
    ground_truth = next(
        (
            r["ground_truth"]
            for r in loaded.values()
            if "term_shares" in (r.get("ground_truth") or {})
        ),
        None,
    )
    truth = ground_truth["term_shares"] if ground_truth else None

    union = list(dict.fromkeys(t for shares in all_shares.values() for t in shares))
    mean = {
        t: np.mean([_finite_or(s.get(t, 0.0), 0.0) for s in all_shares.values()]) for t in union
    }
    terms = sorted(union, key=lambda t: -mean[t])

    def test_accuracy(results: Mapping[str, Any]) -> Any:
        return ((results.get("metrics") or {}).get("test") or {}).get("accuracy")

    rows = [[_code(t), *(_fmt(s.get(t), 3) for s in all_shares.values())] for t in terms]
    rows.append(
        [
            "interaction share (total)",
            *(_fmt(_interaction_total(s), 3) for s in all_shares.values()),
        ]
    )
    rows.append(["test accuracy", *(_fmt(test_accuracy(r), 4) for r in loaded.values())])
    header = ["term", *all_shares]
    if truth is not None:
        header.append("ground truth")
        for row, term in zip(rows[: len(terms)], terms, strict=True):
            row.append(_fmt(truth.get(term, 0.0), 3))
        rows[-2].append(_fmt(_interaction_total(truth), 3))
        bayes = ground_truth.get("bayes_accuracy")
        rows[-1].append(f"{_fmt(bayes, 4)} (Bayes)" if _is_number(bayes) else "—")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _plot_comparison(all_shares, terms, out / "comparison.png", truth)
    text = "\n".join(
        [
            "# Relevance comparison\n",
            "Share of relevance per term (β_t / Σβ) for each run; "
            "a '—' marks a term that run's model does not have.\n",
            _markdown_table(header, rows, align="l" + "r" * (len(header) - 1)),
            "![comparison](comparison.png)\n",
        ]
    )
    return atomic_write_text(out / "comparison.md", text)


def _interaction_total(shares: Mapping[str, float]) -> float:
    return float(sum(v for t, v in shares.items() if _SEPARATOR in t))


def _plot_comparison(
    all_shares: Mapping[str, Mapping[str, float]],
    terms: Sequence[str],
    path: Path,
    truth: Mapping[str, float] | None,
) -> Path:
    """Grouped horizontal bars: one group per term, one bar (colour) per run; interaction
    bars are hatched and interaction labels orange."""
    from matplotlib.patches import Patch

    n_runs = len(all_shares)
    height = 0.8 / n_runs
    y = np.arange(len(terms))
    fig = _new_figure(7.5, 1.6 + 0.22 * len(terms) * max(n_runs, 2))
    ax = fig.add_subplot()
    handles = []
    for i, (label, shares) in enumerate(all_shares.items()):
        values = [_finite_or(shares.get(t, 0.0), 0.0) for t in terms]
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
        truth_values = [_finite_or(truth.get(t, 0.0), 0.0) for t in terms]
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
