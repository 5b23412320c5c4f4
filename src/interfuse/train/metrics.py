"""Task losses and evaluation metrics, computed on whole prediction tensors.

Metric sets (:data:`METRIC_SETS`): ``"default"`` (loss, accuracy and macro-F1 for classification;
loss, MAE and Pearson r for regression) and ``"sentiment"`` for sentiment regression on
[-3, 3] (CMU-MOSI/MOSEI), which adds the binary and 7-class scores of :func:`sentiment_metrics`.
"""

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


METRIC_SETS = ("default", "sentiment")


def compute_metrics(
    task: str, prediction: Tensor, targets: Tensor, metric_set: str = "default"
) -> dict[str, float]:
    """Classification: loss, accuracy, macro-F1. Regression: loss (MSE), MAE, Pearson r.

    ``metric_set="sentiment"`` (regression only) adds :func:`sentiment_metrics`.
    """
    if metric_set not in METRIC_SETS:
        raise ValueError(f"unknown metric set {metric_set!r}; known: {', '.join(METRIC_SETS)}")
    if metric_set == "sentiment" and task != "regression":
        raise ValueError("the 'sentiment' metric set needs a regression task")
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
        if metric_set == "sentiment":
            metrics.update(sentiment_metrics(prediction, targets))
    return metrics


def sentiment_metrics(prediction: Tensor, targets: Tensor) -> dict[str, float]:
    """Binary and 7-class scores of sentiment scores on [-3, 3] (CMU-MOSI/MOSEI convention).

    * ``acc2_nonzero`` / ``f1_nonzero``: only samples with label ≠ 0; positive means ``> 0``
      for both label and prediction ("non-zero" Acc-2).
    * ``acc2_with_zero`` / ``f1_with_zero``: all samples; positive means ``>= 0`` for both
      label and prediction (a zero label counts as non-negative).
    * F1 is the support-weighted F1 over the two classes of the same binarisation.
    * ``acc7``: label and prediction clipped to [-3, 3] and rounded to the nearest integer
      (halves to even, as ``numpy.round``), then compared.

    Scores over an empty set of samples are NaN.
    """
    pred = prediction.reshape(-1).double()
    true = targets.reshape(-1).double()
    nonzero = true != 0
    metrics = {
        "acc2_nonzero": _accuracy(pred[nonzero] > 0, true[nonzero] > 0),
        "f1_nonzero": _weighted_f1(pred[nonzero] > 0, true[nonzero] > 0),
        "acc2_with_zero": _accuracy(pred >= 0, true >= 0),
        "f1_with_zero": _weighted_f1(pred >= 0, true >= 0),
    }
    seven_pred = pred.clamp(-3, 3).round()
    seven_true = true.clamp(-3, 3).round()
    metrics["acc7"] = _accuracy(seven_pred, seven_true)
    return metrics


def _accuracy(predicted: Tensor, targets: Tensor) -> float:
    return float((predicted == targets).double().mean()) if len(targets) else float("nan")


def _weighted_f1(predicted: Tensor, targets: Tensor) -> float:
    """F1 per class weighted by the class's share of ``targets`` (binary boolean inputs)."""
    if not len(targets):
        return float("nan")
    total = 0.0
    for c in (False, True):
        support = float((targets == c).sum())
        if support == 0:
            continue
        tp = float(((predicted == c) & (targets == c)).sum())
        fp = float(((predicted == c) & (targets != c)).sum())
        fn = support - tp
        total += support * 2 * tp / (2 * tp + fp + fn)
    return total / len(targets)


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
    model: nn.Module,
    data: TensorData,
    task: str,
    batch_size: int = 1024,
    metric_set: str = "default",
) -> dict[str, float]:
    """Metrics of ``model`` on ``data`` (``metric_set``: see :func:`compute_metrics`)."""
    return compute_metrics(task, predict(model, data, batch_size), data.targets, metric_set)


def format_metrics(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
