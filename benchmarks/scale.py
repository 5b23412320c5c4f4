"""Scale suite: a dataset folder larger than what the model needs in memory, trained lazily on
1 and 2 processes (Lightning DDP on CPU with gloo), with the peak resident memory of every process.

Steps (each timed):

1. **Write**: a synthetic 4-modality dataset (``n`` training samples of 64 float32 features per
   modality, 10,000 validation and test samples) is generated in chunks of 100,000 and written
   with :class:`interfuse.data.lazy.LazyWriter`, which hashes every file and accumulates the
   standardisation statistics in the same pass ("convert" cost). Generation time is measured
   separately and not counted.
2. **Statistics pass**: the per-feature moments recomputed from the files on disk in one streaming
   pass of memory-mapped chunks (what a folder written by another tool would cost).
3. **Train**: ``python -m benchmarks.scale --worker`` processes train ``intense`` (pairs, rank 8)
   for a fixed number of steps with batches gathered from the memory maps; 1 process, then 2
   (``--devices 2 --strategy ddp``, batch per process fixed, so 2 processes see twice the
   samples per step). samples/s counts all processes' samples over the timed steps (the first
   steps are warm-up).

Peak RSS: the sum over the driver and all its descendants of ``VmRSS`` (``/proc``), sampled every
50 ms, and rank 0's own peak (``VmHWM``; ``ru_maxrss`` would include the RSS the driver had when
it forked). The folder lives in a
temporary directory under /tmp and is deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ._common import environment, markdown_table, publish, quiet_lightning, set_threads

SUITE = "scale"
MODALITIES = ("m0", "m1", "m2", "m3")
FEATURES = 64
CHUNK = 100_000
RSS_LIMIT_GIB = 2.0

SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {"n": 2_000_000, "holdout": 10_000, "steps": 120, "warmup": 20, "batch": 512},
    "quick": {"n": 200_000, "holdout": 5_000, "steps": 40, "warmup": 10, "batch": 512},
    # the test suite: 1 process only (tests/train/test_ddp.py covers 2)
    "tiny": {"n": 4_000, "holdout": 500, "steps": 6, "warmup": 2, "batch": 64, "processes": [1]},
}


# -- data --------------------------------------------------------------------------------


def _chunk(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Features with a known structure: the label depends on m0, m1 and the product m2·m3."""
    inputs = {m: rng.normal(size=(n, FEATURES)).astype(np.float32) for m in MODALITIES}
    for m in MODALITIES:
        inputs[m] = inputs[m] * 2.0 + 1.0  # not standardised, so the statistics matter
    score = (
        inputs["m0"][:, 0]
        - inputs["m1"][:, 1]
        + (inputs["m2"][:, 0] - 1) * (inputs["m3"][:, 0] - 1)
    )
    return inputs, (score > np.median(score)).astype(np.int64)


def write_dataset(folder: Path, n: int, holdout: int) -> dict[str, float]:
    """Generate and write the folder chunk by chunk; returns the timings."""
    from interfuse.data.arrays import default_encoder
    from interfuse.data.lazy import LazyWriter

    sizes = {"train": n, "val": holdout, "test": holdout}
    writer = LazyWriter(
        folder,
        task="classification",
        sizes=sizes,
        shapes={m: (FEATURES,) for m in MODALITIES},
        encoders={m: default_encoder(m, (FEATURES,)) for m in MODALITIES},
        num_classes=2,
        class_names=["0", "1"],
    )
    rng = np.random.default_rng(0)
    generating = writing = 0.0
    started = time.perf_counter()
    with writer:
        for split, size in sizes.items():
            for start in range(0, size, CHUNK):
                t0 = time.perf_counter()
                inputs, labels = _chunk(rng, min(CHUNK, size - start))
                t1 = time.perf_counter()
                writer.append(split, inputs, labels)
                writing += time.perf_counter() - t1
                generating += t1 - t0
    finishing = time.perf_counter() - started - generating - writing
    return {
        "generate_s": generating,
        "write_hash_statistics_s": writing + finishing,
        "bytes": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
    }


def statistics_pass(folder: Path) -> tuple[float, int]:
    """Seconds and peak RSS of one streaming pass of the training moments over the files."""
    from interfuse.data.lazy import streaming_scaler

    started = time.perf_counter()
    with PeakRss() as rss:
        for m in MODALITIES:
            array = np.load(folder / "train" / f"{m}.npy", mmap_mode="r", allow_pickle=False)
            streaming_scaler(array, chunk=CHUNK)
            del array
    return time.perf_counter() - started, rss.peak


# -- memory ------------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    found, stack = [], [root]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _high_water_mark() -> int:
    """Peak RSS of this process since its ``exec`` (``VmHWM``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """Samples the summed RSS of this process and all its descendants in a thread."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(_rss_bytes(p) for p in _descendants(os.getpid()))
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- training worker ---------------------------------------------------------------------


def worker(folder: Path, devices: int, steps: int, warmup: int, batch: int, out: Path) -> None:
    """Train for ``steps`` steps on ``devices`` processes; rank 0 writes the timings."""
    import pytorch_lightning as pl
    import torch

    from interfuse.data.batching import batch_loader
    from interfuse.data.lazy import load_lazy
    from interfuse.models import build_model, model_spec
    from interfuse.train import FusionModule, TrainConfig

    quiet_lightning()
    set_threads(1)
    task = load_lazy(folder)
    config = TrainConfig(batch_size=batch, rank=8)
    shapes = {m: list(x.shape[1:]) for m, x in task.train.inputs.items()}
    spec = model_spec("intense", task.encoders, config, task.num_outputs, input_shapes=shapes)
    module = FusionModule(build_model(spec, seed=0), task.task)

    class Clock(pl.Callback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            self.marks.append(time.perf_counter())

    clock = Clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        use_distributed_sampler=False,
        callbacks=[clock],
    )
    loader = batch_loader(
        task.train,
        batch,
        shuffle=True,
        seed=0,
        rank=trainer.global_rank,
        world_size=trainer.world_size,
    )
    trainer.fit(module, train_dataloaders=loader)
    if trainer.is_global_zero:
        timed = clock.marks[warmup:]
        seconds = timed[-1] - timed[0]
        samples = (len(timed) - 1) * batch * trainer.world_size
        out.write_text(
            json.dumps(
                {
                    "processes": trainer.world_size,
                    "timed_steps": len(timed) - 1,
                    "seconds": seconds,
                    "samples_per_s": samples / seconds,
                    # VmHWM of this process (ru_maxrss would include the forking driver's RSS)
                    "max_rss_rank0_bytes": _high_water_mark(),
                    "threads_per_process": torch.get_num_threads(),
                }
            )
        )


def train(folder: Path, devices: int, settings: dict[str, Any], scratch: Path) -> dict[str, Any]:
    out = scratch / f"train-{devices}.json"
    command = [
        sys.executable, "-m", "benchmarks.scale", "--worker", str(folder), str(devices),
        str(settings["steps"]), str(settings["warmup"]), str(settings["batch"]), str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    started = time.perf_counter()
    with PeakRss() as rss:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"training with {devices} process(es) failed:\n{done.stderr[-3000:]}")
    result = json.loads(out.read_text())
    result["wall_s"] = time.perf_counter() - started
    result["peak_rss_all_processes_bytes"] = rss.peak
    return result


# -- suite -------------------------------------------------------------------------------


def run(scale: str, out_dir: str, threads: int = 1) -> dict[str, Any]:
    quiet_lightning()
    settings = SCALE_SETTINGS[scale]
    env = environment(1)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="interfuse-scale-", dir="/tmp") as tmp:
        scratch = Path(tmp)
        folder = scratch / "dataset"
        with PeakRss() as rss:
            written = write_dataset(folder, settings["n"], settings["holdout"])
        written["peak_rss_bytes"] = rss.peak
        written["statistics_pass_s"], written["statistics_peak_rss_bytes"] = statistics_pass(folder)
        processes = settings.get("processes", [1, 2])
        training = [train(folder, devices, settings, scratch) for devices in processes]
    payload = {
        "suite": SUITE,
        "scale": scale,
        "settings": {
            **settings,
            "modalities": len(MODALITIES),
            "features_per_modality": FEATURES,
            "dtype": "float32",
            "chunk": CHUNK,
            "model": "intense, pairs, rank 8, MLP encoders [64] -> 32, 1 torch thread/process",
            "batch": f"{settings['batch']} per process",
        },
        "environment": env,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "write": written,
        "training": training,
        "rss_limit_gib": RSS_LIMIT_GIB,
    }
    return publish(out_dir, SUITE, scale, payload, render)


def _gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def render(payload: dict[str, Any]) -> str:
    s, w = payload["settings"], payload["write"]
    n = s["n"]
    rows = [
        ["dataset on disk", f"{_gib(w['bytes'])} GiB ({n:,} training samples)"],
        ["write + hash + statistics (one pass)", f"{w['write_hash_statistics_s']:.1f} s "
         f"({n / w['write_hash_statistics_s']:,.0f} samples/s)"],
        ["statistics pass over the files", f"{w['statistics_pass_s']:.1f} s "
         f"({n / w['statistics_pass_s']:,.0f} samples/s)"],
        ["generation (not counted)", f"{w['generate_s']:.1f} s"],
        ["peak RSS while writing", f"{_gib(w['peak_rss_bytes'])} GiB"],
        ["peak RSS of the statistics pass", f"{_gib(w['statistics_peak_rss_bytes'])} GiB"],
    ]  # fmt: skip
    first = markdown_table(["step", "cost"], rows)
    base = payload["training"][0]["samples_per_s"]
    train_rows = [
        [
            r["processes"],
            r["timed_steps"],
            f"{r['samples_per_s']:,.0f}",
            f"{r['samples_per_s'] / base:.2f}",
            _gib(r["peak_rss_all_processes_bytes"]),
            _gib(r["max_rss_rank0_bytes"]),
        ]
        for r in payload["training"]
    ]
    second = markdown_table(
        [
            "processes",
            "timed steps",
            "samples/s",
            "speed-up",
            "peak RSS, all processes (GiB)",
            "peak RSS, rank 0 (GiB)",
        ],
        train_rows,
    )
    return (
        f"Scale: {n:,} samples x {s['modalities']} modalities x {s['features_per_modality']} "
        f"float32 features, read lazily; batch {s['batch']}\n\n{first}\n\n{second}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale")
    parser.add_argument("--worker", nargs=6, required=True)
    args = parser.parse_args(argv)
    folder, devices, steps, warmup, batch, out = args.worker
    worker(Path(folder), int(devices), int(steps), int(warmup), int(batch), Path(out))


if __name__ == "__main__":
    main()
