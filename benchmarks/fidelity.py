"""Fidelity suite: do the learned relevance shares match the known ground truth?

Synthetic DNA data (``interfuse.data.synthetic``) with known Shapley shares of the information
game (``GroundTruth.term_shares``). For every configuration and seed we train with
``interfuse.train.fit`` (``TrainConfig`` defaults unless stated, recorded in the JSON:
pairwise interactions, rank 8, p = 2, λ = 0.01, lr 3e-3, modality dropout 0.3 and the sequence
encoder's dropout 0.25; then always an attempt without dropout at lr 1e-2 and λ 0.05, a third
when not learnt, and a fine-tune with the first attempt's dropout when validation selects an
attempt without it; early stopping on validation, validation picks the model) and compare the
shares of the selected model (β) and of every held-out estimator (validation split) with the
truth using
``interfuse.ranks.fidelity`` (Spearman ρ over unimodal terms, L1, leakage, interaction share),
plus test accuracy vs the Bayes-optimal accuracy, the entropy of the shares, the number of terms
with share > 0.01 and the number of *relevant* terms (truth > 0) that the model drops (share <
0.01).

Experiments (seed s generates the data, the split and the initialisation):

* ``main``: motif data with 3, 4 and 6 modalities, XOR, mixed (motif + XOR pair with q < 1), and a
  *redundant* configuration where ``m1`` is an exact copy of ``m0`` (Shapley splits their credit
  equally; a sparsity-inducing norm need not), at p = 2 and p = 1;
* ``inflation``: motif data without any true interaction, interactions on, IterBN+vBN on vs off;
* ``p``: the p sweep (p = 1, 4/3, 2, 4) on the 6-modality configuration, which has a weak but
  relevant modality (m3, p_m = 0.1, true share 0.046) and two irrelevant ones;
* ``heldout``: ``motif5``, reported but not used to choose the estimators (scales ``full`` and
  ``main``; ``main`` = the ``main`` and ``heldout`` groups at full settings, run through
  ``fidelity.run("main", OUT)``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._common import (
    environment,
    fmt,
    load_average,
    markdown_table,
    mean_std,
    pm,
    publish,
    quiet_lightning,
    set_threads,
    train_defaults,
)

SUITE = "fidelity"

SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    # n: samples per data set; epochs: maximal epochs (early stopping, patience 5)
    "full": {"seeds": 5, "n": 4000, "epochs": 20},
    "quick": {"seeds": 2, "n": 1000, "epochs": 3},
    "tiny": {"seeds": 1, "n": 200, "epochs": 1, "only": ["motif3", "mixed", "IterBN+vBN off"]},
    # the configurations of the targets and the held-out one, without the sweeps (same settings
    # as full): ``python -c "from benchmarks import fidelity; fidelity.run('main', OUT)"``
    "main": {"seeds": 5, "n": 4000, "epochs": 20, "groups": ("main", "heldout")},
}

DROP_THRESHOLD = 0.01


@dataclass(frozen=True)
class Dataset:
    title: str
    make: Callable[..., Any]  # (n, seed, **generator options, e.g. motifs) -> SyntheticData


def _motif(probs: list[float]) -> Callable[..., Any]:
    def make(n: int, seed: int, **options: Any) -> Any:
        from interfuse.data import make_motif_data

        return make_motif_data(probs, n=n, seed=seed, **options)

    return make


def _xor(n: int, seed: int, **options: Any) -> Any:
    from interfuse.data import make_xor_data

    return make_xor_data(3, (0, 1), n=n, seed=seed, **options)


def _mixed(n: int, seed: int, **options: Any) -> Any:
    from interfuse.data import make_synthetic

    return make_synthetic(
        [0.5, 0.0, 0.0, 0.0], xor_pair=(1, 2), xor_prob=0.8, n=n, seed=seed, **options
    )


REDUNDANT_SOURCES = {"m0": "a", "m1": "a", "m2": "b", "m3": "c"}
REDUNDANT_PROBS = {"a": 0.8, "b": 0.4, "c": 0.0}


def _redundant(n: int, seed: int, **options: Any) -> Any:
    """Motif data (0.8, -, 0.4, 0) where m1 is an exact copy of m0, with its Shapley truth."""
    from interfuse.data import make_motif_data
    from interfuse.games import coalition_values, shapley_values

    data = make_motif_data([0.8, 0.0, 0.4, 0.0], n=n, seed=seed, **options)
    data.codes["m1"] = data.codes["m0"].copy()
    names = list(REDUNDANT_SOURCES)

    def information(coalition: frozenset[str]) -> float:
        sources = {REDUNDANT_SOURCES[m] for m in coalition}
        return 1.0 - math.prod(1.0 - REDUNDANT_PROBS[s] for s in sources)

    phi = shapley_values(coalition_values(information, names), names)
    total = sum(phi.values())
    shares = {m: v / total for m, v in phi.items()}
    truth = dataclasses.replace(
        data.ground_truth,
        probs={m: REDUNDANT_PROBS[REDUNDANT_SOURCES[m]] for m in names},
        modality_shares=shares,
        term_shares=dict(shares),
        relevant_terms=tuple(m for m in names if shares[m] > 1e-12),
        information=None,
    )
    return dataclasses.replace(data, ground_truth=truth)


HELDOUT_PROBS = [0.7, 0.0, 0.5, 0.0, 0.25]


DATASETS: dict[str, Dataset] = {
    "motif3": Dataset("motif, p = (0.8, 0.4, 0)", _motif([0.8, 0.4, 0.0])),
    "motif4": Dataset("motif (demo), p = (0.9, 0.6, 0.3, 0)", _motif([0.9, 0.6, 0.3, 0.0])),
    "motif6": Dataset(
        "motif, p = (0.8, 0.5, 0.3, 0.1, 0, 0)", _motif([0.8, 0.5, 0.3, 0.1, 0.0, 0.0])
    ),
    "xor": Dataset("XOR m0*m1, m2 distractor", _xor),
    "mixed": Dataset("m0 p = 0.5, XOR m1*m2 with q = 0.8, m3 noise", _mixed),
    "redundant": Dataset("m1 = copy of m0 (0.8), m2 0.4, m3 0", _redundant),
    # held out from the estimators' design; it weighed in the choice of λ (BENCHMARKS.md §1.1)
    "motif5": Dataset("held out: motif, p = (0.7, 0, 0.5, 0, 0.25)", _motif(HELDOUT_PROBS)),
}


@dataclass(frozen=True)
class Experiment:
    group: str
    label: str
    dataset: str
    overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, tuple[tuple[str, Any], ...]]:
        return self.dataset, tuple(sorted(self.overrides.items()))


EXPERIMENTS = [
    Experiment("main", "motif3", "motif3"),
    Experiment("main", "motif4", "motif4"),
    Experiment("main", "motif6", "motif6"),
    Experiment("main", "xor", "xor"),
    Experiment("main", "mixed", "mixed"),
    Experiment("main", "redundant", "redundant"),
    Experiment("main", "redundant, p=1", "redundant", {"p": 1.0}),
    Experiment("inflation", "IterBN+vBN on", "motif4"),
    Experiment("inflation", "IterBN+vBN off", "motif4", {"iterbn": False, "vbn": False}),
    Experiment("p", "p=1", "motif6", {"p": 1.0}),
    Experiment("p", "p=4/3", "motif6", {"p": 4.0 / 3.0}),
    Experiment("p", "p=2", "motif6"),
    Experiment("p", "p=4", "motif6", {"p": 4.0}),
    Experiment("heldout", "motif5 (held out)", "motif5"),
]

RELEVANT_TRUTH = 0.05
"""Terms with at least this true share should be judged "relevant" (targets of issue 12)."""

METRICS = (
    "spearman",
    "l1",
    "leakage",
    "interaction_share",
    "test_accuracy",
    "bayes_accuracy",
    "accuracy_gap",
    "entropy_bits",
    "terms_above_0.01",
    "relevant_dropped",
)


def share_metrics(shares: dict[str, float], truth: dict[str, float]) -> dict[str, float]:
    """``fidelity`` plus entropy, support size and dropped relevant terms."""
    from interfuse.ranks import fidelity

    metrics = fidelity(shares, truth)
    positive = [s for s in shares.values() if s > 0]
    metrics["entropy_bits"] = -sum(s * math.log2(s) for s in positive)
    metrics["terms_above_0.01"] = float(sum(s > DROP_THRESHOLD for s in shares.values()))
    metrics["relevant_dropped"] = float(
        sum(shares.get(t, 0.0) < DROP_THRESHOLD for t, v in truth.items() if v > 0)
    )
    return metrics


def _calibration(estimate: Any, truth: dict[str, float]) -> dict[str, float]:
    """Interval coverage and verdict rates of one estimate (NaN where they do not apply):
    ``covered``/``intervals`` (terms whose interval holds the truth / terms with an interval),
    ``zero_ns``/``zero`` (truth-0 terms judged not significant / truth-0 terms) and
    ``strong_rel``/``strong`` (terms with truth ≥ RELEVANT_TRUTH judged relevant / such terms)."""
    counts = dict.fromkeys(("covered", "intervals", "zero_ns", "zero", "strong_rel", "strong"), 0.0)
    for t, e in estimate.terms.items():
        if not math.isfinite(e.low):
            continue
        value = float(truth.get(t, 0.0))
        counts["intervals"] += 1
        counts["covered"] += float(e.low - 1e-9 <= value <= e.high + 1e-9)
        if value == 0.0:
            counts["zero"] += 1
            counts["zero_ns"] += float(e.verdict != "relevant")
        if value >= RELEVANT_TRUTH:
            counts["strong"] += 1
            counts["strong_rel"] += float(e.verdict == "relevant")
    return counts


def run_one(dataset: str, overrides: dict[str, Any], seed: int, settings: dict[str, Any]) -> dict:
    from interfuse.data import synthetic_task
    from interfuse.train import TrainConfig

    from .training import train_once

    data = DATASETS[dataset].make(settings["n"], seed)
    task = synthetic_task(data, seed=seed, name=dataset)
    config = TrainConfig(epochs=settings["epochs"], seed=seed, **overrides)
    started = time.perf_counter()
    results = train_once(task, config)
    seconds = time.perf_counter() - started
    truth = data.ground_truth
    shares = {t: float(s) for t, s in results.relevance.shares.items()}
    metrics = share_metrics(shares, truth.term_shares)
    accuracy = results.metrics["test"]["accuracy"]
    metrics.update(
        test_accuracy=accuracy,
        bayes_accuracy=truth.bayes_accuracy,
        accuracy_gap=truth.bayes_accuracy - accuracy,
    )
    estimators = {}
    for name, estimate in (results.estimates.estimates if results.estimates else {}).items():
        est_shares = dict(estimate.shares)
        estimators[name] = {
            "metrics": {
                **share_metrics(est_shares, truth.term_shares),
                **_calibration(estimate, truth.term_shares),
            },
            "shares": est_shares,
            "intervals": {t: [e.low, e.high] for t, e in estimate.terms.items()},
            "verdicts": {t: e.verdict for t, e in estimate.terms.items()},
        }
    return {
        "seed": seed,
        "metrics": metrics,
        "shares": shares,
        "estimators": estimators,
        "headline": results.estimates.headline if results.estimates else None,
        "verdict": results.verdict.status if results.verdict else None,
        "attempts": results.attempts,
        "selected_attempt": results.selected_attempt,
        "truth": dict(truth.term_shares),
        "epochs_run": results.epochs_run,
        "best_epoch": results.best_epoch,
        "seconds": round(seconds, 2),
        "load": load_average(),
    }


def run(scale: str, out_dir: str, threads: int = 1) -> dict[str, Any]:
    quiet_lightning()
    threads = set_threads(threads)
    settings = SCALE_SETTINGS[scale]
    env = environment(threads)
    started = time.perf_counter()
    cache: dict[Any, list[dict]] = {}
    only = settings.get("only")
    groups = settings.get("groups")
    experiments_run = [
        e
        for e in EXPERIMENTS
        if (only is None or e.label in only or e.dataset in only)
        and (groups is None or e.group in groups)
        and (only is not None or groups is not None or e.group != "heldout" or scale == "full")
    ]
    for experiment in experiments_run:
        if experiment.key in cache:
            continue
        runs = []
        for seed in range(settings["seeds"]):
            record = run_one(experiment.dataset, experiment.overrides, seed, settings)
            runs.append(record)
            m = record["metrics"]
            print(
                f"[fidelity] {experiment.dataset} {experiment.overrides or ''} seed {seed}: "
                f"rho {fmt(m['spearman'], 2)} L1 {m['l1']:.2f} leak {m['leakage']:.3f} "
                f"inter {m['interaction_share']:.3f} acc {m['test_accuracy']:.3f} "
                f"({record['seconds']:.1f} s, load {record['load'][0]})",
                file=sys.stderr,
                flush=True,
            )
        cache[experiment.key] = runs

    experiments = []
    for experiment in experiments_run:
        runs = cache[experiment.key]
        summary = {k: mean_std(r["metrics"][k] for r in runs) for k in METRICS}
        terms = list(runs[0]["shares"])
        mean_shares = {t: mean_std(r["shares"][t] for r in runs) for t in terms}
        estimator_summary = {
            name: {
                "summary": {
                    k: mean_std(r["estimators"][name]["metrics"][k] for r in runs)
                    for k in runs[0]["estimators"][name]["metrics"]
                },
                "totals": {
                    k: sum(r["estimators"][name]["metrics"][k] for r in runs)
                    for k in ("covered", "intervals", "zero_ns", "zero", "strong_rel", "strong")
                },
                "mean_shares": {
                    t: mean_std(r["estimators"][name]["shares"][t] for r in runs) for t in terms
                },
            }
            for name in runs[0]["estimators"]
        }
        experiments.append(
            {
                "group": experiment.group,
                "label": experiment.label,
                "dataset": experiment.dataset,
                "dataset_title": DATASETS[experiment.dataset].title,
                "overrides": experiment.overrides,
                "summary": summary,
                "mean_shares": mean_shares,
                "estimators": estimator_summary,
                "learnt": sum(r["verdict"] == "learnt" for r in runs),
                "truth": runs[0]["truth"],
                "runs": runs,
            }
        )
    payload = {
        "suite": SUITE,
        "scale": scale,
        "settings": {
            **settings,
            "train_config": train_defaults("unless overridden (the experiment's overrides)"),
            "drop_threshold": DROP_THRESHOLD,
        },
        "environment": env,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "experiments": experiments,
    }
    return publish(out_dir, SUITE, scale, payload, render)


def _find(payload: dict, group: str) -> list[dict]:
    return [e for e in payload["experiments"] if e["group"] == group]


def render(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    parts = [
        f"### Relevance fidelity ({s['seeds']} seeds, n = {s['n']}, ≤ {s['epochs']} epochs; "
        "mean ± std)\n",
        markdown_table(
            [
                "configuration",
                "Spearman ρ",
                "L1 to truth",
                "leakage",
                "interaction share",
                "test acc",
                "Bayes acc",
                "relevant dropped",
            ],
            [
                [
                    e["label"]
                    if e["label"] != e["dataset"]
                    else f"{e['label']}: {e['dataset_title']}",
                    pm(e["summary"]["spearman"], 2),
                    pm(e["summary"]["l1"]),
                    pm(e["summary"]["leakage"]),
                    pm(e["summary"]["interaction_share"]),
                    pm(e["summary"]["test_accuracy"]),
                    fmt(e["summary"]["bayes_accuracy"]["mean"]),
                    pm(e["summary"]["relevant_dropped"], 1),
                ]
                for e in _find(payload, "main")
            ],
        ),
        "\n\n#### Mean shares vs ground truth (share mean ± std / truth)\n",
        markdown_table(
            ["configuration", "shares"],
            [
                [e["label"], _share_cell(e)]
                for e in _find(payload, "main")
                + _find(payload, "inflation")[1:]
                + _find(payload, "heldout")
            ],
        ),
        "\n\n### Degree inflation: motif data (0.9, 0.6, 0.3, 0), no true interaction, pairs on\n",
        markdown_table(
            ["normalisation", "interaction share", "leakage", "L1", "Spearman ρ", "test acc"],
            [
                [
                    e["label"],
                    pm(e["summary"]["interaction_share"]),
                    pm(e["summary"]["leakage"]),
                    pm(e["summary"]["l1"]),
                    pm(e["summary"]["spearman"], 2),
                    pm(e["summary"]["test_accuracy"]),
                ]
                for e in _find(payload, "inflation")
            ],
        ),
        "\n\n### p sweep on motif (0.8, 0.5, 0.3, 0.1, 0, 0): sparsity of the shares\n",
        markdown_table(
            [
                "p",
                "entropy (bits)",
                "terms > 0.01",
                "share m3 (truth 0.046)",
                "relevant dropped",
                "leakage",
                "L1",
                "Spearman ρ",
                "test acc",
            ],
            [
                [
                    e["label"],
                    pm(e["summary"]["entropy_bits"], 2),
                    pm(e["summary"]["terms_above_0.01"], 1),
                    pm(e["mean_shares"].get("m3", {}), 3),
                    pm(e["summary"]["relevant_dropped"], 1),
                    pm(e["summary"]["leakage"]),
                    pm(e["summary"]["l1"]),
                    pm(e["summary"]["spearman"], 2),
                    pm(e["summary"]["test_accuracy"]),
                ]
                for e in _find(payload, "p")
            ],
        ),
    ]
    parts.append(_render_estimators(payload))
    return "".join(parts) + "\n"


def _rate(totals: dict[str, float], hit: str, of: str) -> str:
    return (
        f"{totals[hit] / totals[of]:.2f} ({totals[hit]:.0f}/{totals[of]:.0f})"
        if totals[of]
        else "—"
    )


def _render_estimators(payload: dict[str, Any]) -> str:
    """Every estimator on every configuration (held-out validation split of each run)."""
    shown = [e for e in payload["experiments"] if e.get("estimators") and e["group"] != "p"]
    if not shown:
        return ""
    rows = []
    for e in shown:
        for name, est in e["estimators"].items():
            summary, totals = est["summary"], est["totals"]
            rows.append(
                [
                    e["label"],
                    name,
                    pm(summary["spearman"], 2),
                    pm(summary["l1"]),
                    pm(summary["leakage"]),
                    pm(summary["interaction_share"]),
                    _rate(totals, "covered", "intervals"),
                    _rate(totals, "zero_ns", "zero"),
                    _rate(totals, "strong_rel", "strong"),
                ]
            )
    # the headline chosen from these numbers (payload["headline"]) or the one of the runs
    chosen = payload.get("headline") or shown[0]["runs"][0].get("headline")
    headline = [
        [e["label"], f"{e['learnt']}/{len(e['runs'])}", _share_cell_of(e, chosen)]
        for e in shown
        if chosen in e["estimators"]
    ]
    return "".join(
        [
            "\n\n### Relevance estimators side by side (validation split of each run; "
            "mean ± std over seeds)\n",
            "Coverage: terms whose 95 % interval holds the truth; truth 0 → n.s.: terms with "
            "truth 0 judged not significant; truth ≥ 0.05 → rel.: such terms judged relevant "
            "(rates pooled over seeds and terms).\n\n",
            markdown_table(
                [
                    "configuration",
                    "estimator",
                    "Spearman ρ",
                    "L1 to truth",
                    "leakage",
                    "interaction share",
                    "coverage",
                    "truth 0 → n.s.",
                    "truth ≥ 0.05 → rel.",
                ],
                rows,
            ),
            f"\n\n#### Headline estimator ({chosen}): mean shares vs ground truth\n",
            markdown_table(["configuration", "learnt (verdict)", "shares"], headline),
        ]
    )


def _share_cell_of(experiment: dict, estimator: str) -> str:
    est = experiment["estimators"][estimator]
    return _share_cell({"mean_shares": est["mean_shares"], "truth": experiment["truth"]})


def _share_cell(experiment: dict) -> str:
    shares, truth = experiment["mean_shares"], experiment["truth"]
    ordered = sorted(shares, key=lambda t: -shares[t]["mean"])
    shown = [t for t in ordered if shares[t]["mean"] >= 0.02 or truth.get(t, 0) > 0]
    rest = [t for t in ordered if t not in shown]
    cells = [
        f"{t} {shares[t]['mean']:.2f}±{shares[t]['std']:.2f}/{truth.get(t, 0):.2f}" for t in shown
    ]
    if rest:
        cells.append(f"others ({len(rest)}) {sum(shares[t]['mean'] for t in rest):.2f}/0")
    return "; ".join(cells)


def render_old_vs_new(old: dict[str, Any], new: dict[str, Any]) -> str:
    """Markdown: per configuration, the β shares of ``old`` (a payload of the suite before the
    estimators existed) next to every estimator of ``new``: L1, leakage, ρ, test accuracy and
    learnt runs."""
    before = {e["label"]: e for e in old["experiments"]}
    rows = []
    for e in new["experiments"]:
        if e["group"] not in ("main", "heldout"):
            continue
        o = before.get(e["label"])
        if o is not None:
            s = o["summary"]
            rows.append(
                [
                    e["label"],
                    "β (old training)",
                    pm(s["l1"]),
                    pm(s["leakage"]),
                    pm(s["spearman"], 2),
                    pm(s["test_accuracy"]),
                    "—",
                    "—",
                    "—",
                ]
            )
        accuracy = pm(e["summary"]["test_accuracy"])
        attempts = sum(r.get("attempts", 1) > 1 for r in e["runs"])
        selected = Counter(r.get("selected_attempt") or "?" for r in e["runs"])
        kept = ", ".join(f"{label} {count}" for label, count in sorted(selected.items()))
        for name, est in e.get("estimators", {}).items():
            s = est["summary"]
            rows.append(
                [
                    e["label"],
                    name,
                    pm(s["l1"]),
                    pm(s["leakage"]),
                    pm(s["spearman"], 2),
                    accuracy,
                    f"{attempts}/{len(e['runs'])}",
                    kept,
                    f"{e['learnt']}/{len(e['runs'])}",
                ]
            )
    return markdown_table(
        [
            "configuration",
            "estimator",
            "L1 to truth",
            "leakage",
            "Spearman ρ",
            "test acc",
            "restarted",
            "model selected from",
            "learnt (verdict)",
        ],
        rows,
    )
