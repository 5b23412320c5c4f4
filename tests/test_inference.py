"""Prediction with any subset of modalities, from Python and from the command line."""

import csv

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from interfuse import MultimodalModel
from interfuse.cli import main
from interfuse.inference import predict


def trained_model():
    torch.manual_seed(0)
    model = MultimodalModel(
        {m: torch.nn.Linear(3, 4) for m in ("a", "b")},
        encoder_dims={"a": 4, "b": 4},
        rank=2,
        num_outputs=2,
    )
    model({m: torch.randn(16, 3) for m in ("a", "b")})  # running statistics
    return model


def test_missing_by_absence_nan_rows_and_masks():
    model = trained_model()
    a = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    a[1] = np.nan
    result = predict(model, {"a": a}, masks={"a": np.array([1, 1, 1, 0, 1], dtype=bool)})
    assert result.outputs.shape == (5, 2)
    assert result.missing["b"].all()
    assert result.missing["a"].tolist() == [False, True, False, True, False]
    assert result.missing_counts() == {"a": 2, "b": 5}
    assert result.missing_names()[1] == "a+b" and result.missing_names()[0] == "b"
    # Identical to the model's own missing-modality path.
    masks = {"a": ~result.missing["a"], "b": False}
    expected = model.eval()({"a": torch.from_numpy(np.nan_to_num(a))}, masks=masks).prediction
    torch.testing.assert_close(result.outputs, expected)


def test_bad_prediction_inputs():
    model = trained_model()
    with pytest.raises(ValueError, match=r"unknown modalities \['c'\]"):
        predict(model, {"c": np.zeros((2, 3))})
    with pytest.raises(ValueError, match="different numbers of samples"):
        predict(model, {"a": np.zeros((2, 3)), "b": np.zeros((3, 3))})
    with pytest.raises(ValueError, match="no modality given"):
        predict(model, {})


def test_bad_masks_are_refused_not_ignored():
    """A mask under a misspelt modality name was ignored and a float or string mask read as
    True: every sample counted as present, silently."""
    model = trained_model()
    x = {"a": np.zeros((4, 3)), "b": np.zeros((4, 3))}
    with pytest.raises(ValueError, match=r"masks given for unknown modalities \['B'\]"):
        predict(model, x, masks={"B": np.zeros(4, dtype=bool)})
    for bad in (np.full(4, 0.5), np.array(["no"] * 4), torch.zeros(4)):
        with pytest.raises(ValueError, match="must hold bools or 0/1"):
            predict(model, x, masks={"b": bad})
    for good in (np.arange(4) < 1, (np.arange(4) < 1).astype(int), torch.arange(4) < 1):
        assert predict(model, x, masks={"b": good}).missing_counts() == {"b": 3}
    # a mask saying present for a modality without data was read as missing, silently
    only_a = {"a": np.zeros((4, 3))}
    for present in (True, np.arange(4) < 2):
        with pytest.raises(ValueError, match=r"masks\['b'\] marks samples as present"):
            predict(model, only_a, masks={"b": present})
    assert predict(model, only_a, masks={"b": False}).missing_counts() == {"b": 4}


def test_integer_masks_other_than_0_and_1_are_refused():
    """An integer mask was read as bools: 2 (or -1) counted as present, 0 as missing, so a mask
    of, say, sample indices marked sample 0 missing and every other present, silently."""
    model = trained_model()
    x = {"a": np.zeros((4, 3)), "b": np.zeros((4, 3))}
    for bad in (np.arange(4), np.array([1, 0, -1, 1]), torch.tensor([0, 1, 2, 1])):
        with pytest.raises(ValueError, match=r"mask of modality 'b' must hold bools or 0/1"):
            predict(model, x, masks={"b": bad})
    assert predict(model, x, masks={"b": np.array([1, 0, 0, 1], np.uint8)}).missing_counts() == {
        "b": 2
    }


def test_cli_predict_writes_csv(tmp_path):
    out = tmp_path / "run"
    runner = CliRunner()
    trained = runner.invoke(
        main,
        [
            "train",
            "--probs",
            "0.9,0",
            "--n",
            "300",
            "--epochs",
            "1",
            "--length",
            "40",
            "--quiet",
            "--out",
            str(out),
        ],
    )
    assert trained.exit_code == 0, trained.output
    data = tmp_path / "new.npz"
    m0 = np.zeros((4, 4, 40), dtype=np.float32)
    m0[:, 0, :] = 1.0  # all 'A'
    m0[2] = np.nan
    np.savez(data, m0=m0)
    result = runner.invoke(main, ["predict", str(out), str(data)])
    assert result.exit_code == 0, result.output
    assert "m1 (4 of 4)" in result.output and "m0 (1 of 4)" in result.output
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 4 and rows[2]["missing"] == "m0+m1" and rows[0]["missing"] == "m1"
    assert set(rows[0]) == {"sample", "prediction", "p(0)", "p(1)", "missing"}
    bad = runner.invoke(main, ["predict", str(out), str(tmp_path / "none.npz")])
    assert bad.exit_code != 0 and "not found" in bad.output


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True])
def test_predict_refuses_a_batch_size_below_one(batch_size):
    from torch import nn

    from interfuse.data.batching import TensorData
    from interfuse.inference import model_outputs

    model = MultimodalModel({"a": nn.Linear(3, 4)}, num_outputs=2, encoder_dims={"a": 4})
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        predict(model, {"a": torch.zeros(5, 3)}, batch_size=batch_size)
    data = TensorData({"a": torch.zeros(5, 3)}, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        model_outputs(model, data, batch_size=batch_size)


def test_predict_on_zero_samples_is_one_clear_error():
    """An empty array (e.g. after filtering) crashed inside torch: "cannot reshape tensor of 0
    elements" (RuntimeError, an internal error on the command line)."""
    model = trained_model()
    for inputs in ({"a": np.zeros((0, 3))}, {"a": torch.zeros(0, 3), "b": torch.zeros(0, 3)}):
        with pytest.raises(ValueError, match="0 samples"):
            predict(model, inputs)
