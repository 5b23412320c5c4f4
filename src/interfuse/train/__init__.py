"""Training on top of the core: configuration, Lightning module, resumable runs into run folders."""

from interfuse.train.config import RESUMABLE_CHANGES, TrainConfig
from interfuse.train.interrupt import TrainingInterrupted
from interfuse.train.module import FusionModule
from interfuse.train.runner import (
    NotConverged,
    RunFolderError,
    TrainingDiverged,
    TrainingState,
    fit,
    is_global_zero,
)

__all__ = [
    "RESUMABLE_CHANGES",
    "FusionModule",
    "NotConverged",
    "RunFolderError",
    "TrainConfig",
    "TrainingDiverged",
    "TrainingInterrupted",
    "TrainingState",
    "fit",
    "is_global_zero",
]
