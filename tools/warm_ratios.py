"""How much does the timing method move the small configurations of BENCHMARKS.md §3?

The speed table (``python -m benchmarks speed``) times one step at a time, rotating through five
implementations, so every step runs right after a different one. A training loop runs the same
step back to back. This tool times both ways, in one process, for ``before``, ``ours`` and the
``floor`` of :func:`benchmarks.fusion_speed.build`:

* *alternating*: the table's own timing (:func:`benchmarks.fusion_speed.interleaved_times`:
  rounds of one step of each of the five implementations, in rotating order);
* *warm*: rounds of ``--steps`` consecutive steps of each of the three in turn.

Ratios are medians of per-round ratios. Run:
``PYTHONPATH=src:. .venv/bin/python tools/warm_ratios.py 2,4,1 2,8,2 3,4,2`` (configurations
``M,r,K``; 1 torch thread, batch 256, d_m = 32).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from benchmarks.fusion_speed import build, interleaved_times

NAMES = ("before", "ours", "floor")


def _rounds(
    steps: dict[str, Callable[[], None]], rounds: int, per_round: int
) -> dict[str, list[float]]:
    """CPU seconds per step of each implementation, one entry per round."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            start = time.process_time()
            for _ in range(per_round):
                step()
            times[name].append((time.process_time() - start) / per_round)
    return times


def _ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="M,r,K (r is ignored for K = 1)")
    parser.add_argument("--steps", type=int, default=100, help="steps per warm round")
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(
        "| M | r | K | before ms (warm) | ours / before: alternating | warm | "
        "ours / floor: alternating | warm |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for config in args.configs:
        m, r, k = (int(v) for v in config.split(","))
        built = build(m, r, k)
        reps = args.rounds * args.steps
        alternating = interleaved_times(built["steps"], 0.0, reps, reps)["cpu"]
        steps = {name: built["steps"][name] for name in NAMES}
        _rounds(steps, 3, 10)  # warm-up
        warm = _rounds(steps, args.rounds, args.steps)
        print(
            f"| {m} | {r if k > 1 else '—'} | {k} | {statistics.median(warm['before']) * 1e3:.2f} "
            f"| {_ratio(alternating, 'ours', 'before'):.2f} | {_ratio(warm, 'ours', 'before'):.2f} "
            f"| {_ratio(alternating, 'ours', 'floor'):.1f} | {_ratio(warm, 'ours', 'floor'):.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
