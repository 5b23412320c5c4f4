"""Do the relevance intervals cover what they claim to cover?

Every run gives each estimator's shares a 95 % bootstrap interval over its validation samples
(``interfuse.explain.estimators``). Such an interval is about *the trained model*: its share on
the population the validation samples come from. The fidelity suite checks a different,
stricter thing — coverage of the data's ground truth — which also fails whenever the model
itself is biased (it learnt less from a weak modality than the modality holds). This script
separates the two for one trained model:

* **population share of the model** — the estimator on ``--population`` fresh samples from the
  same generator (same motifs, new sequences and labels from independent random streams; none
  of them in the run's data);
* for ``--chunks`` further disjoint sets of fresh samples of the validation split's size, the
  interval computed exactly as a run computes it, and whether it holds the population share
  (the interval's own claim) and the ground truth (the fidelity suite's check).

``python -m benchmarks.interval_calibration motif4 --seeds 0 1`` (datasets: those of
``benchmarks.fidelity.DATASETS``; one default training per seed, a few minutes each).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from interfuse.data import synthetic_task
from interfuse.data.batching import TensorData
from interfuse.explain.estimators import relevance_estimates
from interfuse.run import load_run
from interfuse.train import TrainConfig, fit

from ._common import markdown_table, quiet_lightning, set_threads
from .fidelity import DATASETS

ESTIMATORS = ("variance", "shapley", "shapley_refit")
"""The estimators with intervals (β has none)."""


FRESH_SEED = 1_000_003
"""Offset of the generator seed of the fresh samples (independent random streams)."""


def _fresh_samples(dataset: str, n: int, seed: int, count: int) -> TensorData:
    """``count`` new samples of the generator of ``(dataset, n, seed)``: the same motifs, from
    independent random streams (another seed; a larger draw with the same seed would continue
    the run's streams, whose numbers decided the run's motif insertions). None of their
    sequences may equal one of the run's (checked, per modality)."""
    data = DATASETS[dataset].make(n, seed)
    fresh = DATASETS[dataset].make(count, seed + FRESH_SEED, motifs=data.motifs)
    if fresh.motifs != data.motifs:
        raise SystemExit(f"{dataset}: the fresh samples have other motifs")
    for m in data.modalities:
        seen = {row.tobytes() for row in data.codes[m]}
        repeats = sum(row.tobytes() in seen for row in fresh.codes[m])
        if repeats:
            raise SystemExit(f"{dataset}: {repeats} new {m} sequences repeat a training sequence")
    one_hot = fresh.one_hot()
    inputs = {m: torch.from_numpy(one_hot[m]) for m in data.modalities}
    return TensorData(inputs, torch.from_numpy(np.asarray(fresh.labels, dtype=np.int64)))


def calibration_rows(
    dataset: str, seed: int, chunks: int, population: int, n: int = 4000
) -> list[list[str]]:
    data = DATASETS[dataset].make(n, seed)
    task = synthetic_task(data, seed=seed, name=dataset)
    truth = data.ground_truth.term_shares
    with tempfile.TemporaryDirectory(prefix="interfuse-calibration-") as tmp:
        fit(task, TrainConfig(seed=seed), Path(tmp) / "run", progress=False)
        model = load_run(Path(tmp) / "run").model
    size = len(task.val)
    fresh = _fresh_samples(dataset, n, seed, population + chunks * size)
    whole = relevance_estimates(model, task.task, fresh.subset(torch.arange(population)), seed=0)
    covered = {name: [0, 0, 0.0] for name in ESTIMATORS}  # model's share, truth, widths
    terms = 0
    for c in range(chunks):
        part = fresh.subset(torch.arange(population + c * size, population + (c + 1) * size))
        estimates = relevance_estimates(model, task.task, part, seed=c).estimates
        for name in ESTIMATORS:
            target = whole.estimates[name].shares
            for term, e in estimates[name].terms.items():
                covered[name][0] += e.low <= target[term] <= e.high
                covered[name][1] += e.low <= truth.get(term, 0.0) <= e.high
                covered[name][2] += e.high - e.low
        terms += len(estimates[ESTIMATORS[0]].terms)
    return [
        [
            dataset,
            str(seed),
            name,
            f"{hits:d}/{terms} = {hits / terms:.2f}",
            f"{truth_hits:d}/{terms} = {truth_hits / terms:.2f}",
            f"{width / terms:.3f}",
        ]
        for name, (hits, truth_hits, width) in covered.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.interval_calibration")
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--chunks", type=int, default=15, help="fresh validation-sized sets")
    parser.add_argument(
        "--population", type=int, default=12000, help="fresh samples for the model's own share"
    )
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.population < 1:
        parser.error("--chunks and --population must be at least 1")
    set_threads(1)
    quiet_lightning()
    rows = [r for s in args.seeds for r in calibration_rows(args.dataset, s, args.chunks,
                                                              args.population)]  # fmt: skip
    header = [
        "dataset", "seed", "estimator", "95 % interval holds the model's population share",
        "… holds the ground truth", "mean width",
    ]  # fmt: skip
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
