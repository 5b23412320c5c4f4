"""TaskData checks labels and targets up front, naming the split."""

import pytest
import torch

from interfuse import MultimodalModel
from interfuse.data.batching import TensorData
from interfuse.data.task import TaskData


def task(targets, kind="classification", num_classes=2):
    split = TensorData({"a": torch.zeros(len(targets), 3)}, targets)
    return TaskData(
        "t",
        kind,
        split,
        split,
        split,
        {"a": {"type": "mlp", "input_dim": 3}},
        num_classes=num_classes if kind == "classification" else None,
    )


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (torch.tensor([0, 1, 2]), r"labels must lie in 0..1, found values from 0 to 2"),
        (torch.tensor([-1, 1]), "labels must lie in 0..1"),
        (torch.tensor([0.0, 1.0]), "labels must be integer class indices"),
    ],
)
def test_classification_labels_are_checked(targets, message):
    with pytest.raises(ValueError, match=f"train {message}"):
        task(targets)


def test_regression_targets_must_be_finite():
    with pytest.raises(ValueError, match="non-finite"):
        task(torch.tensor([0.5, float("nan")]), kind="regression")
    assert task(torch.tensor([0.5, -2.0]), kind="regression").num_outputs == 1


def test_input_dtype_mismatch_is_named():
    model = MultimodalModel({"a": torch.nn.Linear(3, 2)}, encoder_dims={"a": 2}, rank=2)
    with pytest.raises(ValueError, match=r"modality 'a': input dtype torch.float64 differs"):
        model({"a": torch.zeros(4, 3, dtype=torch.float64)})
