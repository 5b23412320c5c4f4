"""Task losses and evaluation metrics, computed on whole prediction tensors (pure functions).

Metric values come from :mod:`torchmetrics` (functional API); this module only picks the set of
metrics for a task and returns plain floats. Metric sets (:data:`METRIC_SETS`):

* ``"default"``: classification → loss (cross-entropy), accuracy, macro-F1, AUROC and AUPRC
  (one-vs-rest, macro-averaged over the classes present in the targets; for two classes the
  score of class 1); regression → loss (MSE), MAE, RMSE, R² and Pearson r.
  Multilabel → loss (binary cross-entropy), ``accuracy`` (mean over labels), ``exact_match``
  (every label right), ``macro_f1``, ``auroc`` and ``auprc`` (macro over labels with both
  values), and ``f1@k`` per label k.
* ``"sentiment"``: regression on sentiment scores in [-3, 3] (CMU-MOSI/MOSEI), which adds the
  binary and 7-class scores of :func:`sentiment_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor
from torch.nn import functional as F
from torchmetrics.functional import (
    mean_absolute_error,
    pearson_corrcoef,
    r2_score,
)
from torchmetrics.functional.classification import (
    binary_accuracy,
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    multiclass_accuracy,
    multiclass_f1_score,
    multilabel_accuracy,
    multilabel_exact_match,
    multilabel_f1_score,
)

__all__ = [
    "LOWER_IS_BETTER",
    "METRIC_SETS",
    "balanced_weights",
    "compute_metrics",
    "format_metrics",
    "per_sample_loss",
    "sentiment_metrics",
    "task_loss",
]

METRIC_SETS = ("default", "sentiment")
LOWER_IS_BETTER = frozenset({"loss", "mae", "rmse"})
"""Metrics for which a smaller value is better (all others: larger is better)."""


def task_loss(
    task: str, prediction: Tensor, targets: Tensor, weight: Tensor | None = None
) -> Tensor:
    """Cross-entropy for classification (``targets`` class indices; ``weight`` per class),
    binary cross-entropy on logits for multilabel (``weight``: positive weight per label), MSE
    for regression."""
    if task == "classification":
        return F.cross_entropy(prediction, targets, weight=weight)
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(
            prediction, targets.to(prediction.dtype), pos_weight=weight
        )
    return F.mse_loss(prediction.reshape(targets.shape), targets.to(prediction.dtype))


def per_sample_loss(
    task: str,
    prediction: Tensor,
    targets: Tensor,
    differentiable: bool = False,
    weight: Tensor | None = None,
) -> Tensor:
    """The loss of :func:`task_loss` per sample ``(N,)``, so that its mean is ``task_loss``:
    cross-entropy, binary cross-entropy averaged over labels, squared error averaged over
    targets. In float64; detached from the graph unless ``differentiable``.

    ``weight`` as in :func:`task_loss` (ignored for regression): a classification sample's loss
    is scaled by ``w_{y_i} / mean_j w_{y_j}`` (the weighted mean of ``F.cross_entropy``
    normalises by the weights' sum), a label's positive term by its positive weight."""
    prediction = prediction.double() if differentiable else prediction.detach().double()
    if task == "classification":
        losses = F.cross_entropy(prediction, targets, reduction="none")
        if weight is None:
            return losses
        sample_weight = weight.double()[targets]
        return losses * (sample_weight / sample_weight.mean())
    if task == "multilabel":
        losses = F.binary_cross_entropy_with_logits(
            prediction,
            targets.double(),
            reduction="none",
            pos_weight=None if weight is None else weight.double(),
        )
        return losses.reshape(len(targets), -1).mean(dim=1)
    error = prediction.reshape(targets.shape) - targets.double()
    return error.pow(2).reshape(len(targets), -1).mean(dim=1)


def balanced_weights(task: str, targets: Tensor, num_outputs: int) -> Tensor | None:
    """Loss weights that balance classes (``N / (C · n_c)``) or labels (``n_negative /
    n_positive`` as positive weight); ``None`` for regression. Absent classes, and labels that
    are never or always positive (nothing to balance), get weight 1."""
    if task == "classification":
        counts = torch.bincount(targets, minlength=num_outputs).double()
        weights = len(targets) / (num_outputs * counts.clamp(min=1))
        return torch.where(counts > 0, weights, 1.0).float()
    if task == "multilabel":
        positive = targets.double().sum(dim=0)
        negative = len(targets) - positive
        both = (positive > 0) & (negative > 0)  # an always-positive label's n_neg/n_pos is 0,
        # which would zero its loss (never learnt): nothing to balance there, weight 1
        return torch.where(both, negative / positive.clamp(min=1), 1.0).float()
    return None


def compute_metrics(
    task: str, prediction: Tensor, targets: Tensor, metric_set: str = "default"
) -> dict[str, float]:
    """Metrics of ``prediction`` against ``targets`` (see the module docstring for which).

    Scores that are undefined for the given targets (e.g. AUROC when a split holds one class,
    R² of constant targets, Pearson r of a constant prediction) are NaN. A prediction with a
    NaN or infinite value (a diverged model) has no score: every metric is NaN, not what an
    arg-max or a ranking of NaN would give (accuracy 0.5, AUROC 0.25 for all-NaN logits).
    """
    if metric_set not in METRIC_SETS:
        raise ValueError(f"unknown metric set {metric_set!r}; known: {', '.join(METRIC_SETS)}")
    if metric_set == "sentiment" and task != "regression":
        raise ValueError("the 'sentiment' metric set needs a regression task")
    prediction = prediction.detach()
    if not bool(torch.isfinite(prediction).all()):
        names = compute_metrics(task, torch.zeros_like(prediction), targets, metric_set)
        return dict.fromkeys(names, math.nan)
    metrics = {"loss": float(task_loss(task, prediction, targets))}
    if task == "classification":
        metrics.update(_classification_metrics(prediction, targets))
    elif task == "multilabel":
        metrics.update(_multilabel_metrics(prediction, targets))
    else:
        pred = prediction.reshape(-1).double()
        true = targets.reshape(-1).double()
        metrics["mae"] = float(mean_absolute_error(pred, true))
        metrics["rmse"] = math.sqrt(float(F.mse_loss(pred, true)))
        # R² = 1 − SS_res / SS_tot is undefined for constant targets (SS_tot = 0)
        constant_true = len(true) < 2 or bool(true.std() == 0)
        metrics["r2"] = math.nan if constant_true else float(r2_score(pred, true))
        constant = constant_true or bool(pred.std() == 0)
        metrics["pearson"] = math.nan if constant else float(pearson_corrcoef(pred, true))
        if metric_set == "sentiment":
            metrics.update(sentiment_metrics(prediction, targets))
    return metrics


def _classification_metrics(prediction: Tensor, targets: Tensor) -> dict[str, float]:
    num_classes = prediction.shape[1]
    predicted = prediction.argmax(dim=1)
    probabilities = torch.softmax(prediction.double(), dim=1)
    metrics = {
        "accuracy": float(
            multiclass_accuracy(predicted, targets, num_classes=num_classes, average="micro")
        ),
        "macro_f1": float(
            multiclass_f1_score(predicted, targets, num_classes=num_classes, average="macro")
        ),
    }
    # one-vs-rest ranking scores over the classes that have positives and negatives here
    classes = [1] if num_classes == 2 else range(num_classes)
    auroc, auprc = [], []
    for c in classes:
        positive = (targets == c).long()
        if 0 < int(positive.sum()) < len(positive):
            auroc.append(float(binary_auroc(probabilities[:, c], positive)))
            auprc.append(float(binary_average_precision(probabilities[:, c], positive)))
    metrics["auroc"] = sum(auroc) / len(auroc) if auroc else math.nan
    metrics["auprc"] = sum(auprc) / len(auprc) if auprc else math.nan
    return metrics


def _multilabel_metrics(prediction: Tensor, targets: Tensor) -> dict[str, float]:
    k = prediction.shape[1]
    probabilities = torch.sigmoid(prediction.double())
    truth = targets.long()
    if k == 1:  # torchmetrics' multilabel functions need two labels; one label is binary
        accuracy = float(binary_accuracy(probabilities[:, 0], truth[:, 0]))
        metrics = {
            "accuracy": accuracy,
            "exact_match": accuracy,
            "macro_f1": float(binary_f1_score(probabilities[:, 0], truth[:, 0])),
        }
    else:
        metrics = {
            "accuracy": float(
                multilabel_accuracy(probabilities, truth, num_labels=k, average="macro")
            ),
            "exact_match": float(multilabel_exact_match(probabilities, truth, num_labels=k)),
            "macro_f1": float(
                multilabel_f1_score(probabilities, truth, num_labels=k, average="macro")
            ),
        }
    auroc, auprc = [], []
    for j in range(k):
        column = truth[:, j]
        metrics[f"f1@{j}"] = float(binary_f1_score(probabilities[:, j], column))
        if 0 < int(column.sum()) < len(column):
            auroc.append(float(binary_auroc(probabilities[:, j], column)))
            auprc.append(float(binary_average_precision(probabilities[:, j], column)))
    metrics["auroc"] = sum(auroc) / len(auroc) if auroc else math.nan
    metrics["auprc"] = sum(auprc) / len(auprc) if auprc else math.nan
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
    return {
        "acc2_nonzero": _accuracy(pred[nonzero] > 0, true[nonzero] > 0),
        "f1_nonzero": _weighted_f1(pred[nonzero] > 0, true[nonzero] > 0),
        "acc2_with_zero": _accuracy(pred >= 0, true >= 0),
        "f1_with_zero": _weighted_f1(pred >= 0, true >= 0),
        "acc7": _accuracy(pred.clamp(-3, 3).round(), true.clamp(-3, 3).round()),
    }


def _accuracy(predicted: Tensor, targets: Tensor) -> float:
    return float((predicted == targets).double().mean()) if len(targets) else math.nan


def _weighted_f1(predicted: Tensor, targets: Tensor) -> float:
    """F1 per class weighted by the class's share of ``targets`` (binary boolean inputs)."""
    if not len(targets):
        return math.nan
    return float(
        multiclass_f1_score(predicted.long(), targets.long(), num_classes=2, average="weighted")
    )


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``loss=0.1234, accuracy=0.9000`` (one line)."""
    return ", ".join(f"{k}={v:.4f}" for k, v in metrics.items())
