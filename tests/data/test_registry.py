"""Dataset registry, bring-your-own arrays (Python and .npz), and the data CLI."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from interfuse.cli import main
from interfuse.data import from_arrays, list_datasets, load_dataset
from interfuse.data.arrays import load_npz_dataset
from interfuse.data.registry import (
    DATASETS,
    DatasetInfo,
    ModalityInfo,
    dataset_info,
    register_dataset,
)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def toy_arrays(n=60, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    seq = rng.normal(size=(n, 5, 2)).astype(np.float32)
    seq[:, :2] = 0.0  # front padding
    return {"tab": rng.normal(size=(n, 4)) + labels[:, None], "seq": seq}, labels


def test_registry_lists_and_describes():
    names = list_datasets()
    assert names[:2] == ["motif", "mfeat"]
    assert {"mosi", "mosei", "mustard", "urfunny", "npz"} <= set(names)
    info = dataset_info("mosei")
    assert [(m.name, m.shape, m.kind) for m in info.modalities] == [
        ("vision", (None, 35), "sequence"),
        ("audio", (None, 74), "sequence"),
        ("text", (None, 300), "sequence"),
    ]
    assert info.task == "regression" and info.needs_path
    assert dataset_info("mustard").class_names == ("not sarcastic", "sarcastic")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="needs a data file"):
        load_dataset("mosi")


def test_motif_through_the_registry():
    task = load_dataset("motif", probs=[0.9, 0.0], n=200, length=30, seed=1)
    assert task.modalities == ["m0", "m1"] and task.ground_truth is not None
    assert task.train.inputs["m0"].shape[1:] == (4, 30)


def test_register_a_custom_dataset():
    inputs, labels = toy_arrays()
    info = DatasetInfo(
        name="toy-test",
        description="toy",
        task="classification",
        modalities=(ModalityInfo("tab", (4,), "features"),),
        loader=lambda seed=0: from_arrays({"tab": inputs["tab"]}, labels, seed=seed),
        source="memory",
    )
    register_dataset(info)
    try:
        assert load_dataset("toy-test", seed=3).info["split_seed"] == 3
        with pytest.raises(ValueError, match="already registered"):
            register_dataset(info)
    finally:
        DATASETS.remove("toy-test")


def test_from_arrays_defaults():
    inputs, labels = toy_arrays()
    names = np.array(["cat", "dog", "eel"])[labels]
    task = from_arrays({**inputs, "torch": torch.ones(60, 3)}, names, seed=0)
    assert task.task == "classification" and task.class_names == ["cat", "dog", "eel"]
    assert task.encoders["tab"]["type"] == "mlp" and task.encoders["tab"]["input_dim"] == 4
    assert task.encoders["seq"] == {"type": "sequence_gru", "input_dim": 2, "output_dim": 32}
    assert len(task.train) + len(task.val) + len(task.test) == 60
    np.testing.assert_allclose(task.train.inputs["tab"].mean(0).numpy(), 0.0, atol=1e-5)
    assert (task.train.inputs["seq"][:, :2] == 0).all()  # padding kept
    with pytest.warns(UserWarning, match="treated as regression targets"):
        regression = from_arrays({"tab": inputs["tab"]}, labels.astype(float), seed=0)
    assert regression.task == "regression" and regression.num_classes is None
    assert regression.train.targets.dtype == torch.float32


@pytest.mark.parametrize(
    ("inputs", "labels", "message"),
    [
        ({"a": np.ones((5, 2)), "b": np.ones((4, 2))}, np.arange(5), "modality 'b' has 4 samples"),
        ({"a": np.ones(5)}, np.arange(5), "modality 'a': expected an array"),
        ({"a": np.full((20, 2), np.nan)}, np.arange(20) % 2, "no sample has modality 'a'"),
        ({"a": np.ones((5, 2, 2, 2, 2))}, np.arange(5) % 2, "modality 'a': no default encoder"),
        ({"a": np.array([["x"]] * 5)}, np.arange(5), "modality 'a': expected numbers"),
        ({"a": np.ones((5, 2))}, np.ones((5, 2, 2)), "one label per sample"),
    ],
)
def test_from_arrays_errors_name_the_modality(inputs, labels, message):
    with pytest.raises(ValueError, match=message):
        from_arrays(inputs, labels)


def test_npz_flat_and_split_layouts(tmp_path):
    inputs, labels = toy_arrays()
    flat = tmp_path / "flat.npz"
    np.savez(flat, labels=labels, **inputs)
    task = load_npz_dataset(flat, seed=0)
    assert task.modalities == ["tab", "seq"]  # archive order
    assert task.task == "classification"
    np.savez(flat, labels=labels, task=np.array("regression"), **inputs)
    assert load_npz_dataset(flat).task == "regression"

    folder = tmp_path / "splits"
    folder.mkdir()
    for split, part in (("train", slice(0, 40)), ("val", slice(40, 50)), ("test", slice(50, 60))):
        np.savez(
            folder / f"{split}.npz", labels=labels[part], **{k: v[part] for k, v in inputs.items()}
        )
    task = load_dataset("npz", path=folder)
    assert (len(task.train), len(task.val), len(task.test)) == (40, 10, 10)

    np.savez(flat, **inputs)
    with pytest.raises(ValueError, match="no 'labels' array"):
        load_npz_dataset(flat)
    (folder / "test.npz").unlink()
    with pytest.raises(ValueError, match="no 'test' split"):
        load_npz_dataset(folder)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="an object array .* never loaded"):
        load_npz_dataset(tmp_path / "obj.npy")


def test_cli_trains_on_an_npz(tmp_path):
    inputs, labels = toy_arrays(n=90)
    path = tmp_path / "mine.npz"
    np.savez(path, labels=labels, **inputs)
    out = tmp_path / "run"
    result = run(
        "train",
        "--dataset",
        "npz",
        "--data-path",
        path,
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--rank",
        "2",
        "--quiet",
        "--out",
        out,
    )
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert set(results["relevance"]["shares"]) == {"tab", "seq", "tab*seq"}
    assert results["dataset"] == "npz"
    assert results["data"]["source"]["path"] == str(path.resolve())
    assert "test metrics: loss=" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet"], "'imagenet' is not one of 'motif'"),
        (["--dataset", "mfeat", "--probs", "0.5"], "--probs: only for --dataset motif"),
        (["--data-path", "x.npz"], "--data-path does not apply to --dataset motif"),
        (["--dataset", "mosi"], "needs a data file"),
        (["--dataset", "npz", "--data-path", "nowhere.npz"], "data file not found: "),
    ],
)
def test_cli_dataset_errors(tmp_path, args, message):
    out = tmp_path / "run"
    result = run("train", *args, "--out", out)
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_datasets_command():
    result = run("datasets")
    assert result.exit_code == 0, result.output
    for name in list_datasets():
        assert f"\n{name} " in "\n" + result.output
    assert "needs --data-path" in result.output and "fourier (76)" in result.output
