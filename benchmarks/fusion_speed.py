"""Speed and memory of the fusion head: ours (fast path) vs before vs a linear floor vs naive.

One training step (forward + backward of cross-entropy + λ·regulariser, grads w.r.t. parameters
and w.r.t. the encoder outputs) on a batch of ``BATCH`` random encoder outputs
(``ENCODER_DIM`` features per modality; encoders = identity, ``encoder_dims`` given), for

* ``ours``: ``MultimodalModel.fuse`` — the fast path (``interfuse.fusion.fast``), train mode;
* ``before``: the module-by-module implementation the library had before the fast path, kept as
  the reference of the tests (``tests/fusion/reference_fusion.py``), on a copy of the same model:
  factors → IterBN → one vBN and one ``Linear`` per block;
* ``compiled`` (a few configurations, ``compile`` in the settings, where a C++ compiler exists):
  ``MultimodalModel(..., compile=True)``; its one-time cost (first step) is recorded; beside it
  ``compiled_whole``: the same head with the cross-entropy and λ·Ω_p inside one compiled
  function — what compiling the whole training step could reach (the model's switch compiles
  the head only, since the loss is the trainer's);
* ``floor``: one ``nn.Linear`` over a ready-made input with the same total feature count D as all
  of our blocks together (input requires grad, as our blocks do), + λ‖W‖²: the cost of the head
  alone, a lower bound for any implementation;
* ``blocks floor``: the same ready-made input through the model's own head layout — one weight
  block per term (concatenated for one ``linear`` per step), the bias, and λ·Ω_p over the blocks:
  what any implementation of this model's API pays before computing a single block (no vBN,
  factors, Wick products or running statistics), a lower bound for ours and for before;
* ``naive``: :class:`NaiveFusion` below — the same math written straightforwardly, with a
  per-term recursive Wick product that recomputes every raw product, every moment E[T_R] and
  every lower-order Wick product for each term (nothing shared). It is checked to give the same
  prediction as ours.

Times are process CPU time (one torch thread; on this shared machine CPU time leaves out the
time spent waiting for a core), wall time is recorded beside it.

Grid: M = 2…6 modalities, rank r ∈ {4, 8, 16}, maximal interaction order K = 1…4 (K ≤ M;
K = 1 means no interactions), all terms up to order K. Configurations whose total block size D
exceeds ``FEATURE_BUDGET`` (2^18 = 262,144 features, 256 MiB per float32 activation of the batch)
are skipped and listed: the two beyond it, M=5 r=16 K=4 (371,360 features) and M=6 r=16 K=4
(1,068,992), would take ~25 s and over a minute per step of ours here, and several GiB.
Times are medians of interleaved repetitions (implementations alternate, so load changes hit all
of them alike); ratios are medians of per-repetition ratios.

Saved for backward: bytes of the distinct storages autograd keeps for the backward pass of one
step (``torch.autograd.graph.saved_tensors_hooks``), ours / before — deterministic.

Peak memory: each configuration runs in a fresh subprocess with glibc's mmap threshold fixed at
64 KiB (``MALLOC_MMAP_THRESHOLD_``), so every tensor buffer is returned to the OS when freed and
the resident set tracks live memory; the peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs``) during one step, minus the RSS just before it, is the step's peak
extra memory (activations, gradients, temporaries; inputs and parameters excluded).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from ._common import (
    ROOT,
    environment,
    fmt,
    load_average,
    markdown_table,
    median,
    publish,
    set_threads,
)

SUITE = "speed"
FEATURE_BUDGET = 2**18
BATCH = 256
ENCODER_DIM = 32
NUM_OUTPUTS = 2
LAM = 0.05
IMPLEMENTATIONS = ("floor", "blocks_floor", "before", "ours", "naive")

SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "modalities": [2, 3, 4, 5, 6],
        "ranks": [4, 8, 16],
        "orders": [1, 2, 3, 4],
        "budget_s": 1.5,  # timing budget per configuration and implementation
        "min_reps": 4,
        "max_reps": 40,
        "passes": 2,
        "memory": "all",
        "profile": [(2, 8, 2), (3, 8, 3), (4, 8, 2), (4, 16, 3), (6, 8, 4)],
        "api_overhead": [(4, 8, 2)],
        "compile": [(2, 8, 2), (4, 8, 2), (3, 8, 3), (4, 16, 3)],
        "masked": [(2, 8, 2), (4, 8, 2), (6, 8, 2), (3, 8, 3), (4, 16, 3), (4, 4, 4), (5, 8, 4)],
        "faults": [(4, 16, 3), (6, 8, 4), (5, 16, 3), (6, 16, 3), (4, 16, 4)],
    },
    "quick": {
        "modalities": [2, 4, 6],
        "ranks": [4, 8],
        "orders": [1, 2, 3],
        "budget_s": 0.15,
        "min_reps": 3,
        "max_reps": 11,
        "memory": "some",
        "profile": [(4, 8, 2)],
        "api_overhead": [(4, 8, 2)],
        "compile": [],
        "masked": [(4, 8, 2)],
        "faults": [],
    },
    "tiny": {
        "modalities": [2],
        "ranks": [4],
        "orders": [1, 2],
        "budget_s": 0.01,
        "min_reps": 2,
        "max_reps": 3,
        "memory": "one",
        "profile": [(2, 4, 2)],
        "api_overhead": [(2, 4, 2)],
        "compile": [],
        "masked": [(2, 4, 2)],
        "faults": [(2, 4, 2)],
    },
}


# --------------------------------------------------------------------------- configurations


def modality_names(m: int) -> list[str]:
    return [f"m{i}" for i in range(m)]


def total_features(m: int, r: int, k: int) -> int:
    """D = Σ_m d_m + Σ_{2 ≤ |S| ≤ K} r^|S| over all terms S of M modalities."""
    return m * ENCODER_DIM + sum(math.comb(m, j) * r**j for j in range(2, min(k, m) + 1))


def grid(settings: dict[str, Any]) -> tuple[list[tuple[int, int, int]], list[dict[str, Any]]]:
    run, skipped = [], []
    for m, r, k in itertools.product(settings["modalities"], settings["ranks"], settings["orders"]):
        if k > m:
            continue  # order K > M is the same model as K = M
        if k == 1 and r != settings["ranks"][0]:
            continue  # no interactions: the rank plays no role, measure once
        features = total_features(m, r, k)
        if features > FEATURE_BUDGET:
            skipped.append({"M": m, "r": r, "K": k, "features": features, "why": "feature budget"})
            continue
        run.append((m, r, k))
    return run, skipped


# --------------------------------------------------------------------------- implementations


def _placement(outer: tuple[str, ...], part: tuple[str, ...], rest: tuple[str, ...]) -> str:
    letters = {m: "abcdefghij"[i] for i, m in enumerate(outer)}
    p = "".join(letters[m] for m in part)
    q = "".join(letters[m] for m in rest)
    return f"{p},z{q}->z{''.join(letters[m] for m in outer)}"


def _proper_subsets(term: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [c for j in range(1, len(term)) for c in itertools.combinations(term, j)]


def make_naive(
    modalities: list[str], terms: list[tuple[str, ...]], rank: int, num_outputs: int
) -> Any:
    """A straightforward implementation of the same model (see the module docstring)."""
    import torch
    from torch import nn

    class NaiveFusion(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.modalities = modalities
            self.terms = terms
            used = [m for m in modalities if any(m in t for t in terms)]
            self.projections = nn.ModuleDict(
                {m: nn.Linear(ENCODER_DIM, rank, bias=False) for m in used}
            )
            dims = {m: ENCODER_DIM for m in modalities} | {
                "*".join(t): rank ** len(t) for t in terms
            }
            self.head = nn.ModuleDict(
                {name: nn.Linear(d, num_outputs, bias=False) for name, d in dims.items()}
            )
            self.bias = nn.Parameter(torch.zeros(num_outputs))

        def raw(self, term: tuple[str, ...], g: dict[str, Any]) -> Any:
            """T_S, recomputed on every call."""
            value = g[term[0]]
            for i, m in enumerate(term[1:], start=1):
                value = torch.einsum(
                    f"z{'abcdefghij'[:i]},z{'abcdefghij'[i]}->z{'abcdefghij'[: i + 1]}",
                    value,
                    g[m],
                )
            return value

        def wick(self, term: tuple[str, ...], g: dict[str, Any]) -> Any:
            """:T_S: = T_S − E[T_S] − Σ_{∅≠R⊊S} E[T_R] ⊗ :T_{S∖R}:, recursively, no sharing."""
            raw = self.raw(term, g)
            value = raw - raw.mean(dim=0)
            for part in _proper_subsets(term):
                rest = tuple(m for m in term if m not in part)
                moment = self.raw(part, g).mean(dim=0)
                value = value - torch.einsum(
                    _placement(term, part, rest), moment, self.wick(rest, g)
                )
            return value

        @staticmethod
        def vbn(u: Any) -> Any:
            flat = u.reshape(u.shape[0], -1)
            centred = flat - flat.mean(dim=0)
            return centred / torch.sqrt(centred.pow(2).sum(dim=1).mean() + 1e-5)

        def forward(self, embeddings: dict[str, Any]) -> Any:
            g = {}
            for m, projection in self.projections.items():
                h = projection(embeddings[m])
                g[m] = h - h.mean(dim=0)
            out = self.bias
            for m in self.modalities:
                out = out + self.head[m](self.vbn(embeddings[m]))
            for t in self.terms:
                out = out + self.head["*".join(t)](self.vbn(self.wick(t, g)))
            return out

        def regularizer(self) -> Any:
            norms = torch.stack([torch.linalg.vector_norm(b.weight) for b in self.head.values()])
            return norms.pow(4 / 3).sum().pow(1.5)  # Ω_2: q = 4/3

    return NaiveFusion()


def load_reference() -> Any:
    """``tests/fusion/reference_fusion.py``: the fusion head before the fast path."""
    import importlib.util

    path = ROOT / "tests" / "fusion" / "reference_fusion.py"
    spec = importlib.util.spec_from_file_location("_interfuse_reference_fusion", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(
    m: int, r: int, k: int, seed: int = 0, compiled: bool = False, device: str = "cpu"
) -> dict[str, Any]:
    """The implementations of one configuration, with shared inputs and weights, on ``device``
    (``benchmarks.device_speed`` times them on an accelerator)."""
    import copy

    import torch
    from torch import nn
    from torch.nn import functional as F

    from interfuse import MultimodalModel

    torch.manual_seed(seed)
    names = modality_names(m)
    model = MultimodalModel(
        {n: nn.Identity() for n in names},
        interactions=k if k > 1 else "none",
        rank=r,
        num_outputs=NUM_OUTPUTS,
        p=2.0,
        encoder_dims={n: ENCODER_DIM for n in names},
    ).train()
    reference = load_reference()
    before = copy.deepcopy(model)
    terms = list(model.interaction_terms)
    naive = make_naive(names, terms, r, NUM_OUTPUTS).train()
    with torch.no_grad():
        for n, projection in naive.projections.items():
            projection.weight.copy_(model.factors.projections[n].weight)
        for name, block in naive.head.items():
            block.weight.copy_(model.head.blocks[name].weight)
        naive.bias.copy_(model.head.bias)
    features = sum(b.in_features for b in model.head.blocks.values())
    assert features == total_features(m, r, k), (features, total_features(m, r, k))
    floor = nn.Linear(features, NUM_OUTPUTS)
    blocks_model = copy.deepcopy(model)  # its weight blocks, bias and Ω, nothing else
    for module in (model, before, naive, floor, blocks_model):
        module.to(device)
    block_weights = [b.weight for b in blocks_model.head.blocks.values()]
    embeddings = {n: torch.randn(BATCH, ENCODER_DIM).to(device).requires_grad_() for n in names}
    x = torch.randn(BATCH, features).to(device).requires_grad_()
    y = torch.randint(0, NUM_OUTPUTS, (BATCH,)).to(device)

    def clear(module: nn.Module) -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        for e in embeddings.values():
            e.grad = None

    def clear_all() -> None:
        for module in (floor, blocks_model, model, before, naive):
            clear(module)

    def step_floor() -> None:
        clear(floor)
        loss = F.cross_entropy(floor(x), y) + LAM * floor.weight.square().sum()
        loss.backward()

    def step_blocks_floor() -> None:
        clear(blocks_model)
        out = F.linear(x, torch.cat(block_weights, dim=1), blocks_model.head.bias)
        loss = F.cross_entropy(out, y) + LAM * blocks_model.regularizer()
        loss.backward()

    def step_ours() -> None:
        clear(model)
        out = model.fuse(embeddings)
        loss = F.cross_entropy(out.prediction, y) + LAM * model.regularizer()
        loss.backward()

    def step_before() -> None:
        clear(before)
        prediction, _ = reference.reference_fuse(before, embeddings)
        loss = F.cross_entropy(prediction, y) + LAM * reference.regularizer(before)
        loss.backward()

    def step_ours_forward() -> None:  # the public path: input validation + identity encoders
        clear(model)
        out = model(embeddings)
        loss = F.cross_entropy(out.prediction, y) + LAM * model.regularizer()
        loss.backward()

    def step_naive() -> None:
        clear(naive)
        loss = F.cross_entropy(naive(embeddings), y) + LAM * naive.regularizer()
        loss.backward()

    def agreement() -> float:
        with torch.no_grad():
            a = model.fuse(embeddings).prediction
            b = naive(embeddings)
        return float((a - b).abs().max() / (a.abs().max() + 1e-12))

    steps = {
        "floor": step_floor,
        "blocks_floor": step_blocks_floor,
        "before": step_before,
        "ours": step_ours,
        "naive": step_naive,
    }
    if compiled:
        fast_model = model
        compiled_model = copy.deepcopy(model)
        compiled_model.compile_fusion = True

        def step_compiled() -> None:
            clear(compiled_model)
            out = compiled_model.fuse(embeddings)
            loss = F.cross_entropy(out.prediction, y) + LAM * compiled_model.regularizer()
            loss.backward()

        # the bound for any compilation of this step: loss and Ω inside the compiled graph too
        # (the model's switch compiles the head only, as the loss is the trainer's)
        from interfuse.fusion.fast import apply_updates, fast_fuse

        whole_model = copy.deepcopy(model)

        def whole_loss(module: nn.Module, inputs: dict[str, Any], target: Any) -> Any:
            prediction, _, updates = fast_fuse(module, inputs, plain=True, defer_updates=True)
            loss = F.cross_entropy(prediction, target) + LAM * module.regularizer()
            return loss, updates

        compiled_loss = torch.compile(whole_loss)

        def step_compiled_whole() -> None:
            clear(whole_model)
            loss, updates = compiled_loss(whole_model, embeddings, y)
            apply_updates(updates, whole_model.fusion_plan().momentum)
            loss.backward()

        steps = {
            "before": step_before,
            "ours": step_ours,
            "compiled": step_compiled,
            "compiled_whole": step_compiled_whole,
        }
        del fast_model

    def saved_ratio() -> float:
        """Saved-for-backward bytes of ours / before (one step each, distinct storages)."""

        def saved(step: Callable[[], None]) -> int:
            seen: dict[int, int] = {}

            def pack(t: Any) -> Any:
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                step()
            return sum(seen.values())

        ours_bytes = saved(lambda: model.fuse(embeddings).prediction.sum() + model.regularizer())
        before_bytes = saved(
            lambda: (
                reference.reference_fuse(before, embeddings)[0].sum()
                + reference.regularizer(before)
            )
        )
        return ours_bytes / before_bytes

    return {
        "steps": steps,
        "before": before,
        "saved_ratio": saved_ratio,
        "ours_forward": step_ours_forward,
        "model": model,
        "features": features,
        "terms": len(model.terms),
        "agreement": agreement,
        "clear": clear_all,
        "embeddings": embeddings,
        "y": y,
    }


# --------------------------------------------------------------------------- timing


def _seconds(
    fn: Callable[[], None], synchronize: Callable[[], None] | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call, between two ``synchronize()``
    calls when given (an accelerator's queued work is then counted)."""
    if synchronize is not None:
        synchronize()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if synchronize is not None:
        synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved_times(
    steps: dict[str, Callable[[], None]],
    budget_s: float,
    min_reps: int,
    max_reps: int,
    synchronize: Callable[[], None] | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Warm up, then time ``reps`` rounds; each round runs every step once, in rotating order.

    Returns ``{"cpu": {name: [s, ...]}, "wall": {...}}``. With one torch thread the process CPU
    time is the cost of the step without the time spent waiting for a core that other processes
    hold (this machine is shared), so it is the headline figure; wall time is kept beside it
    (the figure on an accelerator, with ``synchronize``, e.g. ``torch.cuda.synchronize``).
    """
    names = list(steps)
    # warm-up (allocator, autograd caches; on a GPU also its libraries' handles)
    first = {n: _seconds(steps[n], synchronize)[0] for n in names}
    second = (
        {n: _seconds(steps[n], synchronize)[0] for n in names}
        if max(first.values()) < 1.0
        else first
    )
    per_round = sum(second.values())
    reps = int(min(max_reps, max(min_reps, budget_s * len(names) / max(per_round, 1e-9))))
    times: dict[str, dict[str, list[float]]] = {"cpu": {n: [] for n in names}}
    times["wall"] = {n: [] for n in names}
    gc.collect()
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for n in order:
            wall, cpu = _seconds(steps[n], synchronize)
            times["wall"][n].append(wall)
            times["cpu"][n].append(cpu)
    return times


def ratio_median(a: list[float], b: list[float]) -> float:
    return median([x / y for x, y in zip(a, b) if y > 0])


# --------------------------------------------------------------------------- memory probe


def _status_kib(field: str) -> int:
    text = open("/proc/self/status").read()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1))


def probe_memory(m: int, r: int, k: int, threads: int) -> dict[str, Any]:
    """In a fresh process (see the module docstring): peak extra RSS of one step per impl."""
    import torch

    torch.set_num_threads(threads)
    built = build(m, r, k)
    out: dict[str, Any] = {}
    for name, step in built["steps"].items():
        step()  # warm-up; everything it allocates is released again (mmap threshold)
        built["clear"]()  # gradients are part of what a step allocates
        gc.collect()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        before = _status_kib("VmRSS")
        step()
        out[name] = max(0, _status_kib("VmHWM") - before) / 1024  # MiB
    return out


def probe_faults(m: int, r: int, k: int, threads: int, steps: int = 3) -> dict[str, Any]:
    """In a fresh process with the default allocator: minor page faults per step (the median of
    ``steps`` steps after two warm-up steps) of before and ours. Large tensors that the allocator
    maps afresh for every step fault in every page they touch (4 KiB each)."""
    import resource

    import torch

    torch.set_num_threads(threads)
    built = build(m, r, k)
    out: dict[str, Any] = {}
    for name in ("before", "ours"):
        step = built["steps"][name]
        counts = []
        for index in range(2 + steps):
            built["clear"]()
            start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            step()
            if index >= 2:
                counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
        out[name] = median(counts)
    return out


def _config_cells(entry: dict[str, Any]) -> list[Any]:
    """``M, r, K, D`` of a measured configuration, the first cells of its table row."""
    config = entry["config"]
    return [config["M"], config["r"], config["K"], config["features"]]


def _ratio(faults: dict[str, Any]) -> float:
    return faults["ours"] / faults["before"] if faults["before"] else math.nan


def memory_in_subprocess(
    m: int, r: int, k: int, threads: int, faults: bool = False
) -> dict[str, Any]:
    """:func:`probe_memory` (or, with ``faults``, :func:`probe_faults` under the default
    allocator) in a fresh process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if not faults:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    command = [sys.executable, "-m", "benchmarks.fusion_speed", "--probe", f"{m},{r},{k}"]
    command += ["--threads", str(threads)] + (["--faults"] if faults else [])
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- profiling


def profile_ours(m: int, r: int, k: int, steps: int = 3) -> dict[str, Any]:
    """Where one step of ours spends its time: operator counts and the top operators."""
    from torch.profiler import ProfilerActivity, profile, schedule

    built = build(m, r, k)
    for _ in range(2):
        for step in built["steps"].values():
            step()

    def count_ops(fn: Callable[[], None]) -> tuple[int, list[dict[str, Any]]]:
        # the first profiled steps absorb the profiler's start-up cost: record after a warm-up
        with profile(
            activities=[ProfilerActivity.CPU],
            schedule=schedule(wait=1, warmup=1, active=steps, repeat=1),
        ) as prof:
            for _ in range(steps + 2):
                fn()
                prof.step()
        events = prof.key_averages()
        top_level = [e for e in events if e.key.startswith("aten::")]
        total = sum(e.self_cpu_time_total for e in events) or 1.0
        top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:8]
        table = [
            {
                "op": "Python/framework time between operators"
                if e.key.startswith("ProfilerStep")
                else e.key,
                "self_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                "share": e.self_cpu_time_total / total,
                "calls_per_step": e.count / steps,
            }
            for e in top
        ]
        return round(sum(e.count for e in top_level) / steps), table

    ours_ops, ours_top = count_ops(built["steps"]["ours"])
    before_ops, _ = count_ops(built["steps"]["before"])
    floor_ops, _ = count_ops(built["steps"]["floor"])
    return {
        "config": {"M": m, "r": r, "K": k, "features": built["features"]},
        "aten_ops_per_step": {"ours": ours_ops, "before": before_ops, "floor": floor_ops},
        "top_ops_ours": ours_top,
    }


def compile_timing(m: int, r: int, k: int, settings: dict[str, Any]) -> dict[str, Any]:
    """``compile=True`` vs ours (eager) vs before: the first step's cost, then interleaved."""
    from interfuse.model import compiler_problem

    problem = compiler_problem()
    if problem is not None:
        return {"config": {"M": m, "r": r, "K": k}, "skipped": problem}
    import warnings

    built = build(m, r, k, compiled=True)
    steps = built["steps"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        wall, cpu = _seconds(steps["compiled"])
        whole_wall, whole_cpu = _seconds(steps["compiled_whole"])
    fallback = [str(w.message) for w in caught if "compile=True" in str(w.message)]
    times = interleaved_times(steps, settings["budget_s"], settings["min_reps"], 30)["cpu"]
    return {
        "config": {"M": m, "r": r, "K": k, "features": built["features"]},
        "first_step_wall_s": wall,
        "first_step_cpu_s": cpu,
        "fallback": fallback[0] if fallback else None,
        "median_ms": {n: median(t) * 1e3 for n, t in times.items()},
        "compiled_over_before": ratio_median(times["compiled"], times["before"]),
        "ours_over_before": ratio_median(times["ours"], times["before"]),
        "compiled_over_ours": ratio_median(times["compiled"], times["ours"]),
        "whole_first_step_wall_s": whole_wall,
        "whole_first_step_cpu_s": whole_cpu,
        "compiled_whole_over_before": ratio_median(times["compiled_whole"], times["before"]),
        "compiled_whole_over_ours": ratio_median(times["compiled_whole"], times["ours"]),
        "reps": len(times["ours"]),
    }


def masked_timing(m: int, r: int, k: int, settings: dict[str, Any]) -> dict[str, Any]:
    """Ours vs before with presence masks (each modality missing for ~20 % of the samples)."""
    import torch
    from torch.nn import functional as F

    built = build(m, r, k)
    model, embeddings, y = built["model"], built["embeddings"], built["y"]
    reference = load_reference()
    before = built["before"]
    gen = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(BATCH, generator=gen) >= 0.2 for n in model.modalities}
    inputs = {
        n: torch.where(masks[n][:, None], e.detach(), 0.0).requires_grad_()
        for n, e in embeddings.items()
    }

    def clear(module: torch.nn.Module) -> None:  # this step's own gradients only, as in build
        module.zero_grad(set_to_none=True)
        for x in inputs.values():
            x.grad = None

    def step_ours() -> None:
        clear(model)
        out = model.fuse(inputs, masks)
        (F.cross_entropy(out.prediction, y) + LAM * model.regularizer()).backward()

    def step_before() -> None:
        clear(before)
        prediction, _ = reference.reference_fuse(before, inputs, masks)
        (F.cross_entropy(prediction, y) + LAM * reference.regularizer(before)).backward()

    steps = {"before": step_before, "ours": step_ours}
    times = interleaved_times(steps, settings["budget_s"], settings["min_reps"], 30)["cpu"]
    return {
        "config": {"M": m, "r": r, "K": k, "features": built["features"]},
        "median_ms": {n: median(t) * 1e3 for n, t in times.items()},
        "ours_over_before": ratio_median(times["ours"], times["before"]),
        "reps": len(times["ours"]),
    }


def api_overhead(m: int, r: int, k: int, settings: dict[str, Any]) -> dict[str, Any]:
    """``model(inputs)`` (validation + identity encoders) vs ``model.fuse(embeddings)``."""
    built = build(m, r, k)
    model = built["model"]
    steps = {"fuse": built["steps"]["ours"], "forward": built["ours_forward"]}

    def unchecked() -> None:
        model.check_inputs = False
        try:
            built["ours_forward"]()
        finally:
            model.check_inputs = True

    steps["forward_unchecked"] = unchecked
    times = interleaved_times(steps, settings["budget_s"] * 2, settings["min_reps"], 61)["cpu"]
    return {
        "config": {"M": m, "r": r, "K": k},
        "median_ms": {n: median(t) * 1e3 for n, t in times.items()},
        "forward_over_fuse": ratio_median(times["forward"], times["fuse"]),
        "reps": len(times["fuse"]),
    }


# --------------------------------------------------------------------------- suite


def run(scale: str, out_dir: str, threads: int = 1) -> dict[str, Any]:
    threads = set_threads(threads)
    settings = SCALE_SETTINGS[scale]
    env = environment(threads)
    started = time.perf_counter()
    configs, skipped = grid(settings)
    passes = settings.get("passes", 1)
    collected: dict[tuple[int, int, int], dict[str, Any]] = {}
    saved_ratios: dict[tuple[int, int, int], float] = {}
    for pass_index in range(passes):
        # several passes over the grid, minutes apart: a burst of load from other processes
        # on this shared machine then spoils only part of a configuration's repetitions
        for m, r, k in configs:
            built = build(m, r, k)
            if (m, r, k) not in saved_ratios and k >= 2:
                saved_ratios[(m, r, k)] = built["saved_ratio"]()
            entry = collected.setdefault(
                (m, r, k),
                {
                    "agreement": built["agreement"](),
                    "cpu": {n: [] for n in IMPLEMENTATIONS},
                    "wall": {n: [] for n in IMPLEMENTATIONS},
                    "loads": [],
                },
            )
            measured = interleaved_times(
                built["steps"],
                settings["budget_s"] / passes,
                max(2, settings["min_reps"] // passes),
                max(2, settings["max_reps"] // passes),
            )
            for kind in ("cpu", "wall"):
                for n in IMPLEMENTATIONS:
                    entry[kind][n] += measured[kind][n]
            entry["loads"].append(load_average())
            del built
            gc.collect()
            print(
                f"[speed] pass {pass_index + 1}/{passes} M={m} r={r} K={k}: ours "
                f"{median(measured['cpu']['ours']) * 1e3:.2f} ms (load {load_average()[0]})",
                file=sys.stderr,
                flush=True,
            )
    rows = []
    for index, (m, r, k) in enumerate(configs):
        measured = collected[(m, r, k)]
        agreement = measured["agreement"]
        times = measured["cpu"]
        row: dict[str, Any] = {
            "M": m,
            "r": r,
            "K": k,
            "features": total_features(m, r, k),
            "reps": len(times["ours"]),
            "median_ms": {n: median(t) * 1e3 for n, t in times.items()},
            "median_wall_ms": {n: median(t) * 1e3 for n, t in measured["wall"].items()},
            "ours_over_floor": ratio_median(times["ours"], times["floor"]),
            "ours_over_blocks_floor": ratio_median(times["ours"], times["blocks_floor"]),
            "blocks_floor_over_before": ratio_median(times["blocks_floor"], times["before"]),
            "ours_over_before": ratio_median(times["ours"], times["before"]),
            "before_over_floor": ratio_median(times["before"], times["floor"]),
            "naive_over_ours": ratio_median(times["naive"], times["ours"]),
            "ours_over_floor_wall": ratio_median(
                measured["wall"]["ours"], measured["wall"]["floor"]
            ),
            "naive_relative_difference": agreement,
            "load": measured["loads"][-1],
            "loads": measured["loads"],
        }
        measure = settings["memory"] == "all" or (
            settings["memory"] == "some" and k in (1, max(settings["orders"]))
        )
        if settings["memory"] == "one":
            measure = index == len(configs) - 1
        if measure:
            row["peak_extra_mib"] = memory_in_subprocess(m, r, k, threads)
        if k >= 2:
            row["saved_ratio"] = saved_ratios[(m, r, k)]
        rows.append(row)
        med = row["median_ms"]
        print(
            f"[speed] M={m} r={r} K={k} D={row['features']}: floor {med['floor']:.2f} ms, "
            f"before {med['before']:.2f} ms, ours {med['ours']:.2f} ms "
            f"(x{row['ours_over_before']:.2f} before, x{row['ours_over_floor']:.1f} floor), naive "
            f"{med['naive']:.2f} ms (x{row['naive_over_ours']:.1f} ours), "
            f"mem {row.get('peak_extra_mib', '-')}, load {row['load'][0]}",
            file=sys.stderr,
            flush=True,
        )
    compiled = [compile_timing(*c, settings) for c in settings.get("compile", [])]
    masked = [masked_timing(*c, settings) for c in settings.get("masked", [])]
    faults = [
        {"config": {"M": c[0], "r": c[1], "K": c[2], "features": total_features(*c)}}
        | memory_in_subprocess(*c, threads, faults=True)
        for c in settings.get("faults", [])
    ]
    profiles = [profile_ours(*c) for c in settings["profile"]]
    overhead = [api_overhead(*c, settings) for c in settings["api_overhead"]]
    payload = {
        "suite": SUITE,
        "scale": scale,
        "settings": {
            **{
                k: v
                for k, v in settings.items()
                if k not in ("profile", "api_overhead", "compile", "masked", "faults")
            },
            "batch": BATCH,
            "encoder_dim": ENCODER_DIM,
            "num_outputs": NUM_OUTPUTS,
            "feature_budget": FEATURE_BUDGET,
            "p": 2.0,
            "lam": LAM,
        },
        "environment": env,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "skipped": skipped,
        "profiles": profiles,
        "api_overhead": overhead,
        "compiled": compiled,
        "masked": masked,
        "faults": faults,
    }
    return publish(out_dir, SUITE, scale, payload, render)


def render(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    has_memory = any("peak_extra_mib" in r for r in payload["rows"])

    def mem(row: dict, name: str) -> str:
        value = row.get("peak_extra_mib", {})
        if "error" in value:
            return "error"
        return fmt(value.get(name), 1) if name in value else "—"

    header = [
        "M",
        "r",
        "K",
        "features D",
        "floor ms",
        "before ms",
        "ours ms",
        "naive ms",
        "ours / before",
        "ours / floor",
        "blocks floor ms",
        "blocks floor / before",
        "ours / blocks floor",
        "before / floor",
        "naive / ours",
        "saved bytes ours / before",
    ]
    if has_memory:
        header += ["floor MiB", "before MiB", "ours MiB", "naive MiB"]
    rows = []
    for row in payload["rows"]:
        med = row["median_ms"]
        cells = [
            row["M"],
            row["r"] if row["K"] > 1 else "—",
            row["K"],
            row["features"],
            fmt(med["floor"], 2),
            fmt(med["before"], 2),
            fmt(med["ours"], 2),
            fmt(med["naive"], 2),
            fmt(row["ours_over_before"], 2),
            fmt(row["ours_over_floor"], 1),
            fmt(med["blocks_floor"], 2),
            fmt(row["blocks_floor_over_before"], 2),
            fmt(row["ours_over_blocks_floor"], 1),
            fmt(row["before_over_floor"], 1),
            fmt(row["naive_over_ours"], 1),
            fmt(row["saved_ratio"], 2) if "saved_ratio" in row else "—",
        ]
        if has_memory:
            cells += [mem(row, "floor"), mem(row, "before"), mem(row, "ours"), mem(row, "naive")]
        rows.append(cells)
    parts = [
        f"### Fusion head, one training step (forward + backward), batch {s['batch']}, "
        f"d_m = {s['encoder_dim']}, torch threads {payload['environment']['torch_threads']}: "
        "median CPU ms, median per-repetition ratios, peak extra MiB\n",
        markdown_table(header, rows),
    ]
    if payload["skipped"]:
        listed = ", ".join(
            f"M={x['M']} r={x['r']} K={x['K']} (D={x['features']})" for x in payload["skipped"]
        )
        parts.append(f"\n\nSkipped (D > {s['feature_budget']} features): {listed}")
    worst = max((r["naive_relative_difference"] for r in payload["rows"]), default=math.nan)
    parts.append(
        f"\n\nNaive and ours agree: max relative difference of the predictions {worst:.1e}."
    )
    compiled = [c for c in payload.get("compiled", []) if "skipped" not in c]
    skipped = [c for c in payload.get("compiled", []) if "skipped" in c]
    if compiled:
        parts.append(
            "\n\n#### `MultimodalModel(..., compile=True)`: compiled training step of the head\n\n"
        )
        parts.append(
            markdown_table(
                [
                    "M",
                    "r",
                    "K",
                    "first step s (wall / CPU)",
                    "before ms",
                    "ours ms",
                    "compiled ms",
                    "compiled / before",
                    "ours / before",
                    "compiled / ours",
                    "whole step: first s (wall / CPU)",
                    "whole step ms",
                    "whole step / before",
                    "whole step / ours",
                ],
                [
                    [
                        c["config"]["M"],
                        c["config"]["r"],
                        c["config"]["K"],
                        f"{c['first_step_wall_s']:.1f} / {c['first_step_cpu_s']:.1f}",
                        fmt(c["median_ms"]["before"], 2),
                        fmt(c["median_ms"]["ours"], 2),
                        fmt(c["median_ms"]["compiled"], 2),
                        fmt(c["compiled_over_before"], 2),
                        fmt(c["ours_over_before"], 2),
                        fmt(c["compiled_over_ours"], 2),
                        f"{c['whole_first_step_wall_s']:.1f} / {c['whole_first_step_cpu_s']:.1f}",
                        fmt(c["median_ms"]["compiled_whole"], 2),
                        fmt(c["compiled_whole_over_before"], 2),
                        fmt(c["compiled_whole_over_ours"], 2),
                    ]
                    for c in compiled
                ],
            )
        )
        for c in compiled:
            if c.get("fallback"):
                parts.append(f"\n\nFell back to eager: {c['fallback']}")
    for c in skipped:
        parts.append(f"\n\ncompile=True not measured: {c['skipped']}")
    if payload.get("masked"):
        parts.append(
            "\n\n#### With presence masks (each modality missing for ~20 % of the samples)\n\n"
        )
        parts.append(
            markdown_table(
                ["M", "r", "K", "features D", "before ms", "ours ms", "ours / before"],
                [
                    [
                        *_config_cells(c),
                        fmt(c["median_ms"]["before"], 2),
                        fmt(c["median_ms"]["ours"], 2),
                        fmt(c["ours_over_before"], 2),
                    ]
                    for c in payload["masked"]
                ],
            )
        )
    if payload.get("faults"):
        parts.append(
            "\n\n#### Minor page faults per training step (default allocator, fresh process, "
            "median of 3 steps after 2 warm-up steps)\n\n"
        )
        parts.append(
            markdown_table(
                ["M", "r", "K", "features D", "before faults", "ours faults", "ours / before"],
                [
                    [
                        *_config_cells(c),
                        *(
                            [fmt(c["before"], 0), fmt(c["ours"], 0), fmt(_ratio(c), 2)]
                            if "error" not in c
                            else [c["error"], "—", "—"]
                        ),
                    ]
                    for c in payload["faults"]
                ],
            )
        )
    for p in payload["profiles"]:
        c = p["config"]
        ops = p["aten_ops_per_step"]
        parts.append(
            f"\n\n#### Profile of ours, M={c['M']} r={c['r']} K={c['K']} (D={c['features']}): "
            f"{ops['ours']} aten ops per step (before: {ops['before']}, floor: {ops['floor']})\n\n"
        )
        parts.append("Top operators by self CPU time under torch.profiler (shares only: the ")
        parts.append("profiler inflates absolute times of large configurations):\n\n")
        parts.append(
            markdown_table(
                ["operator", "share of self CPU time (profiled)", "calls / step"],
                [
                    [
                        o["op"],
                        fmt(o["share"], 2),
                        fmt(o["calls_per_step"], 0),
                    ]
                    for o in p["top_ops_ours"]
                ],
            )
        )
    for o in payload["api_overhead"]:
        c = o["config"]
        med = o["median_ms"]
        parts.append(
            f"\n\nPublic path M={c['M']} r={c['r']} K={c['K']}: model(inputs) {med['forward']:.2f} "
            f"ms vs model.fuse {med['fuse']:.2f} ms (x{o['forward_over_fuse']:.2f}); with "
            f"check_inputs=False {med['forward_unchecked']:.2f} ms."
        )
    return "".join(parts) + "\n"


def _main() -> None:
    parser = argparse.ArgumentParser(description="memory probe (internal)")
    parser.add_argument("--probe", required=True, help="M,r,K")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--faults", action="store_true", help="page faults instead of memory")
    args = parser.parse_args()
    m, r, k = (int(v) for v in args.probe.split(","))
    probe = probe_faults if args.faults else probe_memory
    print(json.dumps(probe(m, r, k, args.threads)))


if __name__ == "__main__":
    _main()
