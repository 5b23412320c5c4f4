"""Data: synthetic ground-truth benchmarks, in-memory batching and task definitions."""

from interfuse.data.batching import TensorData, batch_loader, split_indices
from interfuse.data.synthetic import (
    GroundTruth,
    SyntheticData,
    load_synthetic,
    make_motif_data,
    make_synthetic,
    make_xor_data,
    save_synthetic,
)
from interfuse.data.task import TaskData, synthetic_task

__all__ = [
    "GroundTruth",
    "SyntheticData",
    "TaskData",
    "TensorData",
    "batch_loader",
    "load_synthetic",
    "make_motif_data",
    "make_synthetic",
    "make_xor_data",
    "save_synthetic",
    "split_indices",
    "synthetic_task",
]
