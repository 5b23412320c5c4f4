"""Task losses and evaluation metrics, computed on whole prediction tensors."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..data.batching import TensorData, batch_loader


def task_loss(task: str, prediction: Tensor, targets: Tensor) -> Tensor:
    """Cross-entropy for classification (``targets`` class indices), MSE for regression."""
    if task == "classification":
        return F.cross_entropy(prediction, targets)
    return F.mse_loss(prediction.reshape(targets.shape), targets.to(prediction.dtype))


def compute_metrics(task: str, prediction: Tensor, targets: Tensor) -> dict[str, float]:
    """Classification: loss, accuracy, macro-F1. Regression: loss (MSE), MAE, Pearson r."""
    metrics = {"loss": float(task_loss(task, prediction, targets))}
    if task == "classification":
        predicted = prediction.argmax(dim=1)
        metrics["accuracy"] = float((predicted == targets).double().mean())
        metrics["macro_f1"] = _macro_f1(predicted, targets, prediction.shape[1])
    else:
        pred = prediction.reshape(-1).double()
        true = targets.reshape(-1).double()
        metrics["mae"] = float((pred - true).abs().mean())
        pc, tc = pred - pred.mean(), true - true.mean()
        denominator = pc.norm() * tc.norm()
        metrics["pearson"] = float(pc @ tc / denominator) if denominator > 0 else float("nan")
    return metrics


def _macro_f1(predicted: Tensor, targets: Tensor, num_classes: int) -> float:
    scores = []
    for c in range(num_classes):
        tp = float(((predicted == c) & (targets == c)).sum())
        fp = float(((predicted == c) & (targets != c)).sum())
        fn = float(((predicted != c) & (targets == c)).sum())
        if tp + fp + fn > 0:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else float("nan")


@torch.no_grad()
def predict(model: nn.Module, data: TensorData, batch_size: int = 1024) -> Tensor:
    """Predictions of ``model`` (in eval mode, restored afterwards) for every sample of ``data``."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outputs = [
            model({m: x.to(device) for m, x in inputs.items()}).prediction.cpu()
            for inputs, _ in batch_loader(data, batch_size, shuffle=False)
        ]
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def evaluate(
    model: nn.Module, data: TensorData, task: str, batch_size: int = 1024
) -> dict[str, float]:
    """Metrics of ``model`` on ``data``."""
    return compute_metrics(task, predict(model, data, batch_size), data.targets)


def format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
