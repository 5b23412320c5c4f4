"""Training on top of the core: Lightning module, resumable runs, metrics and checkpoints."""

from interfuse.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from interfuse.train.config import TrainConfig, build_model, model_description
from interfuse.train.metrics import compute_metrics, evaluate, predict
from interfuse.train.module import FusionModule
from interfuse.train.runner import RunFolderError, fit

__all__ = [
    "CheckpointError",
    "FusionModule",
    "RunFolderError",
    "TrainConfig",
    "build_model",
    "compute_metrics",
    "evaluate",
    "fit",
    "load_checkpoint",
    "model_description",
    "predict",
    "save_checkpoint",
]
