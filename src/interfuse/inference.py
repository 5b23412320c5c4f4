"""Model outputs and metrics: prediction with any subset of modalities (saying which were missing
for which sample), and evaluation of a model on a split."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from .data.arrays import mask_problem
from .data.batching import TensorData, batch_loader
from .metrics import compute_metrics

ArrayLike = np.ndarray | Tensor


@dataclass(frozen=True)
class Prediction:
    """Model outputs ``(N, C)`` and, per modality, which samples were missing (``(N,)`` bool)."""

    outputs: Tensor
    missing: dict[str, Tensor]

    def missing_counts(self) -> dict[str, int]:
        """Number of samples each modality was missing for (only modalities missing somewhere)."""
        counts = {m: int(mask.sum()) for m, mask in self.missing.items()}
        return {m: c for m, c in counts.items() if c > 0}

    def missing_names(self) -> list[str]:
        """For every sample, the missing modalities joined by ``+`` (``""`` if none)."""
        names = list(self.missing)
        table = torch.stack([self.missing[m] for m in names], dim=1).tolist()
        return ["+".join(m for m, gone in zip(names, row) if gone) for row in table]


@torch.no_grad()
def predict(
    model: nn.Module,
    inputs: Mapping[str, ArrayLike],
    masks: Mapping[str, ArrayLike | bool] | None = None,
    batch_size: int = 1024,
) -> Prediction:
    """Predict with a trained model from whatever modalities are available.

    A modality is missing for a sample when it is absent from ``inputs`` (all samples), when
    ``masks[m]`` is False for it, or when its input row is entirely NaN (the convention for
    files). Missing blocks take their expected value (``docs/missing-modalities.md``); the model
    runs in eval mode.
    """
    check_batch_size(batch_size)
    modalities = list(model.modalities)
    unknown = [k for k in inputs if k not in modalities]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; the model expects {modalities}")
    if not inputs:
        raise ValueError(f"no modality given; the model expects some of {modalities}")
    unknown = [k for k in masks or {} if k not in modalities]
    if unknown:
        raise ValueError(
            f"masks given for unknown modalities {unknown}; the model expects {modalities}"
        )
    _check_materialised(model)
    dtype = next(model.parameters()).dtype
    tensors = {m: _as_tensor(m, x, dtype) for m, x in inputs.items()}
    sizes = {m: x.shape[0] for m, x in tensors.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"modalities have different numbers of samples: {sizes}")
    n = next(iter(sizes.values()))
    if n == 0:
        raise ValueError(f"no samples to predict: the inputs have 0 samples {sizes}")
    present: dict[str, Tensor] = {}
    for m in modalities:
        if m not in tensors:
            keep = torch.zeros(n, dtype=torch.bool)
            if masks is not None and m in masks and bool(as_mask(m, masks[m], n).any()):
                raise ValueError(
                    f"masks[{m!r}] marks samples as present, but modality {m!r} is not in the "
                    f"inputs; pass its data, or a mask of False (or leave it out)"
                )
        else:
            x = tensors[m]
            keep = (
                ~torch.isnan(x.reshape(n, -1)).all(dim=1)
                if x.is_floating_point()
                else (torch.ones(n, dtype=torch.bool))
            )
        if masks is not None and m in masks:
            keep = keep & as_mask(m, masks[m], n)
        present[m] = keep
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        outputs = []
        for start in range(0, n, batch_size):
            rows = slice(start, start + batch_size)
            batch = {m: x[rows].to(device) for m, x in tensors.items()}
            batch_masks = {m: keep[rows].to(device) for m, keep in present.items()}
            outputs.append(model(batch, masks=batch_masks).prediction.cpu())
    finally:
        model.train(was_training)
    return Prediction(torch.cat(outputs), {m: ~keep for m, keep in present.items()})


def _as_tensor(name: str, x: ArrayLike, dtype: torch.dtype) -> Tensor:
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise ValueError(f"modality {name!r}: object arrays are not supported")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise TypeError(
            f"modality {name!r}: expected a numpy array or tensor, got {type(x).__name__}"
        )
    if x.dim() == 0:
        raise ValueError(f"modality {name!r}: expected an array of samples, got a scalar")
    if x.device.type == "meta":
        raise ValueError(f"modality {name!r}: the input is on the meta device (it holds no data)")
    return x.to(dtype) if x.is_floating_point() else x


def check_batch_size(batch_size: int) -> None:
    """Refuse a batch size that is not an integer >= 1 (bools included) in one line."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")


def _check_materialised(model: nn.Module) -> None:
    """A model built on the meta device has shapes but no weights: refuse it in one line."""
    if any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError(
            "the model is on the meta device (built without weights); load its weights first, "
            "e.g. with interfuse.load_run(folder)"
        )


def as_mask(name: str, mask: ArrayLike | bool, n: int) -> Tensor:
    """A modality's presence mask as an ``(n,)`` bool tensor (True = present); one-line errors
    for other dtypes, values or shapes."""
    if isinstance(mask, bool):
        return torch.full((n,), mask, dtype=torch.bool)
    array = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if (problem := mask_problem(array)) is not None:
        raise ValueError(
            f"mask of modality {name!r} must hold bools or 0/1 (True = present), got {problem}"
        )
    mask = torch.as_tensor(array)
    if mask.shape != (n,):
        raise ValueError(
            f"mask of modality {name!r} must have shape ({n},), got {tuple(mask.shape)}"
        )
    return mask.to(torch.bool)


@torch.no_grad()
def model_outputs(model: nn.Module, data: TensorData, batch_size: int = 1024) -> Tensor:
    """Outputs of ``model`` (eval mode, restored afterwards) for every sample of ``data``."""
    check_batch_size(batch_size)
    _check_materialised(model)
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outputs = [
            model(
                {m: x.to(device) for m, x in inputs.items()},
                **({"masks": {m: k.to(device) for m, k in masks.items()}} if masks else {}),
            ).prediction.cpu()
            for inputs, _, masks in batch_loader(data, batch_size, shuffle=False)
        ]
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def evaluate(
    model: nn.Module,
    data: TensorData,
    task: str,
    batch_size: int = 1024,
    metric_set: str = "default",
) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` (see :func:`interfuse.metrics.compute_metrics`)."""
    return compute_metrics(task, model_outputs(model, data, batch_size), data.targets, metric_set)
