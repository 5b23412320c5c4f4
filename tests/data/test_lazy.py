"""Dataset folders read lazily (interfuse-lazy): conversion, streaming statistics, validation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from interfuse.cli import main
from interfuse.data import load_dataset
from interfuse.data.arrays import load_npz_dataset
from interfuse.data.batching import batch_loader
from interfuse.data.lazy import (
    MANIFEST,
    LazyData,
    LazyWriter,
    _gather,
    convert_task,
    load_lazy,
    streaming_scaler,
)
from interfuse.data.preprocess import Scaler


@pytest.fixture(scope="module")
def npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Features with missing rows (NaN), front-padded sequences, string labels."""
    rng = np.random.default_rng(0)
    n = 400
    a = rng.normal(3, 2, (n, 5))
    a[rng.random(n) < 0.2] = np.nan
    b = rng.normal(size=(n, 7, 3))
    b[:, :2] = 0
    b[:60, :5] = 0
    path = tmp_path_factory.mktemp("lazy") / "d.npz"
    np.savez(path, a=a, b=b, labels=rng.choice(["x", "y", "z"], n))
    return path


@pytest.fixture(scope="module")
def folder(npz: Path) -> Path:
    raw = load_npz_dataset(npz, standardize=False, seed=1)
    return convert_task(raw, npz.parent / "d.lazy", chunk=37)


def test_lazy_folder_trains_on_what_the_npz_gives(npz: Path, folder: Path) -> None:
    reference = load_npz_dataset(npz, seed=1)
    lazy = load_dataset("lazy", path=folder)
    assert isinstance(lazy.train, LazyData)
    assert lazy.class_names == reference.class_names == ["x", "y", "z"]
    # any order, repeated indices: the sampler's order is kept although the gather is sorted
    index = torch.tensor([7, 3, 270, 3, 0, 199])
    inputs, targets, masks = lazy.train[index]
    want_inputs, want_targets, want_masks = reference.train[index]
    for m in ("a", "b"):
        assert torch.allclose(inputs[m], want_inputs[m], atol=1e-6), m
    assert torch.equal(targets, want_targets)
    assert torch.equal(masks["a"], want_masks["a"])
    assert inputs["a"][~masks["a"]].eq(0).all()  # missing rows are finite zeros
    for split in ("val", "test"):
        for m in ("a", "b"):
            got, want = getattr(lazy, split).inputs[m], getattr(reference, split).inputs[m]
            assert torch.allclose(got, want, atol=1e-6), (split, m)
    batches = list(batch_loader(lazy.train, 64, shuffle=True, seed=2))
    assert sum(len(t) for _, t, _ in batches) == len(lazy.train) // 64 * 64
    # the whole split (padding stays zero after standardisation, as in memory)
    everything = lazy.train[torch.arange(len(lazy.train))][0]
    for m in ("a", "b"):
        assert torch.allclose(everything[m], reference.train.inputs[m], atol=1e-6), m
    assert everything["b"].eq(0).any(dim=2).any()


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_streaming_moments_equal_the_in_memory_scaler(chunk: int, tmp_path: Path) -> None:
    rng = np.random.default_rng(chunk)
    features = rng.normal(5, 3, (123, 4))
    present = rng.random(123) > 0.3
    padded = np.concatenate([np.zeros((50, 3, 2)), rng.normal(1, 2, (50, 4, 2))], axis=1)
    padded[:7, :5] = 0  # shorter sequences
    for x, keep in ((features, present), (padded, None)):
        full = Scaler.fit(x if keep is None else x[keep])
        np.save(tmp_path / "x.npy", x)
        mapped = np.load(tmp_path / "x.npy", mmap_mode="r", allow_pickle=False)
        for source in (x, mapped):
            streamed = streaming_scaler(source, keep, chunk)
            assert streamed.sequence == full.sequence
            np.testing.assert_allclose(streamed.mean, full.mean, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(streamed.std, full.std, rtol=1e-12, atol=1e-12)


def test_release_keeps_the_values(folder: Path) -> None:
    data = load_lazy(folder).train
    index = torch.arange(len(data))
    before = data[index][0]
    data.release()
    after = data[index][0]
    assert all(torch.equal(before[m], after[m]) for m in before)


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    for file in folder.rglob("*"):
        if file.is_file():
            target = copy / file.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.read_bytes())
    return copy


def _edit(folder: Path, change) -> None:  # noqa: ANN001
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(extra=1), r"manifest.json: unknown entries \['extra'\]"),
        (lambda m: m.update(version=2), "format version 2 is not supported"),
        (lambda m: m.update(format="npz"), "format must be 'interfuse-lazy'"),
        (lambda m: m["splits"]["train"].update(n=5), r"train/a.npy: shape \(\d+, 5\), the manif"),
        (lambda m: m["modalities"]["a"].update(shape=[6]), "statistics of 'a' do not match"),
        (
            lambda m: (m["modalities"]["a"].update(shape=[6]), m.update(statistics=None)),
            r"train/a.npy: shape .* says \(\d+, 6\)",
        ),
        (lambda m: m["modalities"]["a"].update(dtype="float64"), "train/a.npy: dtype float32"),
        (lambda m: m["modalities"]["a"].update(dtype="object"), "dtype 'object' is not a number"),
        (lambda m: m.pop("statistics"), "missing entry 'statistics'"),
        (lambda m: m["statistics"]["a"].update(std=[0.0] * 5), "finite with std > 0"),
        (lambda m: m["statistics"]["a"].update(sequence=True), "'a': sequence must be false"),
    ],
)
def test_manifest_is_validated_strictly(folder: Path, tmp_path: Path, change, message) -> None:  # noqa: ANN001
    copy = _copy(folder, tmp_path)
    _edit(copy, change)
    with pytest.raises(ValueError, match=message):
        load_lazy(copy)


def test_a_manifest_nested_beyond_the_parser_is_named(folder: Path, tmp_path: Path) -> None:
    """Deeply nested brackets raised RecursionError: exit 70, "a bug", not the file named."""
    copy = _copy(folder, tmp_path)
    (copy / MANIFEST).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="manifest.json.*not valid JSON"):
        load_lazy(copy)


def test_pickled_or_missing_arrays_are_refused_by_name(folder: Path, tmp_path: Path) -> None:
    copy = _copy(folder, tmp_path)
    np.save(copy / "val" / "b.npy", np.empty((3, 7, 3), dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match=r"val/b.npy: holds Python objects"):
        load_lazy(copy)
    (copy / "val" / "b.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"val/b.npy: missing"):
        load_lazy(copy)
    with pytest.raises(FileNotFoundError, match="no manifest"):
        load_lazy(tmp_path)


def test_writer_is_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    writer = LazyWriter(
        dest,
        task="regression",
        sizes={"train": 4, "val": 2, "test": 2},
        shapes={"a": (3,)},
        encoders={"a": {"type": "mlp"}},
        target_dtype="float32",
    )
    with pytest.raises(RuntimeError, match="stop"), writer:
        writer.append("train", {"a": np.ones((2, 3))}, np.zeros(2))
        raise RuntimeError("stop")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary
    with pytest.raises(ValueError, match="fewer samples written than declared"), writer:
        writer.append("train", {"a": np.ones((4, 3))}, np.zeros(4))
    assert list(tmp_path.iterdir()) == []


def test_convert_and_train_from_the_command_line(npz: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    dest = tmp_path / "big"
    result = runner.invoke(main, ["convert", str(npz), str(dest), "--seed", "1"])
    assert result.exit_code == 0, result.output
    again = runner.invoke(main, ["convert", str(npz), str(dest)])
    assert again.exit_code == 1 and "exists" in again.output
    result = runner.invoke(
        main,
        [
            "train",
            "--dataset",
            "lazy",
            "--data-path",
            str(dest),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--rank",
            "2",
            "--quiet",
            "--threads",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data"]["split_sizes"]["train"] == len(load_lazy(dest).train)


def test_convert_names_a_source_that_needs_no_conversion(npz: Path, tmp_path: Path) -> None:
    """A dataset folder given as SOURCE failed with "split 'test' has no 'labels' array", an
    .npz given for an .npz TARGET with "not a readable data pickle (UnpicklingError: …)"."""
    runner = CliRunner()
    dest = tmp_path / "big"
    assert runner.invoke(main, ["convert", str(npz), str(dest)]).exit_code == 0
    again = runner.invoke(main, ["convert", str(dest), str(tmp_path / "big2")])
    assert again.exit_code == 1, again.output
    assert f"{dest} is already a dataset folder (it has manifest.json)" in again.output
    to_npz = runner.invoke(main, ["convert", str(npz), str(tmp_path / "x.npz")])
    assert to_npz.exit_code == 1, to_npz.output
    assert "is already an .npz (read without pickle)" in to_npz.output
    assert not (tmp_path / "big2").exists() and not (tmp_path / "x.npz").exists()


def _rss_file_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_gathering_a_batch_keeps_the_file_out_of_resident_memory(tmp_path: Path) -> None:
    """A random batch from a 64 MiB memory map: the rows are copied, the touched pages released
    group by group, so the resident file pages do not grow with the file (a plain fancy index
    maps the neighbourhood of every row it faults on)."""
    rows = np.random.default_rng(0).normal(size=(250_000, 64)).astype(np.float32)
    np.save(tmp_path / "big.npy", rows)
    array = np.load(tmp_path / "big.npy", mmap_mode="r", allow_pickle=False)
    index = np.sort(np.random.default_rng(1).choice(len(array), 512, replace=False))
    before = _rss_file_kib()
    got = _gather(array, index)
    grown = _rss_file_kib() - before
    np.testing.assert_array_equal(got, rows[index])
    assert grown < 8 * 1024, f"{grown} KiB of the file stayed resident"


def test_overwrite_replaces_only_a_dataset_folder(npz: Path, tmp_path: Path) -> None:
    """The Python API as the CLI: overwrite=True on a folder that convert_task did not write
    (the user's own files) is refused and the folder kept; a dataset folder is replaced."""
    raw = load_npz_dataset(npz, standardize=False, seed=1)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a dataset folder"):
        convert_task(raw, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "keep me"
    first = convert_task(raw, tmp_path / "d.lazy")
    again = convert_task(raw, first, overwrite=True)
    assert again == first and (again / "manifest.json").is_file()
    assert len(load_lazy(again).train) == len(raw.train)


@pytest.mark.parametrize("split", ["train", "val"])
def test_a_truncated_array_is_refused_by_name(folder: Path, tmp_path: Path, split: str) -> None:
    """A copy cut short (its header intact) failed in mmap with "mmap length is greater than
    file size", naming no file."""
    copy = _copy(folder, tmp_path)
    path = copy / split / "a.npy"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=rf"{split}/a.npy: truncated"):
        load_lazy(copy)


def test_statistics_are_those_of_the_values_stored(tmp_path: Path) -> None:
    """float64 chunks written to a float16 file: the manifest's statistics are those of the
    float16 values read back (they were accumulated from the values before the cast)."""
    x = np.random.default_rng(0).normal(0.3, 0.4, (40, 3))
    writer = LazyWriter(
        tmp_path / "out",
        task="regression",
        sizes={"train": 40, "val": 2, "test": 2},
        shapes={"a": (3,)},
        encoders={"a": {"type": "mlp"}},
        target_dtype="float32",
        dtypes={"a": "float16"},
    )
    with writer:
        for split, rows in (("train", x), ("val", x[:2]), ("test", x[:2])):
            writer.append(split, {"a": rows}, np.zeros(len(rows)))
    stored = Scaler.fit(np.load(tmp_path / "out" / "train" / "a.npy"))
    written = load_lazy(tmp_path / "out").preprocessor.scalers["a"]
    np.testing.assert_allclose(written.mean, stored.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(written.std, stored.std, rtol=1e-12, atol=1e-12)


def test_statistics_skip_the_missing_rows_of_a_0_1_mask(tmp_path: Path) -> None:
    """A mask given as 0/1 integers (stored as bool): the statistics are those of the present
    rows (the integers indexed rows 0 and 1 instead)."""
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (30, 2))
    present = (rng.random(30) > 0.3).astype(np.uint8)
    writer = LazyWriter(
        tmp_path / "out",
        task="regression",
        sizes={"train": 30, "val": 2, "test": 2},
        shapes={"a": (2,)},
        encoders={"a": {"type": "mlp"}},
        target_dtype="float32",
        dtypes={"a": "float64"},
        masks={"train": ["a"]},
    )
    with writer:
        writer.append("train", {"a": x}, np.zeros(30), {"a": present})
        for split in ("val", "test"):
            writer.append(split, {"a": x[:2]}, np.zeros(2))
    written = load_lazy(tmp_path / "out").preprocessor.scalers["a"]
    want = Scaler.fit(x[present.astype(bool)])
    np.testing.assert_allclose(written.mean, want.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(written.std, want.std, rtol=1e-12, atol=1e-12)


def test_streaming_moments_of_values_whose_squares_overflow() -> None:
    """Values near 1e300 (their squares overflow float64): as :meth:`Scaler.fit`, which rescales
    them; the streamed std was infinite (a folder its own reader refuses)."""
    x = np.random.default_rng(0).normal(1, 1, (50, 3)) * np.array([1e300, 1e-300, 1.0])
    full = Scaler.fit(x)
    for chunk in (1, 7, 50):
        streamed = streaming_scaler(x, chunk=chunk)
        np.testing.assert_allclose(streamed.mean, full.mean, rtol=1e-12, atol=0)
        np.testing.assert_allclose(streamed.std, full.std, rtol=1e-12, atol=0)


def test_a_writer_that_cannot_start_leaves_nothing(tmp_path: Path) -> None:
    """A failure while the files are created (here a dtype numpy does not know) removed
    nothing: the temporary folder stayed beside the destination."""
    writer = LazyWriter(
        tmp_path / "out",
        task="regression",
        sizes={"train": 4, "val": 2, "test": 2},
        shapes={"a": (3,), "b": (2,)},
        encoders={"a": {"type": "mlp"}, "b": {"type": "mlp"}},
        target_dtype="float32",
        dtypes={"a": "float32", "b": "no such type"},
    )
    with pytest.raises(TypeError), writer:
        pass
    assert list(tmp_path.iterdir()) == []


def test_manifest_lists_the_sha256_of_every_file(folder: Path) -> None:
    """The digests are those of the files (``sha256sum`` checks a copy); they covered the data
    after the ``.npy`` header only."""
    files = json.loads((folder / MANIFEST).read_text())["files"]
    assert sorted(files) == sorted(str(f.relative_to(folder)) for f in folder.rglob("*.npy"))
    for relative, digest in files.items():
        assert hashlib.sha256((folder / relative).read_bytes()).hexdigest() == digest, relative


def test_regression_targets_are_kept_as_given(tmp_path: Path) -> None:
    """A regression folder written without a target dtype: the targets read back are those
    written (the default int64 truncated 0.25 to 0)."""
    targets = np.array([0.25, -1.5, 3.75, 2.0])
    writer = LazyWriter(
        tmp_path / "out",
        task="regression",
        sizes={"train": 4, "val": 4, "test": 4},
        shapes={"a": (2,)},
        encoders={"a": {"type": "mlp"}},
    )
    with writer:
        for split in ("train", "val", "test"):
            writer.append(split, {"a": np.eye(4, 2)}, targets)
    data = load_lazy(tmp_path / "out")
    assert torch.equal(data.test.targets, torch.tensor(targets, dtype=torch.float32))


@pytest.mark.parametrize("name", ["targets", "a.mask", "sub/a"])
def test_modality_names_that_are_not_file_names_of_their_own(name: str, tmp_path: Path) -> None:
    """A modality named ``targets`` was written over the labels' file (the error spoke of the
    shape of train/targets.npy), ``a.mask`` over a's mask, ``sub/a`` into a folder."""
    with pytest.raises(ValueError, match=f"modality name {name!r}"):
        LazyWriter(
            tmp_path / "out",
            task="regression",
            sizes={"train": 4, "val": 2, "test": 2},
            shapes={"a": (2,), name: (3,)},
            encoders={"a": {"type": "mlp"}, name: {"type": "mlp"}},
            masks={"train": ["a"]},
        )
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("split", "masks", "message"),
    [
        ("val", {"a": np.array([True, False])}, r"split 'val': masks given for .*\['a'\]"),
        ("train", {}, r"split 'train': no mask given for modality 'a'"),
        ("train", {"a": np.array([1, 2, 1, 1])}, r"mask of modality 'a' must hold 0/1"),
        ("train", {"a": np.array([0.0, 1.0, 1.0, 1.0])}, r"mask of modality 'a' must hold"),
    ],
)
def test_writer_masks_that_the_manifest_does_not_declare_are_refused(
    tmp_path: Path, split: str, masks: dict, message: str
) -> None:
    """A mask for a modality the manifest does not mask in that split was dropped without a
    word (its missing rows then trained as present samples); a mask of 1/2 or of floats was cast
    to bool (every sample present); a declared mask left out failed with a bare KeyError."""
    writer = LazyWriter(
        tmp_path / "out",
        task="regression",
        sizes={"train": 4, "val": 2, "test": 2},
        shapes={"a": (2,)},
        encoders={"a": {"type": "mlp"}},
        target_dtype="float32",
        masks={"train": ["a"]},
    )
    n = {"train": 4, "val": 2}[split]
    with pytest.raises(ValueError, match=message), writer:
        writer.append(split, {"a": np.ones((n, 2))}, np.zeros(n), masks)
    assert list(tmp_path.iterdir()) == []
