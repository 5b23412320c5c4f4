"""``python -m benchmarks [SUITE|all] [--quick]``: SUITE is one of ``SUITES`` below."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from ._common import DEFAULT_OUT, SCALES, load_average

SUITES = {
    "fidelity": ("benchmarks.fidelity", 1),
    "accuracy": ("benchmarks.accuracy", 1),
    "speed": ("benchmarks.fusion_speed", 1),
    "throughput": ("benchmarks.throughput", 2),
    "scale": ("benchmarks.scale", 1),
    "device-speed": ("benchmarks.device_speed", 1),
}
NOT_IN_ALL = frozenset({"scale", "device-speed"})
"""Suites run only by name: ``scale`` writes gigabytes under /tmp and trains several processes;
``device-speed`` is for a session with a GPU (on the CPU, ``speed`` gives the figures)."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="interfuse benchmarks: tables on stdout, JSON + markdown under --out.",
    )
    parser.add_argument("suite", nargs="?", default="all", choices=[*SUITES, "all"])
    parser.add_argument(
        "--quick", action="store_true", help="tiny settings, everything in about 3 minutes"
    )
    parser.add_argument(
        "--scale",
        choices=SCALES,
        default=None,
        help="full (default; the numbers in BENCHMARKS.md), quick (= --quick) or tiny (tests)",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the result files")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: 1; throughput measures 2 and 1 threads)",
    )
    args = parser.parse_args(argv)
    scale = args.scale or ("quick" if args.quick else "full")
    names = [n for n in SUITES if n not in NOT_IN_ALL] if args.suite == "all" else [args.suite]
    started = time.perf_counter()
    for name in names:
        module_name, default_threads = SUITES[name]
        module = importlib.import_module(module_name)
        print(f"\n## {name} (scale {scale}, load {load_average()})\n", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        module.run(scale, args.out, threads=args.threads or default_threads)
        print(f"[{name}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(f"all done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
