"""A learning task: split data, what to predict, and default encoders for each modality."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .batching import TensorData, split_indices
from .preprocess import Preprocessor
from .synthetic import SyntheticData

TaskKind = Literal["classification", "regression", "multilabel"]
TASKS: tuple[str, ...] = ("classification", "regression", "multilabel")
"""``classification``: one class per sample (integer targets ``(N,)``); ``regression``: real
targets ``(N,)``; ``multilabel``: any subset of K labels per sample (0/1 targets ``(N, K)``)."""


@dataclass
class TaskData:
    """Train/validation/test splits plus everything needed to build a model for them.

    ``encoders`` maps each modality to an encoder specification understood by
    :func:`interfuse.encoders.build_encoder` (e.g. ``{"type": "sequence_cnn"}``) or an
    ``nn.Module``. ``metrics`` names the metric set evaluation reports (see
    :data:`interfuse.metrics.METRIC_SETS`; ``"sentiment"`` adds MAE, Acc-2, F1 and Acc-7
    for labels in [-3, 3]); ``class_names`` optionally names classes ``0 .. num_classes - 1``.

    ``preprocessor`` is what turned raw arrays into these tensors (fitted on the training split;
    saved in every run folder so that new raw data can be predicted); ``None`` means the tensors
    are used as given. ``train_defaults`` are training settings this dataset needs (e.g. mfeat's
    λ and p): :func:`interfuse.train.fit` applies them to every setting the caller did not set.
    ``source`` says where the data came from (dataset name, loader options, file path and
    content hash), so a run can be checked against, and rebuilt from, its data.
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
    preprocessor: Preprocessor | None = None
    train_defaults: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task == "classification" and (self.num_classes is None or self.num_classes < 2):
            raise ValueError("a classification task needs num_classes >= 2")
        if self.task == "multilabel" and (self.num_classes is None or self.num_classes < 1):
            raise ValueError("a multilabel task needs num_classes >= 1 (the number of labels)")
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
        elif self.task == "multilabel":
            if targets.dim() != 2 or targets.shape[1] != self.num_classes:
                raise ValueError(
                    f"{split} targets must have shape (N, {self.num_classes}) for multilabel, got "
                    f"{tuple(targets.shape)}"
                )
            if not bool(((targets == 0) | (targets == 1)).all()):
                raise ValueError(f"{split} multilabel targets must be 0 or 1")
        elif not bool(torch.isfinite(targets.double()).all()):
            raise ValueError(f"{split} targets contain non-finite values (NaN or inf)")

    @property
    def modalities(self) -> list[str]:
        return self.train.modalities

    @property
    def num_outputs(self) -> int:
        return 1 if self.task == "regression" else int(self.num_classes or 1)

    def fitted_preprocessor(self) -> Preprocessor:
        """The preprocessing to store with a run (identity when the tensors were given as is)."""
        if self.preprocessor is not None:
            return self.preprocessor
        return Preprocessor.identity(self.task, self.train.inputs, self.num_classes)

    def fingerprint(self) -> str:
        """SHA-256 of every split's tensors and targets: equal fingerprints, equal data and split.

        A resumed run compares it with the one it started with, so another file, another split
        seed or other preprocessing cannot silently continue a run. A split read lazily from a
        dataset folder (:mod:`interfuse.data.lazy`) contributes its manifest's SHA-256 (which
        lists the SHA-256 of every file) instead of its content.
        """
        digest = hashlib.sha256()
        for split in ("train", "val", "test"):
            data: TensorData = getattr(self, split)
            if not isinstance(data, TensorData):  # a split read lazily from disk
                digest.update(f"{split}/{data.content_digest}".encode())
                continue
            for name, tensor in [*sorted(data.inputs.items()), ("<targets>", data.targets)]:
                t = tensor.detach().cpu().contiguous()
                digest.update(f"{split}/{name}/{t.dtype}/{tuple(t.shape)}".encode())
                digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()

    def masks_fingerprint(self) -> str:
        """SHA-256 of the missing-modality masks of every split held in memory.

        :meth:`fingerprint` hashes tensors and targets only (the inputs of absent samples are
        ignored, so they need not change with the masks); a resumed run compares this too. A
        lazily read split's masks are in its files, which its content digest covers.
        """
        digest = hashlib.sha256()
        for split in ("train", "val", "test"):
            data = getattr(self, split)
            if not isinstance(data, TensorData):
                continue
            for name, mask in sorted(data.masks.items()):
                m = mask.detach().cpu().to(torch.bool).contiguous()
                digest.update(f"{split}/{name}/{tuple(m.shape)}".encode())
                digest.update(m.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


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
        class_names=["0", "1"],
        ground_truth=data.ground_truth.to_dict(),
        # generator settings and split seed: enough to rebuild the splits exactly (explain)
        info={
            "motifs": list(data.motifs),
            "n": len(data),
            "synthetic": dict(data.params),
            "split": {"seed": seed, "fractions": list(fractions)},
        },
    )
