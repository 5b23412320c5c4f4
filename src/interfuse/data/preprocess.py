"""The fitted preprocessing of a task: feature standardisation and the label mapping.

A :class:`Preprocessor` is fitted on the training split only and stored in every run folder,
so that a trained model sees new raw data exactly as it saw its training data:

* **Standardisation** (optional, per modality): each feature minus its training mean, divided
  by its training standard deviation (1 where the feature is constant). In sequences
  ``(N, T, d)`` (front zero-padded, the MultiBench convention) only rows after the padding
  count, and padding stays zero. A sample whose whole row is NaN is *missing* for that modality
  (see :func:`interfuse.predict`) and stays NaN.
* **Labels**: for classification, the sorted distinct raw labels (as strings) define the class
  indices ``0 .. C-1``; :meth:`Preprocessor.encode_labels` maps raw labels to indices and
  :meth:`Preprocessor.decode` maps indices back. For multilabel tasks ``classes`` names the K
  label columns and labels are 0/1 matrices ``(N, K)``.

The state is numbers and strings only (:meth:`state` / :meth:`from_state`), saved without pickle.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Preprocessor", "Scaler", "label_string", "sequence_lengths"]


def sequence_lengths(x: np.ndarray) -> np.ndarray:
    """Valid lengths of front zero-padded sequences ``(N, T, d)`` (as ``SequenceGRU`` sees them)."""
    nonzero = (x != 0).any(axis=-1)
    first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), x.shape[1])
    return x.shape[1] - first


def _padding_mask(x: np.ndarray) -> np.ndarray | None:
    """``(N, T)`` True for data rows of a sequence array, ``None`` for other arrays."""
    if x.ndim != 3:
        return None
    return np.arange(x.shape[1])[None, :] >= (x.shape[1] - sequence_lengths(x))[:, None]


@dataclass(frozen=True)
class Scaler:
    """Per-feature ``mean`` and ``std`` (float64) of one modality's training rows.

    ``mean``/``std`` have the shape of one sample (feature vectors and other fixed shapes) or
    of one time step (sequences ``(T, d)``: shape ``(d,)``, with ``sequence=True``).
    """

    mean: np.ndarray
    std: np.ndarray
    sequence: bool

    @classmethod
    def fit(cls, x: np.ndarray) -> Scaler:
        """Statistics of the present (not all-NaN) samples of ``x``; padding rows excluded."""
        x = x[_present_rows(x)]
        mask = _padding_mask(x)
        rows = x.reshape(len(x), int(np.prod(x.shape[1:]))) if mask is None else x[mask]
        if len(rows) == 0:
            width = rows.shape[1:]
            return cls(np.zeros(width), np.ones(width), mask is not None)
        mean, std = _moments(rows)
        return cls(mean, np.where(std > 1e-12, std, 1.0), mask is not None)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x − mean) / std`` as float32; padding stays zero and missing rows stay NaN."""
        if self.sequence:
            mask = _padding_mask(x)
            out = ((x - self.mean) / self.std).astype(np.float32)
            out[~mask] = 0.0
            return out
        shape = x.shape
        return (
            ((x.reshape(len(x), int(np.prod(x.shape[1:]))) - self.mean) / self.std)
            .reshape(shape)
            .astype(np.float32)
        )


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std in float64; where that overflows (values near 1e300 square to
    infinity), each column is divided by its largest magnitude first."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = rows.mean(axis=0, dtype=np.float64)
        std = rows.std(axis=0, dtype=np.float64)
    if np.isfinite(mean).all() and np.isfinite(std).all():
        return mean, std
    rows = rows.astype(np.float64, copy=False)
    scale = np.abs(rows).max(axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    scaled = rows / scale
    return scaled.mean(axis=0) * scale, scaled.std(axis=0) * scale


def _present_rows(x: np.ndarray) -> np.ndarray:
    if x.dtype.kind != "f":
        return np.ones(len(x), dtype=bool)
    return ~np.isnan(x.reshape(len(x), int(np.prod(x.shape[1:])))).all(axis=1)


@dataclass(frozen=True)
class Preprocessor:
    """What a run does to raw arrays before the model sees them (see the module docstring).

    ``sample_shapes``: per-sample shape of each modality (``-1`` for a variable sequence
    length); ``scalers``: per modality, empty when the task is not standardised; ``classes``:
    raw label values (as strings) of class indices ``0 .. C-1``, ``None`` for regression;
    ``nonfinite_zero``: modalities whose NaN and infinite values become 0 before anything else
    (the affect loaders' conversion of the MultiBench files); ``labels_above_zero``: raw
    numeric labels are class 1 when > 0, else class 0 (the affect loaders' binarisation).
    """

    task: str
    modalities: tuple[str, ...]
    sample_shapes: Mapping[str, tuple[int, ...]]
    scalers: Mapping[str, Scaler] = field(default_factory=dict)
    classes: tuple[str, ...] | None = None
    nonfinite_zero: tuple[str, ...] = ()
    labels_above_zero: bool = False

    @classmethod
    def fit(
        cls,
        task: str,
        train_inputs: Mapping[str, np.ndarray],
        classes: Sequence[Any] | None = None,
        standardize: bool = True,
    ) -> Preprocessor:
        """Fit on the training split's raw arrays (``classes``: the distinct raw labels)."""
        shapes = {m: _sample_shape(x) for m, x in train_inputs.items()}
        scalers = (
            {m: Scaler.fit(np.asarray(x)) for m, x in train_inputs.items()} if standardize else {}
        )
        return cls(
            task=task,
            modalities=tuple(train_inputs),
            sample_shapes=shapes,
            scalers=scalers,
            classes=None
            if classes is None
            else tuple(label_string(c) for c in np.asarray(classes).tolist()),
        )

    @classmethod
    def identity(
        cls, task: str, inputs: Mapping[str, Tensor], num_classes: int | None = None
    ) -> Preprocessor:
        """No scaling; classes named ``0 .. C-1`` (for data given already preprocessed)."""
        return cls(
            task=task,
            modalities=tuple(inputs),
            sample_shapes={m: tuple(int(s) for s in x.shape[1:]) for m, x in inputs.items()},
            classes=None if num_classes is None else tuple(str(c) for c in range(num_classes)),
        )

    def transform(self, inputs: Mapping[str, Any], source: str = "") -> dict[str, Tensor]:
        """Raw arrays ``{modality: (N, ...)}`` → float32 tensors as training saw them.

        Any subset of the modalities may be given (the others are missing). A wrong feature
        shape or an unknown modality raises a ``ValueError`` naming it (and ``source``).
        """
        prefix = f"{source}: " if source else ""
        unknown = sorted(set(inputs) - set(self.modalities))
        if unknown:
            raise ValueError(
                f"{prefix}unknown modalities {unknown}; the run was trained on "
                f"{list(self.modalities)}"
            )
        out = {}
        for m, raw in inputs.items():
            x = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else np.asarray(raw)
            if x.dtype.kind not in "biuf":
                raise ValueError(f"{prefix}modality {m!r}: expected numbers, got dtype {x.dtype}")
            expected = self.sample_shapes[m]
            if x.ndim != len(expected) + 1 or any(
                e != -1 and e != s for e, s in zip(expected, x.shape[1:])
            ):
                want = ", ".join("T" if e == -1 else str(e) for e in expected)
                raise ValueError(
                    f"{prefix}modality {m!r}: expected samples of shape ({want}), got an array "
                    f"of shape {x.shape}"
                )
            if len(x) == 0:
                raise ValueError(f"{prefix}modality {m!r} has 0 samples")
            if 0 in x.shape[1:]:  # a variable sequence length of 0 passes the shape check
                raise ValueError(
                    f"{prefix}modality {m!r} has no features: samples of shape {x.shape[1:]} "
                    f"(every axis after the first needs a size >= 1)"
                )
            x = x.astype(np.float64, copy=False)
            if m in self.nonfinite_zero:
                x = np.where(np.isfinite(x), x, 0.0)
            _check_values(m, x, prefix)
            if m in self.scalers:
                with np.errstate(over="ignore", invalid="ignore"):
                    x = self.scalers[m].apply(x)
            else:
                with np.errstate(over="ignore"):
                    x = x.astype(np.float32)
            if np.isinf(x).any():
                where = "after standardisation" if m in self.scalers else "as float32"
                raise ValueError(
                    f"{prefix}modality {m!r}: values as large as "
                    f"{float(np.nanmax(np.abs(raw_values(raw)))):.3g} overflow {where} (float32 "
                    f"holds at most 3.4e38); rescale the features"
                )
            out[m] = torch.from_numpy(np.ascontiguousarray(x))
        return out

    def encode_labels(self, labels: Any, source: str = "") -> Tensor:
        """Raw labels → class indices (classification) or float32 targets (regression)."""
        values = np.asarray(labels)
        if self.task != "multilabel":
            if values.ndim > 1 and values.size != len(values):
                raise ValueError(
                    f"{source + ': ' if source else ''}labels must hold one label per sample, "
                    f"got shape {values.shape}"
                )
            values = values.reshape(len(values)) if values.ndim else values.reshape(1)
            if self.labels_above_zero and values.dtype.kind in "biuf":
                if not np.isfinite(values.astype(np.float64)).all():
                    raise ValueError(
                        f"{source + ': ' if source else ''}labels contain NaN or infinite values"
                    )
                values = (values > 0).astype(np.int64)
        if self.classes is None:
            if values.dtype.kind not in "biuf":
                raise ValueError(
                    f"{source + ': ' if source else ''}regression needs numeric labels"
                )
            with np.errstate(over="ignore"):
                targets = torch.from_numpy(values.astype(np.float32))
            if not torch.isfinite(targets).all():
                raise ValueError(
                    f"{source + ': ' if source else ''}labels contain NaN or infinite values"
                )
            return targets
        if self.task == "multilabel":
            k = len(self.classes)
            if values.ndim != 2 or values.shape[1] != k:
                raise ValueError(
                    f"{source + ': ' if source else ''}multilabel labels must have shape (N, {k}), "
                    f"got {values.shape}"
                )
            if values.dtype.kind not in "biuf" or not np.isin(values, (0, 1)).all():
                raise ValueError(
                    f"{source + ': ' if source else ''}multilabel labels must be 0 or 1"
                )
            return torch.from_numpy(values.astype(np.float32))
        index = {c: i for i, c in enumerate(self.classes)}
        names = [label_string(v) for v in values.tolist()]
        unknown = sorted({n for n in names if n not in index})
        if unknown:
            raise ValueError(
                f"{source + ': ' if source else ''}labels {unknown[:5]} were never seen in "
                f"training; the run's classes are {list(self.classes)}"
            )
        return torch.tensor([index[n] for n in names], dtype=torch.long)

    def decode(
        self, indices: Tensor | Sequence[int], names: Sequence[str] | None = None
    ) -> list[str]:
        """Class indices → raw label values (as strings), or ``names[i]`` when the classes have
        display names (one per class); for multilabel, a ``(N, K)`` 0/1 matrix → the names of
        the labels that are on, joined by ``+`` (``""`` for none)."""
        if self.classes is None:
            raise ValueError("a regression task has no classes to decode")
        if names is not None and len(names) != len(self.classes):
            raise ValueError(f"{len(names)} class names given for {len(self.classes)} classes")
        labels = self.classes if names is None else tuple(names)
        if self.task == "multilabel":
            return ["+".join(c for c, on in zip(labels, row) if on) for row in np.asarray(indices)]
        return [labels[int(i)] for i in indices]

    # -- storage ---------------------------------------------------------------------------

    def state(self) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """``(tensors, JSON-safe metadata)`` for a safetensors file."""
        tensors: dict[str, Tensor] = {}
        for m, scaler in self.scalers.items():
            tensors[f"{m}.mean"] = torch.from_numpy(np.ascontiguousarray(scaler.mean))
            tensors[f"{m}.std"] = torch.from_numpy(np.ascontiguousarray(scaler.std))
        meta = {
            "task": self.task,
            "modalities": list(self.modalities),
            "sample_shapes": {m: list(s) for m, s in self.sample_shapes.items()},
            "standardized": sorted(self.scalers),
            "sequence": sorted(m for m, s in self.scalers.items() if s.sequence),
            "classes": None if self.classes is None else list(self.classes),
            "nonfinite_zero": list(self.nonfinite_zero),
            "labels_above_zero": self.labels_above_zero,
        }
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: Mapping[str, Tensor], meta: Mapping[str, Any]) -> Preprocessor:
        """Inverse of :meth:`state`; ``ValueError`` when something is missing or inconsistent."""
        try:
            sequence = set(meta["sequence"])
            scalers = {
                m: Scaler(
                    tensors[f"{m}.mean"].double().numpy(),
                    tensors[f"{m}.std"].double().numpy(),
                    m in sequence,
                )
                for m in meta["standardized"]
            }
            shapes = {m: tuple(int(d) for d in s) for m, s in meta["sample_shapes"].items()}
            for m, scaler in scalers.items():  # one value per feature: nothing to broadcast
                shape = shapes[m]
                known = len(shape) == 2 if scaler.sequence else -1 not in shape
                width = shape[-1:] if scaler.sequence else (math.prod(shape),)
                if not known or not scaler.mean.shape == scaler.std.shape == width:
                    raise ValueError(
                        f"the statistics of modality {m!r} have shape {scaler.mean.shape} and "
                        f"{scaler.std.shape}, expected {width} for samples of shape {shapes[m]}"
                    )
            classes = meta["classes"]
            return cls(
                task=str(meta["task"]),
                modalities=tuple(meta["modalities"]),
                sample_shapes=shapes,
                scalers=scalers,
                classes=None if classes is None else tuple(str(c) for c in classes),
                # both absent in runs saved before they were recorded
                nonfinite_zero=tuple(meta.get("nonfinite_zero", ())),
                labels_above_zero=bool(meta.get("labels_above_zero", False)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed preprocessing state ({error!r})") from None


def raw_values(raw: Any) -> np.ndarray:
    values = raw.detach().cpu().numpy() if isinstance(raw, Tensor) else np.asarray(raw)
    return values.astype(np.float64, copy=False)


def _check_values(modality: str, x: np.ndarray, prefix: str) -> None:
    """Infinite values, and NaN other than whole missing rows, are refused (naming counts)."""
    if np.isinf(x).any():
        raise ValueError(
            f"{prefix}modality {modality!r}: {int(np.isinf(x).sum())} values are infinite"
        )
    nan = np.isnan(x.reshape(len(x), int(np.prod(x.shape[1:]))))
    partial = nan.any(axis=1) & ~nan.all(axis=1)
    if partial.any():
        raise ValueError(
            f"{prefix}modality {modality!r}: {int(partial.sum())} samples have some but not all "
            f"values NaN (fill a whole sample with NaN to mark it missing)"
        )


def label_string(value: Any) -> str:
    """The string a raw label is known by (``1.0`` and ``1`` are the same class)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, bytes):
        return value.decode()
    return str(value)


def _sample_shape(x: Any) -> tuple[int, ...]:
    shape = tuple(int(s) for s in np.shape(x)[1:])
    return (-1, shape[1]) if len(shape) == 2 else shape
