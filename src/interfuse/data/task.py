"""A learning task: split data, what to predict, and default encoders for each modality."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .batching import TensorData, split_indices
from .synthetic import SyntheticData

TaskKind = Literal["classification", "regression"]


@dataclass
class TaskData:
    """Train/validation/test splits plus everything needed to build a model for them.

    ``encoders`` maps each modality to an encoder specification understood by
    :func:`interfuse.train.config.build_encoder` (e.g. ``{"type": "sequence_cnn"}``).
    ``metrics`` names the metric set evaluation reports (see
    :data:`interfuse.train.metrics.METRIC_SETS`; ``"sentiment"`` adds MAE, Acc-2, F1 and Acc-7
    for labels in [-3, 3]); ``class_names`` optionally names classes ``0 .. num_classes - 1``.
    """

    name: str
    task: TaskKind
    train: TensorData
    val: TensorData
    test: TensorData
    encoders: dict[str, dict[str, Any]]
    num_classes: int | None = None
    ground_truth: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    metrics: str = "default"
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.task not in ("classification", "regression"):
            raise ValueError(f"task must be 'classification' or 'regression', got {self.task!r}")
        if self.task == "classification" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError("a classification task needs num_classes >= 2")
        for split in ("val", "test"):
            if getattr(self, split).modalities != self.train.modalities:
                raise ValueError(f"the {split} split has different modalities than train")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names given for {self.num_classes} classes"
            )
        if set(self.encoders) != set(self.train.modalities):
            raise ValueError(
                f"encoder specifications {sorted(self.encoders)} do not match the modalities "
                f"{self.train.modalities}"
            )
        for split in ("train", "val", "test"):
            self._check_targets(split, getattr(self, split).targets)

    def _check_targets(self, split: str, targets: torch.Tensor) -> None:
        if self.task == "classification":
            if targets.is_floating_point() or targets.dtype == torch.bool:
                raise ValueError(
                    f"{split} labels must be integer class indices for classification, got "
                    f"{targets.dtype}"
                )
            if len(targets) and (targets.min() < 0 or targets.max() >= self.num_classes):
                raise ValueError(
                    f"{split} labels must lie in 0..{self.num_classes - 1}, found values from "
                    f"{int(targets.min())} to {int(targets.max())}"
                )
        elif not bool(torch.isfinite(targets.double()).all()):
            raise ValueError(f"{split} targets contain non-finite values (NaN or inf)")

    @property
    def modalities(self) -> list[str]:
        return self.train.modalities

    @property
    def num_outputs(self) -> int:
        return self.num_classes if self.task == "classification" else 1


def synthetic_task(
    data: SyntheticData,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    name: str = "motif",
) -> TaskData:
    """Wrap generated DNA data as a classification task with one CNN per modality."""
    one_hot = {m: torch.from_numpy(x) for m, x in data.one_hot().items()}
    labels = torch.from_numpy(np.asarray(data.labels, dtype=np.int64))
    full = TensorData(one_hot, labels)
    train, val, test = split_indices(len(full), fractions, seed=seed, stratify=data.labels)
    return TaskData(
        name=name,
        task="classification",
        train=full.subset(train),
        val=full.subset(val),
        test=full.subset(test),
        encoders={m: {"type": "sequence_cnn"} for m in data.modalities},
        num_classes=2,
        ground_truth=data.ground_truth.to_dict(),
        # generator settings and split seed: enough to rebuild the splits exactly (explain)
        info={
            "motifs": list(data.motifs),
            "n": len(data),
            "synthetic": dict(data.params),
            "split": {"seed": seed, "fractions": list(fractions)},
        },
    )
