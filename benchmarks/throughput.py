"""End-to-end training throughput on the demo's motif configuration, and where the time goes.

Data: ``make_motif_data([0.9, 0.6, 0.3, 0.0], n=6000)`` split 70/15/15 (4200 training samples,
32 full batches of 128 per epoch), default encoders (``SequenceCNN`` per modality), ``TrainConfig``
defaults (pairs, rank 8, batch 128, AdamW). Samples/s count training samples per second of
training, data loading included (``batch_loader``, the same loader ``fit`` uses). Variants:

* ``fit``: ``interfuse.train.fit`` (Lightning; per epoch also validation, relevance, two
  checkpoints and the history file): samples / ``train_seconds``; ``fit, marginal epoch``: the
  same without fit's fixed cost, from the difference to a 1-epoch ``fit``;
* ``bare``: a plain loop over the same model, loader, optimiser (``FusionModule``'s AdamW groups)
  and loss (task loss + λ·Ω_p);
* ``bare+val+ckpt``: the bare loop plus what ``fit``'s callback does per epoch (validation,
  relevance, both checkpoints): ``fit`` minus this is Lightning's own overhead;
* ``bare, no input checks``: ``MultimodalModel(check_inputs=False)``.

A separately instrumented bare epoch splits a step into data, encoders (forward), fusion
(forward + loss), fusion backward, encoder backward and optimiser (hooks on the encoder outputs mark
when the backward pass leaves the fusion head: autograd's ready queue runs nodes created later
first, so every fusion node runs before the first encoder node, whose hook fires first).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._common import (
    environment,
    fmt,
    load_average,
    markdown_table,
    median,
    publish,
    quiet_lightning,
    set_threads,
    train_defaults,
)

SUITE = "throughput"
TARGET = 8000  # samples/s of `fit` with 1 thread on a quiet machine (issue 13)

SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"n": 6000, "epochs": 3, "repeats": 3, "threads": [2, 1]},
    "quick": {"n": 6000, "epochs": 2, "repeats": 1, "threads": [2, 1]},
    "tiny": {"n": 400, "epochs": 1, "repeats": 1, "threads": [1]},
}


def make_task(n: int) -> Any:
    from interfuse.data import make_motif_data, synthetic_task

    return synthetic_task(make_motif_data([0.9, 0.6, 0.3, 0.0], n=n, seed=0), seed=0)


def build(task: Any, config: Any, check_inputs: bool = True) -> tuple[Any, Any, Any]:
    """Model, optimiser and the training module (for its modality-dropout draws) exactly as
    ``fit`` builds them."""
    from interfuse.models import build_model, model_spec
    from interfuse.train.module import FusionModule

    model = build_model(
        model_spec(config.model, task.encoders, config, task.num_outputs), seed=config.seed
    )
    model.check_inputs = check_inputs
    module = FusionModule(
        model,
        task.task,
        config.lam,
        config.lr,
        config.weight_decay,
        modality_dropout=config.modality_dropout_for(len(task.modalities)),
        seed=config.seed,
    )
    return model, module.configure_optimizers(), module


def presence(module: Any, batch: int, step: int) -> dict[str, Any] | None:
    """The presence masks ``fit`` draws for this step (modality dropout), or ``None``."""
    return module.dropout_masks(batch, step) if module.modality_dropout > 0 else None


def train_samples(task: Any, config: Any, epochs: int) -> int:
    return (len(task.train) // config.batch_size) * config.batch_size * epochs


def bare_loop(
    task: Any, config: Any, epochs: int, per_epoch: bool = False, check_inputs: bool = True
) -> tuple[float, float]:
    """(wall, CPU) seconds of ``epochs`` epochs of a plain loop (``per_epoch``: + fit's per-epoch
    work)."""
    from interfuse.checkpoint import save_checkpoint
    from interfuse.data.batching import batch_loader
    from interfuse.inference import evaluate
    from interfuse.metrics import task_loss

    model, optimizer, module = build(task, config, check_inputs)
    model.train()
    loader = batch_loader(task.train, config.batch_size, shuffle=True, seed=config.seed)
    with tempfile.TemporaryDirectory(prefix="interfuse-bench-") as tmp:
        started, cpu = time.perf_counter(), time.process_time()
        for _ in range(epochs):
            for step, (inputs, targets, _) in enumerate(loader):
                masks = presence(module, len(targets), step)
                prediction = model(inputs, masks).prediction
                loss = task_loss(task.task, prediction, targets) + config.lam * (
                    model.regularizer()
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if per_epoch:
                evaluate(model, task.val, task.task)
                model.relevance()
                header = {"train": config.to_dict()}
                save_checkpoint(Path(tmp) / "best.safetensors", model.state_dict(), header)
                save_checkpoint(
                    Path(tmp) / "last.safetensors",
                    model.state_dict(),
                    header,
                    optimizer.state_dict(),
                )
        return time.perf_counter() - started, time.process_time() - cpu


def fit_seconds(task: Any, config: Any) -> tuple[float, float, float]:
    """(training seconds as ``fit`` records them, wall and CPU seconds of the whole call)."""
    from .training import train_once

    started, cpu = time.perf_counter(), time.process_time()
    results = train_once(task, config)
    return (
        float(results.train_seconds),
        time.perf_counter() - started,
        time.process_time() - cpu,
    )


def data_only(task: Any, config: Any, epochs: int) -> tuple[float, float]:
    from interfuse.data.batching import batch_loader

    loader = batch_loader(task.train, config.batch_size, shuffle=True, seed=config.seed)
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for _batch in loader:
            pass
    return time.perf_counter() - started, time.process_time() - cpu


def breakdown(task: Any, config: Any) -> dict[str, float]:
    """Per-step medians (ms) of the stages of one instrumented bare epoch (after a warm-up one)."""
    from interfuse.data.batching import batch_loader
    from interfuse.metrics import task_loss

    model, optimizer, module = build(task, config)
    model.train()
    loader = batch_loader(task.train, config.batch_size, shuffle=True, seed=config.seed)
    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "data",
            "encoders forward (incl. input checks)",
            "fusion forward + loss",
            "fusion backward",
            "encoders backward",
            "optimiser",
        )
    }
    for epoch in range(2):
        iterator = iter(loader)
        step = 0
        while True:
            t0 = time.perf_counter()
            try:
                inputs, targets, _ = next(iterator)
            except StopIteration:
                break
            masks = presence(module, len(targets), step)
            step += 1
            t1 = time.perf_counter()
            present = model.presence(inputs, masks)
            embeddings = model.encode(inputs, present)
            t2 = time.perf_counter()
            left_fusion: list[float] = []
            for h in embeddings.values():
                h.register_hook(lambda grad, marks=left_fusion: marks.append(time.perf_counter()))
            prediction = model.fuse(embeddings, present).prediction
            loss = task_loss(task.task, prediction, targets) + config.lam * model.regularizer()
            t3 = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t4 = time.perf_counter()
            optimizer.step()
            t5 = time.perf_counter()
            if epoch == 0:
                continue
            # the first hook fires when the engine pops the first encoder node: all fusion nodes
            # (created later, so higher priority) are done by then; later hooks fire only after
            # whole encoders have been back-propagated
            fusion_done = min(left_fusion) if left_fusion else t3
            for key, seconds in zip(
                stages,
                [t1 - t0, t2 - t1, t3 - t2, fusion_done - t3, t4 - fusion_done, t5 - t4],
            ):
                stages[key].append(seconds)
    return {k: median(v) * 1e3 for k, v in stages.items()}


def measure(task: Any, settings: dict[str, Any], threads: int) -> dict[str, Any]:
    from interfuse.train import TrainConfig

    set_threads(threads)
    epochs = settings["epochs"]
    # no restarts: a run cut at 1 or 3 epochs may not be learnt yet, and a restart would
    # train twice what is counted (speed, not model selection, is measured here)
    config = TrainConfig(epochs=epochs, restarts=0)
    samples = train_samples(task, config, epochs)
    variants = ("fit", "bare", "bare+val+ckpt", "bare, no input checks", "data only")
    one_epoch = TrainConfig(epochs=1, restarts=0)
    fit_one: list[float] = []
    times: dict[str, list[float]] = {k: [] for k in variants}
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    fit_wall: list[float] = []
    loads = []
    for _ in range(settings["repeats"]):  # interleaved, so load changes hit every variant
        if epochs > 1:  # fit's fixed cost (trainer setup, first-epoch warm-up) is left out
            fit_one.append(fit_seconds(task, one_epoch)[0])
        train_s, wall, fit_cpu = fit_seconds(task, config)
        times["fit"].append(train_s)
        fit_wall.append(wall)
        # CPU of the whole call (incl. setup and final evaluation), scaled to the training part
        cpu["fit"].append(fit_cpu * train_s / wall)
        for name, measured in (
            ("bare", bare_loop(task, config, epochs)),
            ("bare+val+ckpt", bare_loop(task, config, epochs, per_epoch=True)),
            ("bare, no input checks", bare_loop(task, config, epochs, check_inputs=False)),
            ("data only", data_only(task, config, epochs)),
        ):
            times[name].append(measured[0])
            cpu[name].append(measured[1])
        loads.append(load_average())
    seconds = {k: median(v) for k, v in times.items()}
    cpu_seconds = {k: median(v) for k, v in cpu.items()}
    rate = {k: samples / v for k, v in seconds.items()}
    if fit_one:
        per_epoch = train_samples(task, config, 1)
        rate["fit, marginal epoch"] = (
            per_epoch * (epochs - 1) / max(seconds["fit"] - median(fit_one), 1e-9)
        )
    stages = breakdown(task, config)
    result = {
        "threads": threads,
        "samples_per_run": samples,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "samples_per_s": rate,
        "samples_per_cpu_s": {k: samples / v for k, v in cpu_seconds.items() if v > 0},
        "cpu_utilisation": {k: cpu_seconds[k] / seconds[k] for k in variants},
        "fit_wall_seconds": median(fit_wall),
        "fit_one_epoch_seconds": median(fit_one) if fit_one else None,
        # Lightning's cost per epoch (fixed setup excluded when measurable), and including setup
        "lightning_overhead": rate["bare+val+ckpt"] / rate.get("fit, marginal epoch", rate["fit"])
        - 1,
        "lightning_overhead_incl_setup": seconds["fit"] / seconds["bare+val+ckpt"] - 1,
        "per_epoch_work_overhead": seconds["bare+val+ckpt"] / seconds["bare"] - 1,
        "step_breakdown_ms": stages,
        "loads": loads,
    }
    print(
        f"[throughput] threads {threads}: "
        + ", ".join(f"{k} {v:.0f}/s" for k, v in rate.items())
        + f" (load {load_average()[0]})",
        file=sys.stderr,
        flush=True,
    )
    return result


def run(scale: str, out_dir: str, threads: int = 2) -> dict[str, Any]:
    quiet_lightning()
    settings = SCALE_SETTINGS[scale]
    thread_list = sorted({threads, *settings["threads"]}, reverse=True)
    if scale == "tiny":
        thread_list = [min(thread_list)]
    env = environment(threads)
    env["torch_threads"] = thread_list
    started = time.perf_counter()
    task = make_task(settings["n"])
    results = [measure(task, settings, t) for t in thread_list]
    payload = {
        "suite": SUITE,
        "scale": scale,
        "settings": {
            **settings,
            "threads": thread_list,
            "data": "make_motif_data([0.9, 0.6, 0.3, 0.0], n), split 70/15/15, seed 0",
            "train_config": train_defaults("as given"),
            "target_samples_per_s": TARGET,
        },
        "environment": env,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "results": results,
    }
    return publish(out_dir, SUITE, scale, payload, render)


def render(payload: dict[str, Any]) -> str:
    s = payload["settings"]
    results = payload["results"]
    variants = list(results[0]["samples_per_s"])
    header = ["variant"] + [
        f"{r['threads']} thread(s): samples/s (per CPU-s, CPU/wall)" for r in results
    ]

    def cell(r: dict, v: str) -> str:
        if v not in r["cpu_utilisation"]:
            return f"{r['samples_per_s'][v]:.0f}"
        return (
            f"{r['samples_per_s'][v]:.0f} ({r['samples_per_cpu_s'].get(v, math.nan):.0f}, "
            f"{r['cpu_utilisation'][v]:.2f})"
        )

    rows = [[v] + [cell(r, v) for r in results] for v in variants]
    rows.append(
        ["Lightning overhead per epoch (fit marginal vs bare+val+ckpt)"]
        + [f"{100 * r['lightning_overhead']:+.0f}%" for r in results]
    )
    rows.append(
        ["Lightning overhead incl. trainer setup (fit vs bare+val+ckpt)"]
        + [f"{100 * r['lightning_overhead_incl_setup']:+.0f}%" for r in results]
    )
    rows.append(
        ["per-epoch validation + checkpoints (vs bare)"]
        + [f"{100 * r['per_epoch_work_overhead']:+.0f}%" for r in results]
    )
    stage_names = list(results[0]["step_breakdown_ms"])
    total = [sum(r["step_breakdown_ms"].values()) for r in results]
    stage_rows = [
        [name]
        + [
            f"{r['step_breakdown_ms'][name]:.2f} ({100 * r['step_breakdown_ms'][name] / t:.0f}%)"
            for r, t in zip(results, total)
        ]
        for name in stage_names
    ]
    stage_rows.append(["total"] + [fmt(t, 2) for t in total])
    return (
        f"### Training throughput, demo motif configuration (n = {s['n']}, "
        f"{s['epochs']} epoch(s) per measurement, median of {s['repeats']}; target ≥ "
        f"{s['target_samples_per_s']} samples/s)\n"
        + markdown_table(header, rows)
        + "\n\n#### One training step of 128 samples (bare loop, medians, ms)\n"
        + markdown_table(["stage"] + [f"{r['threads']} thread(s)" for r in results], stage_rows)
        + "\n"
    )
