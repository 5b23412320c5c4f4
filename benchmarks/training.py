"""Training helpers shared by the fidelity and accuracy suites."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from interfuse.data.task import TaskData
from interfuse.results import RunResult
from interfuse.train import fit


def train_once(task: TaskData, config: Any) -> RunResult:
    """``fit`` into a throw-away folder (no report)."""
    with tempfile.TemporaryDirectory(prefix="interfuse-bench-") as tmp:
        return fit(task, config, Path(tmp) / "run", progress=False, overwrite=True)


def single_modality(task: TaskData, modality: str) -> TaskData:
    """The same splits and task restricted to one modality (for unimodal baselines)."""
    from dataclasses import replace

    from interfuse.data.batching import TensorData

    def keep(split: TensorData) -> TensorData:
        return TensorData({modality: split.inputs[modality]}, split.targets)

    return replace(
        task,
        name=f"{task.name}[{modality}]",
        train=keep(task.train),
        val=keep(task.val),
        test=keep(task.test),
        encoders={modality: dict(task.encoders[modality])},
        ground_truth=None,
    )
