"""How much does a trained model know about each set of modalities, next to the truth?

The fidelity suite (``benchmarks.fidelity``) compares relevance shares with the Shapley shares
of the synthetic data's information game ``I(Y; X_S)``. Every loss-game estimator reads the
*model's* game instead: ``v(S)`` = held-out loss reduction of the model's terms within ``S``.
This script prints, for one trained model, both games per coalition of modalities, so that a
gap between shares and truth can be placed: in the estimator (a calibration that could extract
more) or in the model (terms that carry less than the data holds).

Per coalition ``S`` (in bits, on the validation split, 2-fold cross-fitted):

* ``refit`` — the ``shapley_refit`` estimator's game: each term of ``S`` rescaled, one bias;
* ``histogram`` (single terms only) — a nonparametric calibration of that one term's logit:
  ``P(y | bin)`` over 20 quantile bins of the term's logit difference, Laplace-smoothed (biased
  low with few samples: a perfect 0.30-bit score gets ≈ 0.23 from 600 samples);
* ``alone`` (single modalities only) — the same histogram calibration of the logit of a model
  trained on that modality *alone* (same splits, same settings): what this architecture learns
  from the modality when no other modality decides the samples for it;
* ``truth`` — ``I(Y; X_S)`` of the generator.

``python -m benchmarks.model_information motif4 --seeds 0 1`` (datasets: those of
``benchmarks.fidelity.DATASETS`` whose truth has an information table).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import markdown_table, quiet_lightning, set_threads
from .fidelity import DATASETS

BINS = 20


def histogram_information(logit: np.ndarray, y: np.ndarray, bins: int = BINS) -> float:
    """``H(Y) − CE`` in bits of a cross-fitted histogram calibration of one scalar score."""
    n = len(y)
    fold = np.random.default_rng(0).permutation(n) % 2
    ce = np.empty(n)
    for f in (0, 1):
        train, test = fold != f, fold == f
        edges = np.unique(np.quantile(logit[train], np.linspace(0, 1, bins + 1)[1:-1]))
        b_train, b_test = np.searchsorted(edges, logit[train]), np.searchsorted(edges, logit[test])
        counts = np.bincount(b_train, minlength=len(edges) + 1)
        positives = np.bincount(b_train, weights=y[train], minlength=len(edges) + 1)
        p = ((positives + 1) / (counts + 2))[b_test]  # Laplace-smoothed P(y = 1 | bin)
        ce[test] = -(y[test] * np.log2(p) + (1 - y[test]) * np.log2(1 - p))
    prior = y.mean()
    entropy = -(prior * math.log2(prior) + (1 - prior) * math.log2(1 - prior))
    return float(entropy - ce.mean())


def _trained_terms(task: Any, config: Any) -> Any:
    """Train ``task`` with ``config`` in a scratch folder; the model's terms on validation."""
    from interfuse.explain.estimators import heldout_terms
    from interfuse.run import load_run
    from interfuse.train import fit

    with tempfile.TemporaryDirectory(prefix="interfuse-info-") as tmp:
        fit(task, config, Path(tmp) / "run", progress=False)
        run = load_run(Path(tmp) / "run")
    return heldout_terms(run.model, task.task, task.val)


def _only(task: Any, modality: str) -> Any:
    """``task`` restricted to one modality (same samples, same splits)."""

    def keep(split: Any) -> Any:
        return dataclasses.replace(split, inputs={modality: split.inputs[modality]}, masks={})

    return dataclasses.replace(
        task,
        name=f"{task.name}-{modality}",
        train=keep(task.train),
        val=keep(task.val),
        test=keep(task.test),
        encoders={modality: task.encoders[modality]},
        ground_truth=None,
    )


def alone_bits(task: Any, modality: str, config: Any) -> float:
    """Histogram-calibrated validation bits of a model trained on ``modality`` alone."""
    terms = _trained_terms(_only(task, modality), dataclasses.replace(config, interactions="none"))
    part = terms.parts[modality].double().numpy()
    return histogram_information(part[:, 1] - part[:, 0], terms.targets.numpy().astype(float))


def coalition_table(
    dataset: str, seed: int, n: int = 4000, epochs: int = 20, alone: bool = True
) -> list[list[str]]:
    from interfuse.data import synthetic_task
    from interfuse.explain.estimators import refit_losses
    from interfuse.train import TrainConfig

    data = DATASETS[dataset].make(n, seed)
    truth = data.ground_truth.information
    if truth is None:
        raise SystemExit(f"{dataset}: its ground truth has no information table")
    task = synthetic_task(data, seed=seed, name=dataset)
    config = TrainConfig(epochs=epochs, seed=seed)
    terms = _trained_terms(task, config)
    y = terms.targets.numpy().astype(float)
    names = terms.terms

    empty = refit_losses(terms, torch.zeros(1, len(names), dtype=torch.bool), seed).mean()

    def refit_bits(members: set[str]) -> float:
        mask = torch.tensor([[set(t.split("*")) <= members for t in names]])
        return float(empty - refit_losses(terms, mask, seed).mean()) / math.log(2)

    rows = []
    modalities = data.ground_truth.modalities
    for size in range(1, len(modalities) + 1):
        for coalition in itertools.combinations(modalities, size):
            key = "{" + ",".join(coalition) + "}"
            hist = single = ""
            if size == 1:
                part = terms.parts[coalition[0]].double().numpy()
                hist = f"{histogram_information(part[:, 1] - part[:, 0], y):.3f}"
                if alone:
                    single = f"{alone_bits(task, coalition[0], config):.3f}"
            rows.append(
                [dataset, str(n), str(seed), key, f"{refit_bits(set(coalition)):.3f}", hist,
                 single, f"{truth[key]:.3f}"]
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.model_information")
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--no-alone", dest="alone", action="store_false",
        help="skip the models trained on one modality alone (one extra fit per modality)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    set_threads(1)
    quiet_lightning()
    rows = [
        r
        for s in args.seeds
        for r in coalition_table(args.dataset, s, args.n, args.epochs, args.alone)
    ]
    header = [
        "dataset", "n", "seed", "S", "refit v(S), bits", "histogram v(S), bits",
        "alone (histogram), bits", "truth I(Y;X_S)",
    ]  # fmt: skip
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
