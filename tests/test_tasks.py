"""Task types: classification, regression and multilabel — metrics checked against scikit-learn
and scipy on fixed predictions, end-to-end training with relevance, --task and class weights."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats
from sklearn import metrics as skm

from interfuse import load_run
from interfuse.cli import main
from interfuse.data import from_arrays
from interfuse.metrics import balanced_weights, compute_metrics
from interfuse.report import render_report
from interfuse.train import TrainConfig, fit

GEN = np.random.default_rng(0)


def test_classification_metrics_match_sklearn():
    logits = torch.tensor(GEN.normal(size=(60, 3)))
    targets = torch.tensor(GEN.integers(0, 3, 60))
    m = compute_metrics("classification", logits, targets)
    predicted = logits.argmax(1).numpy()
    probabilities = torch.softmax(logits, 1).numpy()
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(targets, predicted))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(targets, predicted, average="macro"))
    assert m["loss"] == pytest.approx(skm.log_loss(targets, probabilities), rel=1e-6)
    ovr = [skm.roc_auc_score(targets == c, probabilities[:, c]) for c in range(3)]
    assert m["auroc"] == pytest.approx(np.mean(ovr), rel=1e-6)
    ap = [skm.average_precision_score(targets == c, probabilities[:, c]) for c in range(3)]
    assert m["auprc"] == pytest.approx(np.mean(ap), rel=1e-6)


@pytest.mark.parametrize("task", ["classification", "multilabel", "regression"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_metrics_of_a_non_finite_prediction_are_all_nan(task, bad):
    """All-NaN logits scored accuracy 0.5 and AUROC 0.25, and one NaN logit turned a perfect
    ranking into AUROC 0.5: only the loss was NaN. A diverged prediction has no score."""
    generator = torch.Generator().manual_seed(0)
    if task == "classification":
        targets = torch.tensor([0, 1, 0, 1, 1, 0])
        prediction = torch.randn(6, 2, generator=generator)
    elif task == "multilabel":
        targets = torch.tensor([[0, 1], [1, 0], [1, 1], [0, 0]]).float()
        prediction = torch.randn(4, 2, generator=generator)
    else:
        targets = torch.randn(6, generator=generator)
        prediction = targets[:, None].clone()
    finite = compute_metrics(task, prediction, targets)
    prediction[1, 0] = bad
    scores = compute_metrics(task, prediction, targets)
    assert set(scores) == set(finite) and all(math.isnan(v) for v in scores.values()), scores


def test_binary_ranking_metrics_are_those_of_class_one_and_undefined_for_one_class():
    logits = torch.tensor(GEN.normal(size=(40, 2)))
    targets = torch.tensor(GEN.integers(0, 2, 40))
    probabilities = torch.softmax(logits, 1)[:, 1].numpy()
    m = compute_metrics("classification", logits, targets)
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(targets, probabilities), rel=1e-6)
    ap = skm.average_precision_score(targets, probabilities)  # of class 1, not of class 0
    assert m["auprc"] == pytest.approx(ap, rel=1e-6)
    single = compute_metrics("classification", logits, torch.zeros(40, dtype=torch.long))
    assert math.isnan(single["auroc"]) and math.isnan(single["auprc"])


def test_regression_metrics_match_sklearn_and_scipy():
    prediction = torch.tensor(GEN.normal(size=(50, 1)))
    targets = torch.tensor(GEN.normal(size=50))
    m = compute_metrics("regression", prediction, targets)
    p, t = prediction.numpy().ravel(), targets.numpy()
    assert m["loss"] == pytest.approx(skm.mean_squared_error(t, p))
    assert m["mae"] == pytest.approx(skm.mean_absolute_error(t, p))
    assert m["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(t, p)))
    assert m["r2"] == pytest.approx(skm.r2_score(t, p))
    assert m["pearson"] == pytest.approx(stats.pearsonr(p, t).statistic)
    constant = compute_metrics("regression", torch.zeros(50, 1, dtype=torch.float64), targets)
    assert math.isnan(constant["pearson"]) and constant["mae"] == pytest.approx(np.abs(t).mean())


def test_multilabel_metrics_match_sklearn():
    logits = torch.tensor(GEN.normal(size=(80, 4)))
    targets = torch.tensor(GEN.integers(0, 2, (80, 4))).float()
    m = compute_metrics("multilabel", logits, targets)
    probabilities = torch.sigmoid(logits).numpy()
    predicted = (probabilities >= 0.5).astype(int)
    y = targets.numpy().astype(int)
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert m["accuracy"] == pytest.approx(np.mean(y == predicted))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, predicted, average="macro"))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probabilities, average="macro"))
    ap = skm.average_precision_score(y, probabilities, average="macro")
    assert m["auprc"] == pytest.approx(ap, rel=1e-6)
    for k in range(4):
        assert m[f"f1@{k}"] == pytest.approx(skm.f1_score(y[:, k], predicted[:, k]))
    bce = skm.log_loss(y.ravel(), probabilities.ravel())
    assert m["loss"] == pytest.approx(bce, rel=1e-6)


def test_balanced_weights():
    w = balanced_weights("classification", torch.tensor([0, 0, 0, 1]), 3)
    assert w.tolist() == pytest.approx([4 / 9, 4 / 3, 1.0])  # class 2 absent: weight 1
    y = torch.tensor([[1, 0, 0], [0, 0, 0], [0, 1, 0], [0, 1, 0]]).float()
    # label 2 never positive: weight 1
    assert balanced_weights("multilabel", y, 3).tolist() == pytest.approx([3.0, 1.0, 1.0])
    y[:, 2] = 1.0  # always positive: n_neg / n_pos = 0 would zero its loss; weight 1 too
    assert balanced_weights("multilabel", y, 3).tolist() == pytest.approx([3.0, 1.0, 1.0])


def test_multilabel_ranking_metrics_skip_labels_with_one_value():
    logits = torch.tensor(GEN.normal(size=(30, 4)))
    targets = torch.tensor(GEN.integers(0, 2, (30, 4))).float()
    targets[:, 2] = 1.0  # every sample has label 2: its AUROC is undefined
    targets[:, 3] = 0.0  # no sample has label 3: undefined too
    m = compute_metrics("multilabel", logits, targets)
    probabilities = torch.sigmoid(logits).numpy()
    auroc = [skm.roc_auc_score(targets[:, k], probabilities[:, k]) for k in range(2)]
    auprc = [skm.average_precision_score(targets[:, k], probabilities[:, k]) for k in range(2)]
    assert m["auroc"] == pytest.approx(np.mean(auroc))
    assert m["auprc"] == pytest.approx(np.mean(auprc))


def test_pearson_metrics_of_small_samples_are_defined():
    m = compute_metrics("regression", torch.tensor([[1.0], [2.0]]), torch.tensor([3.0, 5.0]))
    assert m["pearson"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(skm.r2_score([3.0, 5.0], [1.0, 2.0]))  # two samples suffice
    # a prediction or target whose standard deviation is exactly 1 is not "constant"
    for pred, true in (([0.0, 1.0, 2.0], [0.0, 1.0, 3.0]), ([0.0, 1.0, 3.0], [0.0, 1.0, 2.0])):
        m = compute_metrics("regression", torch.tensor(pred)[:, None], torch.tensor(true))
        assert m["pearson"] == pytest.approx(stats.pearsonr(pred, true).statistic)
    assert balanced_weights("regression", torch.zeros(3), 1) is None


def test_ranking_metrics_skip_classes_without_positives_or_negatives():
    logits = torch.tensor(GEN.normal(size=(30, 4)))
    targets = torch.tensor(GEN.integers(0, 2, 30))  # classes 0 and 1 only
    targets[0] = 2  # class 2 has exactly one positive: still defined; class 3 has none
    probabilities = torch.softmax(logits, 1).numpy()
    m = compute_metrics("classification", logits, targets)
    t = targets.numpy()
    auroc = [skm.roc_auc_score(t == c, probabilities[:, c]) for c in range(3)]
    ap = [skm.average_precision_score(t == c, probabilities[:, c]) for c in range(3)]
    assert m["auroc"] == pytest.approx(np.mean(auroc), rel=1e-6)
    assert m["auprc"] == pytest.approx(np.mean(ap), rel=1e-6)
    one_class = compute_metrics("classification", logits, torch.zeros(30, dtype=torch.long))
    assert math.isnan(one_class["auroc"]) and math.isnan(one_class["auprc"])


def test_multilabel_ranking_metrics_keep_a_label_with_one_positive():
    logits = torch.tensor(GEN.normal(size=(20, 2)))
    targets = torch.tensor(GEN.integers(0, 2, (20, 2))).float()
    targets[:, 1] = 0.0
    targets[3, 1] = 1.0  # label 1: exactly one positive sample
    probabilities = torch.sigmoid(logits).numpy()
    m = compute_metrics("multilabel", logits, targets)
    y = targets.numpy()
    auroc = [skm.roc_auc_score(y[:, k], probabilities[:, k]) for k in range(2)]
    assert m["auroc"] == pytest.approx(np.mean(auroc), rel=1e-6)


def test_regression_metrics_of_one_sample_are_nan_where_undefined():
    m = compute_metrics("regression", torch.tensor([[1.5]]), torch.tensor([2.0]))
    assert math.isnan(m["r2"]) and math.isnan(m["pearson"])
    assert m["mae"] == pytest.approx(0.5) and m["loss"] == pytest.approx(0.25)


def test_per_sample_loss_metrics_average_several_regression_targets():
    from interfuse.metrics import per_sample_loss

    prediction = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    losses = per_sample_loss("regression", prediction, targets)
    torch.testing.assert_close(losses, torch.tensor([2.0, 1.0, 5.0], dtype=torch.float64))


def multilabel_arrays(n=600, seed=0):
    """Label 0 from modality a, label 1 from b, label 2 from nothing (rare, noise)."""
    rng = np.random.default_rng(seed)
    a, b, c = (rng.normal(size=(n, 4)) for _ in range(3))
    labels = np.stack([a[:, 0] > 0, b[:, 0] > 0, rng.random(n) < 0.1], axis=1).astype(int)
    return {"a": a, "b": b, "c": c}, labels


def test_multilabel_trains_with_relevance_and_predicts_label_sets(tmp_path):
    inputs, labels = multilabel_arrays()
    task = from_arrays(inputs, labels, seed=0, label_names=["left", "right", "rare"])
    assert task.task == "multilabel" and task.num_outputs == 3
    config = TrainConfig(
        epochs=8, rank=2, seed=0, lr=1e-2, class_weights="balanced", modality_dropout=0.0
    )
    result = fit(task, config, tmp_path / "run", progress=False)
    test = result.metrics["test"]
    assert test["f1@0"] > 0.8 and test["f1@1"] > 0.8
    shares = result.relevance.shares
    assert shares["a"] > shares["c"] and shares["b"] > shares["c"]
    per_label = result.label_relevance
    assert set(per_label) == {"left", "right", "rare"}
    assert per_label["left"].shares["a"] > per_label["left"].shares["b"]  # label 0 comes from a
    assert per_label["right"].shares["b"] > per_label["right"].shares["a"]  # label 1 from b
    assert "Relevance per label" in render_report(result, tmp_path / "run").read_text()
    prediction = load_run(tmp_path / "run").predict({m: x[:50] for m, x in inputs.items()})
    assert prediction.probabilities.shape == (50, 3)
    on = [set(p.split("+")) for p in prediction.labels]
    for k, name in enumerate(["left", "right"]):
        assert np.mean([(name in s) == bool(labels[i, k]) for i, s in enumerate(on)]) > 0.85
    assert on == [
        {n for n, p in zip(["left", "right", "rare"], row) if p >= 0.5} or {""}
        for row in prediction.probabilities.tolist()
    ]


def test_float_labels_that_look_like_classes_warn_and_task_overrides(tmp_path):
    inputs, labels = multilabel_arrays(n=120)
    y = labels[:, 0].astype(float)
    with pytest.warns(UserWarning, match="look like|if they are classes"):
        assert from_arrays(inputs, y, seed=0).task == "regression"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert from_arrays(inputs, y, seed=0, task="classification").task == "classification"
    path = tmp_path / "floats.npz"
    np.savez(path, labels=y, **inputs)
    done = CliRunner().invoke(
        main,
        [
            "train",
            "--dataset",
            "npz",
            "--data-path",
            str(path),
            "--task",
            "classification",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert done.exit_code == 0, done.output
    assert load_run(tmp_path / "run").task == "classification"
    done = CliRunner().invoke(main, ["train", "--task", "regression", "--out", str(tmp_path / "x")])
    assert done.exit_code == 2 and "--task applies to --dataset npz" in done.output


@pytest.mark.parametrize("task", ["classification", "multilabel", "regression"])
def test_per_sample_loss_metrics_average_to_the_task_loss(task):
    from interfuse.metrics import per_sample_loss, task_loss

    n = 12
    if task == "classification":
        prediction, targets = (
            torch.tensor(GEN.normal(size=(n, 3))),
            torch.tensor(GEN.integers(0, 3, n)),
        )
    elif task == "multilabel":
        prediction = torch.tensor(GEN.normal(size=(n, 4)))
        targets = torch.tensor(GEN.integers(0, 2, (n, 4))).float()
    else:
        prediction, targets = (
            torch.tensor(GEN.normal(size=(n, 1))),
            torch.tensor(GEN.normal(size=n)),
        )
    losses = per_sample_loss(task, prediction, targets)
    assert losses.shape == (n,)
    assert float(losses.mean()) == pytest.approx(
        float(task_loss(task, prediction.double(), targets))
    )


def test_sentiment_acc7_metrics_clip_predictions_to_the_scale():
    from interfuse.metrics import sentiment_metrics

    # predictions and labels are both clipped to [-3, 3], at both ends
    m = sentiment_metrics(
        torch.tensor([3.8, -3.6, 0.4, 3.0, -3.0]), torch.tensor([3.0, -3.0, 1.0, 3.6, -3.6])
    )
    assert m["acc7"] == pytest.approx(4 / 5)


@pytest.mark.parametrize("task", ["classification", "multilabel"])
def test_weighted_per_sample_loss_averages_to_the_weighted_task_loss(task):
    from interfuse.metrics import per_sample_loss, task_loss

    logits = torch.tensor(GEN.normal(size=(40, 3)))
    if task == "classification":
        targets = torch.tensor(GEN.choice(3, 40, p=[0.7, 0.2, 0.1]))
    else:
        targets = torch.tensor(GEN.random((40, 3)) < [0.1, 0.5, 0.8]).float()
    weight = balanced_weights(task, targets, 3).double()
    per_sample = per_sample_loss(task, logits, targets, weight=weight)
    assert per_sample.shape == (40,)
    torch.testing.assert_close(per_sample.mean(), task_loss(task, logits, targets, weight))
    unweighted = per_sample_loss(task, logits, targets)
    torch.testing.assert_close(unweighted.mean(), task_loss(task, logits, targets))
    assert not torch.allclose(per_sample, unweighted)


def test_multilabel_metrics_of_a_single_label_match_sklearn():
    # TaskData allows a multilabel task with one label (num_classes >= 1); torchmetrics'
    # multilabel functions need two, so its metrics once failed with their ValueError
    logits = torch.tensor(GEN.normal(size=(40, 1)))
    targets = torch.tensor(GEN.integers(0, 2, (40, 1))).float()
    m = compute_metrics("multilabel", logits, targets)
    probabilities = torch.sigmoid(logits).numpy()[:, 0]
    predicted = (probabilities >= 0.5).astype(int)
    y = targets.numpy()[:, 0].astype(int)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert m["exact_match"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, predicted))
    assert m["f1@0"] == pytest.approx(skm.f1_score(y, predicted))
    assert m["auroc"] == pytest.approx(skm.roc_auc_score(y, probabilities), rel=1e-6)
    assert m["auprc"] == pytest.approx(skm.average_precision_score(y, probabilities), rel=1e-6)


def test_regression_metrics_r2_of_constant_targets_is_nan():
    # R² = 1 − SS_res / SS_tot is undefined when SS_tot = 0 (scikit-learn says so too, and
    # without force_finite gives -inf or NaN); torchmetrics reports 0 or 1 instead
    targets = torch.full((5,), 2.0, dtype=torch.float64)
    for prediction in (torch.tensor([[0.0], [1.0], [2.0], [3.0], [5.0]]), targets[:, None]):
        m = compute_metrics("regression", prediction.double(), targets)
        assert math.isnan(m["r2"]) and math.isnan(m["pearson"])
