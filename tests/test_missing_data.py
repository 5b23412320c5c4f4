"""Genuinely missing modalities in the data (NaN rows or masks), end to end: loading, training,
evaluation, reports, predict and explain."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from interfuse import load_run
from interfuse.cli import main
from interfuse.data import from_arrays, load_npz_dataset
from interfuse.data.batching import split_indices
from interfuse.train import TrainConfig, fit

N = 1500


def arrays(seed=0):
    """Two informative modalities and a noise one; label from a and b."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, N)
    a = rng.normal(size=(N, 3))
    a[:, 0] += 1.5 * y
    b = rng.normal(size=(N, 3))
    b[:, 0] += 1.5 * y
    c = rng.normal(size=(N, 3))
    return {"a": a, "b": b, "c": c}, y


def with_missing(full, fraction=0.2, seed=1):
    """Each modality's row set to NaN for ``fraction`` of the samples, independently."""
    rng = np.random.default_rng(seed)
    out = {}
    for m, x in full.items():
        x = x.copy()
        x[rng.random(len(x)) < fraction] = np.nan
        out[m] = x
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("missing")
    full, y = arrays()
    missing = with_missing(full)
    config = TrainConfig(epochs=8, rank=4, seed=0)
    fit(from_arrays(missing, y, seed=0), config, root / "missing", progress=False)
    fit(
        from_arrays(full, y, seed=0),
        config.replace(modality_dropout=0.2),
        root / "dropout",
        progress=False,
    )
    return root, full, missing, y


def test_missing_rows_are_masked_and_left_out_of_the_statistics():
    full, y = arrays()
    missing = with_missing(full)
    task = from_arrays(missing, y, seed=0)
    train_rows = split_indices(N, seed=0, stratify=y)[0]
    for m in full:
        present = ~np.isnan(missing[m][train_rows, 0])
        assert task.train.present_counts()[m] == present.sum()
        np.testing.assert_allclose(
            task.preprocessor.scalers[m].mean, full[m][train_rows][present].mean(axis=0)
        )
        assert bool(np.isfinite(task.train.inputs[m].numpy()).all())  # missing rows are 0


@pytest.mark.parametrize("dtype", [np.int32, np.uint32, np.int64, np.int16, np.float32])
def test_a_missing_sample_leaves_the_values_of_the_others_exact(dtype):
    # int32 values were cast to float32 once a sample was marked missing: 1_700_000_000 + 7 k
    # collapsed to steps of 128 and the standardised values moved by up to 0.75
    n = 40
    big = np.dtype(dtype).itemsize >= 4
    x = ((1_700_000_000 if big else 0) + 7 * np.arange(n)).astype(dtype)[:, None]
    y = np.arange(n) % 2
    mask = np.ones(n, dtype=bool)
    train = split_indices(n, seed=0, stratify=y)[0]
    mask[train[0]] = False
    task = from_arrays({"t": x}, y, masks={"t": mask})
    present = x[train][mask[train]].astype(np.float64)
    scaler = task.preprocessor.scalers["t"]
    np.testing.assert_allclose(scaler.mean, present.mean(axis=0), rtol=1e-15)
    np.testing.assert_allclose(scaler.std, present.std(axis=0), rtol=1e-9)
    expected = ((present - present.mean(axis=0)) / present.std(axis=0)).astype(np.float32)
    got = task.train.inputs["t"][task.train.masks["t"]].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_integer_masks_in_data_other_than_0_and_1_are_refused():
    """A '<m>__mask' of integers other than 0/1 was read as bools (2 or -1: present), silently;
    predict refuses such masks, so the same file trained and then failed to predict."""
    n = 40
    x = np.arange(2 * n, dtype=float).reshape(n, 2)
    y = np.arange(n) % 2
    with pytest.raises(ValueError, match=r"mask of modality 't' must hold one 0/1 or bool"):
        from_arrays({"t": x}, y, masks={"t": np.arange(n) % 3})


def test_training_with_missing_data_matches_complete_data_with_dropout(runs):
    """The same split, judged on the same test samples (complete, then with the missing rows)."""
    root, full, missing, y = runs
    test = split_indices(N, seed=0, stratify=y)[2]
    with_gaps, with_dropout = load_run(root / "missing"), load_run(root / "dropout")
    for data in (full, missing):
        rows = {m: x[test] for m, x in data.items()}
        a = with_gaps.evaluate(rows, y[test])["accuracy"]
        b = with_dropout.evaluate(rows, y[test])["accuracy"]
        assert a > 0.75 and abs(a - b) <= 0.02, (a, b)


def test_report_counts_samples_per_modality(runs):
    root, *_ = runs
    result = load_run(root / "missing").result
    present = result.data["present"]["train"]
    assert all(0.7 < present[m] / result.data["split_sizes"]["train"] < 0.9 for m in present)


def test_npz_with_masks_and_nan_rows_trains_predicts_and_explains(tmp_path):
    full, y = arrays()
    x = with_missing({"a": full["a"]})["a"]
    mask_b = np.random.default_rng(2).random(N) > 0.2
    path = tmp_path / "gaps.npz"
    np.savez(path, a=x, b=full["b"], b__mask=mask_b, c=full["c"], labels=y)
    task = load_npz_dataset(path)
    assert task.train.present_counts()["b"] < len(task.train)
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--dataset", "npz", "--data-path", path, "--epochs", "2", "--quiet"]
    done = runner.invoke(main, [str(a) for a in [*args, "--rank", "2", "--out", out]])
    assert done.exit_code == 0, done.output
    assert "Samples with each modality" in (out / "report.md").read_text()
    new = tmp_path / "new.npz"
    rows = x[:10].copy()
    rows[:3] = np.nan
    np.savez(new, a=rows, c=full["c"][:10])
    done = runner.invoke(main, ["predict", str(out), str(new)])
    assert done.exit_code == 0, done.output
    assert "b (10 of 10)" in done.output and "a (" in done.output
    done = runner.invoke(main, ["explain", str(out), "--quiet", "--emap-samples", "16"])
    assert done.exit_code == 0, done.output
    explanation = json.loads((out / "explain.json").read_text())
    assert explanation["explanations"]["emap"]["details"]["n_samples"] == 16


def test_explain_data_path_reads_missing_rows_and_masks_like_training(tmp_path):
    """run.load_data(FILE) (explain --data-path) passed NaN rows on as present samples, failing
    with 'input has ... non-finite values in present samples', and refused '<m>__mask' arrays
    as unknown modalities, for the very file the run was trained on."""
    full, y = arrays()
    x = with_missing({"a": full["a"]})["a"]
    mask_b = np.random.default_rng(2).random(N) > 0.2
    path = tmp_path / "gaps.npz"
    np.savez(path, a=x, b=full["b"], b__mask=mask_b, labels=y)
    out = tmp_path / "run"
    fit(load_npz_dataset(path), TrainConfig(epochs=1, rank=2), out, progress=False)
    run = load_run(out)
    data = run.load_data(path)
    present_a = ~np.isnan(x).all(axis=1)
    assert data.test.masks["a"].numpy().tolist() == present_a.tolist()
    assert data.test.masks["b"].numpy().tolist() == mask_b.tolist()
    expected = run.predict({"a": x, "b": full["b"]}, masks={"b": mask_b}).outputs
    with torch.no_grad():
        outputs = run.model(data.test.inputs, masks=data.test.masks).prediction
    torch.testing.assert_close(outputs, expected)
    done = CliRunner().invoke(
        main, ["explain", str(out), "--data-path", str(path), "--quiet", "--emap-samples", "8"]
    )
    assert done.exit_code == 0, done.output


def test_cli_predict_reads_modality_masks(tmp_path):
    """A predict file with '<m>__mask' (the training files' convention) was refused as
    "unknown modalities ['b__mask']"."""
    full, y = arrays()
    out = tmp_path / "run"
    fit(from_arrays(full, y, seed=0), TrainConfig(epochs=1, rank=2), out, progress=False)
    rows = {m: x[:10] for m, x in full.items()}
    mask = np.arange(10) >= 4
    path = tmp_path / "new.npz"
    np.savez(path, **rows, b__mask=mask, labels=y[:10])
    done = CliRunner().invoke(main, ["predict", str(out), str(path)])
    assert done.exit_code == 0, done.output
    assert "b (4 of 10)" in done.output and "metrics on DATA's labels" in done.output
    expected = load_run(out).predict(rows, masks={"b": mask}).labels
    with (out / "predictions.csv").open() as f:
        assert [row["prediction"] for row in csv.DictReader(f)] == expected
    np.savez(path, **rows, b__mask=mask[:3])
    done = CliRunner().invoke(main, ["predict", str(out), str(path)])
    assert done.exit_code == 1 and "new.npz: mask of modality 'b'" in done.output, done.output


def test_a_model_without_missing_path_refuses_missing_data(tmp_path):
    full, y = arrays()
    task = from_arrays(with_missing(full), y, seed=0)
    with pytest.raises(ValueError, match="no missing-modality path"):
        fit(task, TrainConfig(model="late", epochs=1), tmp_path / "late", progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["a"].__setitem__((0, 0), np.nan), "partial rows are not allowed"),
        (lambda d: d["a"].__setitem__(slice(None), np.nan), "no sample has modality 'a'"),
    ],
)
def test_bad_missing_data_is_named(change, message):
    full, y = arrays()
    data = {m: x.copy() for m, x in full.items()}
    change(data)
    with pytest.raises(ValueError, match=message):
        from_arrays(data, y, seed=0)


def test_bad_masks_are_named():
    full, y = arrays()
    with pytest.raises(ValueError, match="mask of modality 'a' must hold one"):
        from_arrays(full, y, masks={"a": np.ones(3, bool)})
    with pytest.raises(ValueError, match=r"modalities .*\['z'\]"):
        from_arrays(full, y, masks={"z": np.ones(N, bool)})


@pytest.mark.parametrize("task", ["multilabel", "regression"])
def test_masks_with_labels_in_columns(task):
    """A mask holds one value per sample; it was compared with the labels' shape, so (N, C)
    multilabel labels refused every valid (N,) mask (regression targets in a column: a guard)."""
    full, y = arrays()
    if task == "multilabel":
        labels = np.stack([y, 1 - y], axis=1)
    else:
        labels = y[:, None].astype(np.float32)
    present = np.random.default_rng(1).random(N) < 0.8
    data = from_arrays(full, labels, masks={"a": present}, task=task, seed=0)
    assert data.task == task
    splits = (data.train, data.val, data.test)
    assert sum(len(s) for s in splits) == N
    assert sum(int((~s.masks["a"]).sum()) for s in splits) == int((~present).sum())


@pytest.mark.parametrize("values", [(-1, 1), (1, 2), (0, 255)])
def test_integer_masks_other_than_0_1_are_refused(tmp_path, values):
    """A mask coded -1/1 (as binary labels often are) or 1/2 was cast to bool, every sample
    present: the missing samples silently counted as present, in training files and predict."""
    full, y = arrays()
    mask = np.where(np.arange(N) % 4 == 0, *values[::-1]).astype(np.int64)
    with pytest.raises(ValueError, match=r"mask of modality 'a' must hold .*0/1"):
        from_arrays(full, y, masks={"a": mask}, seed=0)
    out = tmp_path / "run"
    fit(from_arrays(full, y, seed=0), TrainConfig(epochs=1, rank=2), out, progress=False)
    run = load_run(out)
    rows = {m: x[:8] for m, x in full.items()}
    with pytest.raises(ValueError, match=r"mask of modality 'a' must hold .*0/1"):
        run.predict(rows, masks={"a": mask[:8]})
    np.savez(tmp_path / "new.npz", **rows, a__mask=mask[:8])
    done = CliRunner().invoke(main, ["predict", str(out), str(tmp_path / "new.npz")])
    assert done.exit_code == 1 and "mask of modality 'a' must hold" in done.output, done.output
    assert "0/1" in done.output
