"""Benchmarks of interfuse: relevance fidelity, accuracy vs baselines, fusion-head speed and
memory, end-to-end training throughput. Run ``python -m benchmarks --help`` (or ``make bench``);
results land in ``benchmarks/results/`` and are discussed in ``BENCHMARKS.md``."""
