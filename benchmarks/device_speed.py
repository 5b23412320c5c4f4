"""The fusion head's training step on an accelerator, in float32 and under bfloat16 autocast.

``python -m benchmarks device-speed`` → ``device_speed.json`` / ``.md`` (issue 13: "where a GPU
is available, run the speed table once on it, fp32 and bf16"). It runs on the first CUDA device
when there is one, else on the CPU (there it only shows that every step runs; the CPU figures
are ``python -m benchmarks speed``'s). Not part of ``all``.

The implementations and inputs are those of :func:`benchmarks.fusion_speed.build` (batch 256,
d_m = 32, 2 classes, one training step: forward, cross-entropy + λ·Ω, backward), placed on the
device. *bf16* runs each step under ``torch.autocast(device, dtype=torch.bfloat16)``: the floor,
*before* and *naive* then compute in bfloat16 where autocast casts, while the model keeps its
fusion in float32 (``MultimodalModel.fuse`` turns autocast off for the head, as batch norm
does). Times are wall-clock seconds around ``torch.cuda.synchronize()`` (on the CPU: the same
without it), in interleaved rounds that run each implementation once in rotating order, after
two warm-up rounds (:func:`benchmarks.fusion_speed.interleaved_times`); ratios are medians of
per-round ratios. The full grid is sized for a session with a few minutes of
device time: both precisions ran in 110 s on this project's 2-core CPU, and on a GPU, where
launching kernels rather than arithmetic sets the time at these sizes, it is expected to take
about as long or less (not yet measured). On the device machine:
``PYTHONUNBUFFERED=1 PYTHONPATH=src python3 -m benchmarks device-speed --out $OUT``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from typing import Any

from ._common import environment, fmt, markdown_table, median, publish, set_threads
from .fusion_speed import build, interleaved_times, ratio_median, total_features

SUITE = "device_speed"
NAMES = ("floor", "before", "ours", "naive")
PRECISIONS = ("fp32", "bf16")
SCALE_SETTINGS: dict[str, dict[str, Any]] = {
    "full": {
        "configs": [
            (2, 4, 1),
            (6, 4, 1),
            (2, 8, 2),
            (3, 8, 2),
            (4, 8, 2),
            (6, 8, 2),
            (3, 8, 3),
            (4, 16, 3),
            (6, 8, 3),
            (4, 4, 4),
            (4, 8, 4),
        ],
        "rounds": 40,
    },
    "quick": {"configs": [(2, 4, 1), (4, 8, 2), (3, 8, 3)], "rounds": 15},
    "tiny": {"configs": [(2, 4, 1), (2, 4, 2)], "rounds": 3},
}


def _device() -> Any:
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _in_precision(step: Callable[[], None], precision: str, device_type: str) -> Callable[[], None]:
    """``step`` under bfloat16 autocast on ``device_type`` for ``bf16``; as it is for ``fp32``."""
    import torch

    def run() -> None:
        context = (
            torch.autocast(device_type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        with context:
            step()

    return run


def run(scale: str, out_dir: str, threads: int = 1) -> dict[str, Any]:
    import torch

    threads = set_threads(threads)
    settings = SCALE_SETTINGS[scale]
    env = environment(threads)
    device = _device()
    env["device"] = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({env['cpu']})"
    )
    env["cuda"] = torch.version.cuda
    env["float32_matmul_precision"] = torch.get_float32_matmul_precision()  # TF32 or not
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    started = time.perf_counter()
    rows = []
    for m, r, k in settings["configs"]:
        built = build(m, r, k, device=str(device))
        for precision in PRECISIONS:
            steps = {n: _in_precision(built["steps"][n], precision, device.type) for n in NAMES}
            rounds = settings["rounds"]
            times = interleaved_times(steps, 0.0, rounds, rounds, synchronize)["wall"]
            row = {
                "M": m,
                "r": r,
                "K": k,
                "features": total_features(m, r, k),
                "precision": precision,
                "rounds": settings["rounds"],
                "median_ms": {n: median(t) * 1e3 for n, t in times.items()},
                "ours_over_before": ratio_median(times["ours"], times["before"]),
                "ours_over_floor": ratio_median(times["ours"], times["floor"]),
                "naive_over_ours": ratio_median(times["naive"], times["ours"]),
            }
            rows.append(row)
            print(
                f"[device-speed] {device.type} {precision} M={m} r={r} K={k}: ours "
                f"{row['median_ms']['ours']:.3f} ms (x{row['ours_over_before']:.2f} before, "
                f"x{row['ours_over_floor']:.1f} floor)",
                file=sys.stderr,
                flush=True,
            )
        del built
    payload = {
        "suite": SUITE,
        "scale": scale,
        "settings": {**settings, "precisions": list(PRECISIONS), "implementations": list(NAMES)},
        "environment": env,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }
    return publish(out_dir, SUITE, scale, payload, render)


def render(payload: dict[str, Any]) -> str:
    device = payload["environment"].get("device", "?")
    parts = []
    for precision in payload["settings"]["precisions"]:
        rows = [r for r in payload["rows"] if r["precision"] == precision]
        table = markdown_table(
            [
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
                "naive / ours",
            ],
            [
                [
                    r["M"],
                    r["r"] if r["K"] > 1 else "—",
                    r["K"],
                    r["features"],
                    *(fmt(r["median_ms"][n], 3) for n in ("floor", "before", "ours", "naive")),
                    fmt(r["ours_over_before"], 2),
                    fmt(r["ours_over_floor"], 1),
                    fmt(r["naive_over_ours"], 1),
                ]
                for r in rows
            ],
        )
        note = (
            "; ours keeps its fusion in float32 under autocast, floor, before and naive compute"
            " in bfloat16 where autocast casts"
            if precision == "bf16"
            else ""
        )
        parts.append(
            f"### Fusion head, one training step on {device}, {precision} (batch 256, d_m = 32): "
            f"median wall ms, median per-round ratios{note}\n{table}"
        )
    return "\n\n".join(parts) + "\n"
