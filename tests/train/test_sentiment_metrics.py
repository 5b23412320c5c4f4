"""Sentiment metrics (CMU-MOSI/MOSEI convention) and metric-set selection."""

import math

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from interfuse.metrics import compute_metrics, sentiment_metrics


def test_sentiment_metrics_by_hand():
    labels = torch.tensor([2.0, -1.0, 0.0, 0.5, -2.5, 3.0])
    preds = torch.tensor([1.0, 0.5, -0.2, 2.5, -2.6, 3.7])
    m = sentiment_metrics(preds, labels)
    # non-zero: 5 samples (label 0 dropped); signs agree except sample 1 (-1 vs 0.5)
    assert m["acc2_nonzero"] == pytest.approx(4 / 5)
    # with zero: label >= 0 vs pred >= 0; disagree on samples 1 and 2 (0 >= 0 but -0.2 < 0)
    assert m["acc2_with_zero"] == pytest.approx(4 / 6)
    # weighted F1, non-zero: positives {0,3,5} all found, plus false positive 1;
    # negatives {1,4}: tp 1, fn 1 -> F1_pos = 6/7, F1_neg = 2/3, weights 3/5 and 2/5
    assert m["f1_nonzero"] == pytest.approx(3 / 5 * 6 / 7 + 2 / 5 * 2 / 3)
    # acc7: round half to even and clip: labels [2,-1,0,0,-2,3], preds [1,0,-0,2,-3,3]
    assert m["acc7"] == pytest.approx(2 / 6)


def test_sentiment_metrics_edge_cases():
    m = sentiment_metrics(torch.tensor([0.3, -0.1]), torch.tensor([0.0, 0.0]))
    assert math.isnan(m["acc2_nonzero"]) and math.isnan(m["f1_nonzero"])
    assert m["acc2_with_zero"] == pytest.approx(0.5)


def test_metric_sets():
    preds, labels = torch.randn(8, 1), torch.randn(8)
    default = compute_metrics("regression", preds, labels)
    assert set(default) == {"loss", "mae", "rmse", "r2", "pearson"}
    sentiment = compute_metrics("regression", preds, labels, "sentiment")
    assert set(sentiment) == set(default) | {
        "acc2_nonzero",
        "f1_nonzero",
        "acc2_with_zero",
        "f1_with_zero",
        "acc7",
    }
    with pytest.raises(ValueError, match="regression"):
        compute_metrics(
            "classification", torch.randn(4, 2), torch.tensor([0, 1, 0, 1]), "sentiment"
        )
    with pytest.raises(ValueError, match="unknown metric set"):
        compute_metrics("regression", preds, labels, "nope")


def test_sentiment_metrics_match_sklearn_on_fixed_predictions():
    gen = np.random.default_rng(4)
    labels = np.round(gen.uniform(-3, 3, 80) * 2) / 2  # many exact zeros and halves
    labels[:10] = 0.0
    preds = gen.normal(0, 1.5, 80)
    preds[10:15] = 0.0  # zero predictions count as non-negative
    m = compute_metrics(
        "regression", torch.tensor(preds)[:, None], torch.tensor(labels), "sentiment"
    )
    nz = labels != 0
    assert m["acc2_nonzero"] == pytest.approx(skm.accuracy_score(labels[nz] > 0, preds[nz] > 0))
    assert m["f1_nonzero"] == pytest.approx(
        skm.f1_score(labels[nz] > 0, preds[nz] > 0, average="weighted")
    )
    assert m["acc2_with_zero"] == pytest.approx(skm.accuracy_score(labels >= 0, preds >= 0))
    assert m["f1_with_zero"] == pytest.approx(
        skm.f1_score(labels >= 0, preds >= 0, average="weighted")
    )
    seven = np.round(np.clip(labels, -3, 3)), np.round(np.clip(preds, -3, 3))
    assert m["acc7"] == pytest.approx(skm.accuracy_score(*seven))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(labels, preds))


def test_sentiment_metrics_count_a_zero_prediction_as_negative_for_nonzero_labels():
    # every label non-zero; the prediction 0.0 is not > 0, so it predicts the negative class
    m = sentiment_metrics(torch.zeros(3), torch.tensor([1.0, -1.0, -2.0]))
    assert m["acc2_nonzero"] == pytest.approx(2 / 3)
    # positive class: F1 0 (weight 1/3); negative class: precision 2/3, recall 1, F1 0.8
    assert m["f1_nonzero"] == pytest.approx(2 / 3 * 0.8)
    assert m["acc2_with_zero"] == pytest.approx(1 / 3)  # with zero: 0.0 >= 0 is positive
