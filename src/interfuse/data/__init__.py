"""Data: synthetic ground-truth benchmarks, in-memory batching and task definitions."""

from interfuse.data.arrays import from_arrays, from_splits, load_npz_dataset
from interfuse.data.batching import TensorData, batch_loader, split_indices
from interfuse.data.registry import DatasetInfo, dataset_info, list_datasets, load_dataset
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
    "DatasetInfo",
    "GroundTruth",
    "SyntheticData",
    "TaskData",
    "TensorData",
    "batch_loader",
    "dataset_info",
    "from_arrays",
    "from_splits",
    "list_datasets",
    "load_dataset",
    "load_npz_dataset",
    "load_synthetic",
    "make_motif_data",
    "make_synthetic",
    "make_xor_data",
    "save_synthetic",
    "split_indices",
    "synthetic_task",
]
