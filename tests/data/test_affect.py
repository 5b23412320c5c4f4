"""MultiBench affect files (MOSI, MOSEI, MUStARD, UR-FUNNY): safe loading, checks, training."""

import json
import pickle

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from interfuse.cli import main
from interfuse.data.affect import AFFECT_DATASETS, load_affect
from interfuse.data.arrays import sequence_lengths
from interfuse.data.registry import load_dataset
from interfuse.train import TrainConfig
from interfuse.train.runner import fit

SIZES = {"train": 24, "valid": 8, "test": 8}
STEPS = 6


def affect_split(rng, n, dims, regression):
    """Random front zero-padded sequences in the MultiBench layout; sample 0 is all zeros."""
    lengths = rng.integers(1, STEPS + 1, n)
    lengths[0] = 0
    data_rows = np.arange(STEPS)[None, :] >= (STEPS - lengths)[:, None]
    split = {}
    for m, d in dims.items():
        x = rng.normal(size=(n, STEPS, d)).astype(np.float32)
        x[~data_rows] = 0.0
        split[m] = x
    if regression:
        labels = np.round(rng.uniform(-3, 3, (n, 1)), 1)
        labels[1] = 0.0
    else:
        labels = rng.integers(0, 2, (n, 1)).astype(np.float64)
        labels[:2] = [[0.0], [1.0]]
    split["labels"] = labels
    split["id"] = np.array([f"clip{i}" for i in range(n)], dtype=object)
    return split


def affect_data(name, seed=0):
    spec = AFFECT_DATASETS[name]
    rng = np.random.default_rng(seed)
    return {s: affect_split(rng, n, spec.dims, spec.task == "regression") for s, n in SIZES.items()}


def write_pickle(path, data):
    path.write_bytes(pickle.dumps(data, protocol=4))
    return path


@pytest.mark.parametrize("name", list(AFFECT_DATASETS))
def test_load_train_and_write_results(tmp_path, name):
    path = write_pickle(tmp_path / f"{name}.pkl", affect_data(name))
    task = load_dataset(name, path=path, hidden=8, output_dim=4)
    spec = AFFECT_DATASETS[name]
    assert task.modalities == ["vision", "audio", "text"]
    assert {m: e["input_dim"] for m, e in task.encoders.items()} == spec.dims
    assert {e["type"] for e in task.encoders.values()} == {"sequence_gru"}
    assert (len(task.train), len(task.val), len(task.test)) == (24, 8, 8)
    assert task.task == spec.task
    config = TrainConfig(epochs=1, batch_size=8, rank=2, seed=0)
    results = fit(task, config, tmp_path / "run", progress=False)
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(on_disk["relevance"]["shares"]) == {
        "vision",
        "audio",
        "text",
        "vision*audio",
        "vision*text",
        "audio*text",
    }
    test = results.metrics["test"]
    if spec.task == "regression":
        assert task.metrics == "sentiment"
        assert {"mae", "pearson", "acc2_nonzero", "f1_with_zero", "acc7"} <= set(test)
    else:
        assert task.num_classes == 2 and task.class_names == list(spec.class_names)
        assert {"accuracy", "macro_f1"} <= set(test)


def test_pickle_npz_and_folder_give_the_same_task(tmp_path):
    data = affect_data("mosi")
    from_pickle = load_affect("mosi", write_pickle(tmp_path / "mosi.pkl", data))
    npz = tmp_path / "mosi.npz"
    np.savez(
        npz, **{f"{s}/{k}": v for s, split in data.items() for k, v in split.items() if k != "id"}
    )
    folder = tmp_path / "mosi"
    folder.mkdir()
    for s, split in data.items():
        np.savez(folder / f"{s}.npz", **{k: v for k, v in split.items() if k != "id"})
    for other in (load_affect("mosi", npz), load_affect("mosi", folder)):
        for split in ("train", "val", "test"):
            a, b = getattr(from_pickle, split), getattr(other, split)
            np.testing.assert_array_equal(a.targets.numpy(), b.targets.numpy())
            for m in a.inputs:
                np.testing.assert_array_equal(a.inputs[m].numpy(), b.inputs[m].numpy())


def test_standardisation_keeps_padding_and_uses_train_only(tmp_path):
    data = affect_data("mosi")
    data["train"]["audio"] *= 50.0
    task = load_affect("mosi", write_pickle(tmp_path / "mosi.pkl", data))
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        for m in ("vision", "audio", "text"):
            x = getattr(task, split).inputs[m].numpy()
            np.testing.assert_array_equal(sequence_lengths(x), sequence_lengths(data[key][m]))
    audio = task.train.inputs["audio"].numpy()
    rows = audio[np.arange(STEPS)[None] >= STEPS - sequence_lengths(audio)[:, None]]
    np.testing.assert_allclose(rows.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(rows.std(axis=0), 1.0, atol=1e-4)
    assert np.abs(task.val.inputs["audio"].numpy()).mean() < 0.1  # val scaled by train stats


def test_wrong_feature_size_names_split_modality_and_shape(tmp_path):
    path = write_pickle(tmp_path / "mosei.pkl", affect_data("mosei"))
    with pytest.raises(ValueError) as info:
        load_affect("mosi", path)
    message = str(info.value)
    assert "split 'train'" in message and "modality 'vision'" in message
    assert "(24, 6, 35)" in message and "(N, T, 20)" in message and "match mosei" in message


def test_missing_pieces_are_named(tmp_path):
    data = affect_data("mosi")
    del data["valid"]["audio"]
    with pytest.raises(ValueError, match="split 'val' has no 'audio' array"):
        load_affect("mosi", write_pickle(tmp_path / "a.pkl", data))
    data = affect_data("mosi")
    del data["test"]
    with pytest.raises(ValueError, match="no 'test' split"):
        load_affect("mosi", write_pickle(tmp_path / "b.pkl", data))
    with pytest.raises(FileNotFoundError, match="README"):
        load_affect("mosi", tmp_path / "absent.pkl")


def test_labels_are_checked_and_binarised(tmp_path):
    data = affect_data("mosi")
    data["train"]["labels"][3] = 4.0
    with pytest.raises(ValueError, match=r"split 'train'.*\[-3, 3\]"):
        load_affect("mosi", write_pickle(tmp_path / "a.pkl", data))
    data = affect_data("mosi")
    data["test"]["labels"] = data["test"]["labels"][:5]
    with pytest.raises(ValueError, match="split 'test'.*one numeric label per sample"):
        load_affect("mosi", write_pickle(tmp_path / "b.pkl", data))
    data = affect_data("mustard")
    for split in data.values():
        split["labels"] = np.where(split["labels"] > 0, 1.0, -1.0)  # -1/1 encoding
    task = load_affect("mustard", write_pickle(tmp_path / "c.pkl", data))
    expected = (data["train"]["labels"].ravel() > 0).astype(np.int64)
    np.testing.assert_array_equal(task.train.targets.numpy(), expected)


def test_non_finite_values_become_zero_and_are_counted(tmp_path):
    data = affect_data("mosi")
    data["train"]["audio"][2, -1, 0] = -np.inf
    data["test"]["audio"][3, -1, 1] = np.nan
    task = load_affect("mosi", write_pickle(tmp_path / "a.pkl", data), standardize=False)
    assert task.info["nonfinite_replaced"] == {"audio": 2}
    assert task.train.inputs["audio"][2, -1, 0] == 0.0


def test_malicious_affect_pickle_is_refused(tmp_path):
    import os

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    data = affect_data("mosi")
    data["train"]["id"] = Payload()
    path = write_pickle(tmp_path / "evil.pkl", data)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        load_dataset("mosi", path=path)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["mosi", "mustard"])
def test_a_run_predicts_raw_affect_features_as_training_saw_them(tmp_path, name):
    """Features far from standardised (×10 + 100, padding kept at 0): predictions from the raw
    test arrays through the run folder equal the model's outputs on the preprocessed split."""
    import torch

    from interfuse import load_run
    from interfuse.inference import model_outputs

    data = affect_data(name, seed=1)
    for split in data.values():
        for m in ("vision", "audio", "text"):
            split[m] = np.where(split[m] != 0, split[m] * 10 + 100, 0).astype(np.float32)
    task = load_dataset(name, path=write_pickle(tmp_path / f"{name}.pkl", data))
    fit(task, TrainConfig(epochs=1, batch_size=8, rank=2, seed=0), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    raw = {m: data["test"][m] for m in ("vision", "audio", "text")}
    expected = model_outputs(run.model, task.test)
    torch.testing.assert_close(run.predict(raw).outputs, expected)
    metrics = run.evaluate(
        raw, data["test"]["labels"].reshape(-1) if name == "mosi" else task.test.targets.numpy()
    )
    assert metrics["loss"] == pytest.approx(run.result.metrics["test"]["loss"], rel=1e-5)


def test_a_run_predicts_raw_affect_rows_with_non_finite_values_as_training_saw_them(tmp_path):
    """Training turns the files' NaN and -inf into 0, but the run did not record it: predict on
    the data set's own raw test arrays failed ("modality 'audio': 1 values are infinite"), and a
    sample entirely NaN was taken as missing where training had seen zeros."""
    from interfuse import load_run
    from interfuse.inference import model_outputs

    data = affect_data("mosi", seed=1)
    data["train"]["audio"][2, -1, 0] = -np.inf
    data["test"]["audio"][3, -1, 1] = -np.inf
    data["test"]["vision"][4, -1, :] = np.nan
    data["test"]["text"][5] = np.nan
    task = load_dataset("mosi", path=write_pickle(tmp_path / "mosi.pkl", data))
    fit(task, TrainConfig(epochs=1, batch_size=8, rank=2, seed=0), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    raw = {m: data["test"][m] for m in ("vision", "audio", "text")}
    prediction = run.predict(raw)
    torch.testing.assert_close(prediction.outputs, model_outputs(run.model, task.test))
    assert prediction.missing_counts() == {}


def test_a_run_evaluates_raw_minus_one_one_labels_as_training_read_them(tmp_path):
    """MUStARD/UR-FUNNY labels -1/1 train (class 1: label > 0), but the run did not record the
    binarisation: evaluating on the data set's own raw labels failed with "labels ['-1'] were
    never seen in training"."""
    from interfuse import load_run

    data = affect_data("mustard", seed=1)
    for split in data.values():
        split["labels"] = np.where(split["labels"] > 0, 1.0, -1.0)
    task = load_dataset("mustard", path=write_pickle(tmp_path / "mustard.pkl", data))
    fit(task, TrainConfig(epochs=1, batch_size=8, rank=2, seed=0), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    raw = {m: data["test"][m] for m in ("vision", "audio", "text")}
    metrics = run.evaluate(raw, data["test"]["labels"])
    assert metrics["loss"] == pytest.approx(run.result.metrics["test"]["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="labels contain NaN or infinite values"):
        run.evaluate(raw, np.full(len(data["test"]["labels"]), np.nan))


def test_convert_to_a_dataset_folder_keeps_sequences_and_padding(tmp_path):
    """interfuse convert FILE DIR --dataset mosi: the folder trains on what the pickle gives."""
    source = write_pickle(tmp_path / "mosi.pkl", affect_data("mosi"))
    dest = tmp_path / "mosi-lazy"
    result = CliRunner().invoke(main, ["convert", str(source), str(dest), "--dataset", "mosi"])
    assert result.exit_code == 0, result.output
    lazy, direct = load_dataset("lazy", path=dest), load_dataset("mosi", path=source)
    assert lazy.task == direct.task == "regression" and lazy.metrics == direct.metrics
    inputs, targets, _ = lazy.train[torch.arange(len(lazy.train))]
    for m, x in direct.train.inputs.items():
        assert torch.allclose(inputs[m], x, atol=1e-5), m
    assert torch.equal(targets, direct.train.targets)
    assert lazy.encoders == direct.encoders
    assert lazy.preprocessor.sample_shapes == direct.preprocessor.sample_shapes


def test_a_modality_that_is_a_single_value_is_named(tmp_path):
    """A modality stored as one number (not an array of samples) raised IndexError ("tuple index
    out of range") while the feature sizes were gathered for the error message."""
    data = affect_data("mosi")
    data["train"]["vision"] = 5.0
    with pytest.raises(ValueError, match=r"split 'train', modality 'vision': expected shape"):
        load_affect("mosi", write_pickle(tmp_path / "a.pkl", data))


def test_a_mustard_run_predicts_the_class_names_of_its_results(tmp_path):
    """results.json named MUStARD's classes "not sarcastic"/"sarcastic", but predictions and the
    CSV header of interfuse predict said "0"/"1"."""
    from interfuse import load_run

    data = affect_data("mustard", seed=1)
    task = load_dataset("mustard", path=write_pickle(tmp_path / "mustard.pkl", data))
    fit(task, TrainConfig(epochs=1, batch_size=8, rank=2, seed=0), tmp_path / "run", progress=False)
    names = ["not sarcastic", "sarcastic"]
    run = load_run(tmp_path / "run")
    assert run.result.class_names == names and run.class_names == names
    raw = {m: data["test"][m] for m in ("vision", "audio", "text")}
    prediction = run.predict(raw)
    assert prediction.labels == [names[i] for i in prediction.outputs.argmax(1).tolist()]
    np.savez(tmp_path / "new.npz", **raw)
    target = tmp_path / "predictions.csv"
    done = CliRunner().invoke(
        main, ["predict", str(tmp_path / "run"), str(tmp_path / "new.npz"), "--out", str(target)]
    )
    assert done.exit_code == 0, done.output
    header, *rows = [line.split(",") for line in target.read_text().splitlines()]
    assert header == ["sample", "prediction", "p(not sarcastic)", "p(sarcastic)", "missing"]
    assert [row[1] for row in rows] == prediction.labels


def test_explaining_from_a_file_reads_non_finite_affect_rows_as_training_did(tmp_path):
    """Run.load_data(file) (interfuse explain --data-path) took a sample entirely NaN as
    missing, where the run's preprocessing (and training, and predict) turn NaN into 0."""
    from interfuse import load_run
    from interfuse.inference import model_outputs

    data = affect_data("mosi", seed=1)
    data["test"]["text"][5] = np.nan
    data["test"]["audio"][3, -1, 1] = -np.inf
    task = load_dataset("mosi", path=write_pickle(tmp_path / "mosi.pkl", data))
    fit(task, TrainConfig(epochs=1, batch_size=8, rank=2, seed=0), tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    raw = {m: data["test"][m] for m in ("vision", "audio", "text")}
    np.savez(tmp_path / "test.npz", labels=data["test"]["labels"], **raw)
    loaded = run.load_data(tmp_path / "test.npz").test
    assert all(bool(keep.all()) for keep in loaded.masks.values())
    torch.testing.assert_close(loaded.inputs["text"], task.test.inputs["text"])
    outputs = model_outputs(run.model, loaded)
    torch.testing.assert_close(outputs, model_outputs(run.model, task.test))
    torch.testing.assert_close(outputs, run.predict(raw).outputs)
