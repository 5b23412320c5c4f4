"""The run folder is one self-contained artefact: it predicts from raw data exactly as training saw
it, refuses to resume with other data or settings, is written by one process at a time, detects
edits, and loads wherever it is moved."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from interfuse import load_run
from interfuse.checkpoint import CheckpointError
from interfuse.cli import main
from interfuse.cli import predict as predict_cli
from interfuse.data import from_arrays
from interfuse.data.registry import DATASETS, DatasetInfo, ModalityInfo, load_dataset
from interfuse.results import RESULTS_OUTDATED
from interfuse.run import RunFolderError, lock_run_folder, model_digest, results_outdated
from interfuse.train import TrainConfig, fit

CLASSES = np.array(["cat", "dog", "eel"])


def offset_arrays(n: int = 600, seed: int = 0):
    """Three classes, two feature modalities far from standardised (×10 + 100), string labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    centres = np.eye(3)[labels]
    tab = np.concatenate([centres * 2.0, rng.normal(size=(n, 3))], axis=1) + rng.normal(
        scale=0.6, size=(n, 6)
    )
    aux = rng.normal(size=(n, 4))
    aux[:, 0] += labels * 1.0
    inputs = {"tab": tab * 10 + 100, "aux": (aux * 10 + 100).astype(np.float32)}
    return inputs, CLASSES[labels]


@pytest.fixture(scope="module")
def offset_run(tmp_path_factory):
    inputs, labels = offset_arrays()
    task = from_arrays(inputs, labels, seed=0, name="offset")
    out = tmp_path_factory.mktemp("offset") / "run"
    config = TrainConfig(epochs=12, batch_size=64, rank=2, seed=0, lr=1e-2)
    result = fit(task, config, out, progress=False)
    return inputs, labels, task, result, out


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_load_run_predicts_raw_rows_like_training(offset_run):
    inputs, labels, task, result, out = offset_run
    assert result.metrics["test"]["accuracy"] > 0.8  # the task is learnt
    run = load_run(out)
    assert run.class_names == ["cat", "dog", "eel"]
    prediction = run.predict(inputs)  # raw, unstandardised rows
    accuracy = float(np.mean(np.asarray(prediction.labels) == labels))
    # every raw row through the saved preprocessing: as accurate as on the splits
    split_accuracies = [result.metrics[s]["accuracy"] for s in ("train", "val", "test")]
    assert min(split_accuracies) - 0.02 <= accuracy <= max(split_accuracies) + 0.02
    # identical outputs to the preprocessed test split the run was evaluated on
    test_rows = np.flatnonzero(np.isin(np.arange(len(labels)), _test_index(task, inputs)))
    assert len(test_rows) == len(task.test)
    metrics = run.evaluate({m: x[test_rows] for m, x in inputs.items()}, labels[test_rows])
    assert metrics["accuracy"] == pytest.approx(result.metrics["test"]["accuracy"])
    assert metrics["loss"] == pytest.approx(result.metrics["test"]["loss"], rel=1e-5)


def _test_index(task, inputs):
    """Rows of ``inputs`` that form the task's test split (matched by the standardised tab)."""
    standardised = task.preprocessor.transform({"tab": inputs["tab"]})["tab"]
    test = task.test.inputs["tab"]
    distance = torch.cdist(test.double(), standardised.double())
    return distance.argmin(dim=1).numpy()


def test_predict_without_preprocessing_would_be_wrong(offset_run):
    """The regression this guards: raw rows fed straight to the model predict one class."""
    inputs, labels, _, _, out = offset_run
    run = load_run(out)
    raw = {m: torch.as_tensor(np.asarray(x, dtype=np.float32)) for m, x in inputs.items()}
    with torch.no_grad():
        outputs = run.model(raw).prediction
    raw_accuracy = float((outputs.argmax(1).numpy() == np.searchsorted(CLASSES, labels)).mean())
    prediction = run.predict(inputs)
    assert float(np.mean(np.asarray(prediction.labels) == labels)) > raw_accuracy + 0.2


def test_cli_predict_on_raw_data_gives_class_names_and_accuracy(offset_run, tmp_path):
    inputs, labels, _, result, out = offset_run
    data = tmp_path / "new.npz"
    np.savez(data, labels=labels, **inputs)
    target = tmp_path / "predictions.csv"
    done = run_cli("predict", out, data, "--out", target)
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader(target.open()))
    assert {row["prediction"] for row in rows} <= {"cat", "dog", "eel"}
    assert set(rows[0]) == {"sample", "prediction", "p(cat)", "p(dog)", "p(eel)", "missing"}
    accuracy = np.mean([row["prediction"] == label for row, label in zip(rows, labels)])
    assert accuracy > 0.8
    assert "metrics on DATA's labels: loss" in done.output


def test_python_run_explains_and_reports_with_its_data(offset_run, tmp_path):
    inputs, labels, _, _, out = offset_run
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    data = tmp_path / "raw.npz"
    np.savez(data, labels=labels, **inputs)
    done = run_cli("explain", moved, "--quiet", "--emap-samples", "0")
    assert done.exit_code == 1 and "--data-path" in done.output  # says what is missing
    done = run_cli("explain", moved, "--data-path", data, "--quiet", "--emap-samples", "0")
    assert done.exit_code == 0, done.output
    explanation = json.loads((moved / "explain.json").read_text())
    assert explanation["split_size"] == len(labels)
    assert run_cli("report", moved).exit_code == 0


def test_predict_errors_name_the_problem(offset_run, tmp_path):
    inputs, _, _, _, out = offset_run
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, tab=inputs["tab"][:, :5])
    done = run_cli("predict", out, wrong)
    assert done.exit_code == 1 and "modality 'tab'" in done.output and "(6)" in done.output
    unknown = tmp_path / "unknown.npz"
    np.savez(unknown, video=inputs["tab"])
    done = run_cli("predict", out, unknown)
    assert done.exit_code == 1 and "unknown modalities ['video']" in done.output
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, labels=np.array(["cat", "fox"]), **{m: x[:2] for m, x in inputs.items()})
    done = run_cli("predict", out, labelled)
    assert done.exit_code == 1 and "never seen in training" in done.output
    assert "Traceback" not in done.output


def test_predicting_in_chunks_gives_the_outputs_of_one_pass(offset_run):
    """Predict preprocessed whole arrays in float64 at once (about 3.5 times the input at the
    peak): the rows now go through preprocessing and the model a chunk at a time, with the
    same outputs, missing samples and errors as one pass."""
    inputs, labels, _, _, out = offset_run
    run = load_run(out)
    raw = {m: x[:50].copy() for m, x in inputs.items()}
    raw["tab"][[3, 41]] = np.nan  # missing in the first and in a later chunk
    masks = {"aux": np.arange(50) % 7 != 0}
    whole = run.predict(raw, masks, batch_size=4, chunk_rows=10**6)
    chunked = run.predict(raw, masks, batch_size=4, chunk_rows=9)  # chunks of 8 rows
    assert torch.equal(whole.outputs, chunked.outputs)
    assert torch.equal(whole.probabilities, chunked.probabilities)
    assert whole.labels == chunked.labels and len(chunked.labels) == 50
    assert all(torch.equal(whole.missing[m], chunked.missing[m]) for m in whole.missing)
    assert chunked.missing_counts() == {"tab": 2, "aux": 8}
    assert [len(c.outputs) for c in run.predict_chunks(raw, batch_size=4, chunk_rows=16)] == [
        16,
        16,
        16,
        2,
    ]
    outputs = run.predict(raw, masks).outputs
    assert run.evaluate(raw, labels[:50], masks) == run.score(outputs, labels[:50])
    # an error counts over all rows, not over the chunk it is met in
    raw["aux"][[1, 30], 0] = np.inf
    for chunk_rows in (8, None):
        with pytest.raises(ValueError, match="2 values are infinite"):
            run.predict(raw, batch_size=4, chunk_rows=chunk_rows)
    with pytest.raises(ValueError, match=r"must have shape \(600,\), got \(50,\)"):
        run.predict(inputs, {"aux": np.ones(50, dtype=bool)}, batch_size=4, chunk_rows=8)


def test_cli_predict_in_chunks_writes_the_file_of_one_pass(offset_run, tmp_path, monkeypatch):
    inputs, labels, _, _, out = offset_run
    raw = {m: x[:40].copy() for m, x in inputs.items()}
    raw["tab"][[2, 33]] = np.nan
    data = tmp_path / "new.npz"
    np.savez(data, labels=labels[:40], aux__mask=np.arange(40) % 5 != 0, **raw)
    monkeypatch.setattr(predict_cli, "BATCH_SIZE", 4)
    files = []
    for chunk_rows in (None, 8):
        monkeypatch.setattr(predict_cli, "CHUNK_ROWS", chunk_rows)
        target = tmp_path / f"predictions-{chunk_rows}.csv"
        done = run_cli("predict", out, data, "--out", target)
        assert done.exit_code == 0, done.output
        assert "tab (2 of 40), aux (8 of 40)" in done.output
        assert "metrics on DATA's labels: loss" in done.output
        files.append((target.read_bytes(), done.output.replace(str(target), "")))
    assert files[0] == files[1]
    # an error met in a later chunk leaves neither the output nor a temporary file
    raw["aux"][30, 0] = np.inf
    np.savez(data, **raw)
    target = tmp_path / "failed.csv"
    done = run_cli("predict", out, data, "--out", target)
    assert done.exit_code == 1 and "1 values are infinite" in done.output
    assert sorted(p.name for p in tmp_path.iterdir() if "failed" in p.name) == []


def test_cli_predictions_read_back_as_the_values_predicted(offset_run, tmp_path):
    """Values were written with 6 significant digits (1234567 as 1.23457e+06): neither float32
    outputs nor the probabilities read back as predicted."""
    inputs, labels, _, _, out = offset_run
    data = tmp_path / "new.npz"
    np.savez(data, **{m: x[:30] for m, x in inputs.items()})
    target = tmp_path / "classes.csv"
    assert run_cli("predict", out, data, "--out", target).exit_code == 0
    expected = load_run(out).predict({m: x[:30] for m, x in inputs.items()}).probabilities
    rows = list(csv.DictReader(target.open()))
    written = [[float(row[f"p({c})"]) for c in CLASSES] for row in rows]
    assert torch.equal(torch.tensor(written, dtype=torch.float64), expected)
    # regression: float32 outputs, large and small
    rng = np.random.default_rng(1)
    x = rng.normal(size=(120, 3))
    task = from_arrays({"x": x}, 1234567.0 + 1e5 * x[:, 0], seed=0, name="big-values")
    config = TrainConfig(epochs=1, batch_size=32, rank=2, seed=0, restarts=0)
    fit(task, config, tmp_path / "reg", progress=False)
    np.savez(data, x=x[:20])
    target = tmp_path / "values.csv"
    assert run_cli("predict", tmp_path / "reg", data, "--out", target).exit_code == 0
    outputs = load_run(tmp_path / "reg").predict({"x": x[:20]}).outputs
    written = [[np.float32(row["y0"])] for row in csv.DictReader(target.open())]
    assert torch.equal(torch.tensor(np.array(written)), outputs)


def test_data_for_explaining_without_a_modality_names_it(offset_run, tmp_path):
    """A data file lacking one of the run's modalities failed with "encoder specifications
    ['aux', 'tab'] do not match the modalities ['tab']": neither the file nor what it lacks."""
    inputs, labels, _, _, out = offset_run
    data = tmp_path / "tab-only.npz"
    np.savez(data, labels=labels, tab=inputs["tab"])
    with pytest.raises(ValueError, match=r"tab-only.npz: split 'train' has no 'aux' array"):
        load_run(out).load_data(data)
    done = run_cli("explain", out, "--data-path", data, "--quiet", "--emap-samples", "0")
    assert done.exit_code == 1 and "has no 'aux' array" in done.output


def test_predict_does_not_write_over_the_runs_history(offset_run, tmp_path):
    """--out RUN/history.csv replaced the training history with predictions: `interfuse report`
    and `interfuse explain` then failed on the run for good (malformed history header)."""
    inputs, _, _, _, out = offset_run
    data = tmp_path / "new.npz"
    np.savez(data, **{m: x[:5] for m, x in inputs.items()})
    history = (out / "history.csv").read_bytes()
    done = run_cli("predict", out, data, "--out", out / "history.csv")
    assert done.exit_code == 1 and "history.csv is a file of the run" in done.output
    assert (out / "history.csv").read_bytes() == history
    assert run_cli("report", out).exit_code == 0


def test_predict_reads_a_training_file_with_its_task_entry(offset_run, tmp_path):
    """The optional 'task' entry of a training .npz was taken for a modality by predict
    ("unknown modalities ['task']"), though explain --data-path reads the same file."""
    inputs, labels, _, _, out = offset_run
    data = tmp_path / "train.npz"
    np.savez(data, labels=labels, task="classification", **inputs)
    done = run_cli("predict", out, data, "--out", tmp_path / "p.csv")
    assert done.exit_code == 0, done.output
    assert "metrics on DATA's labels" in done.output


def test_predict_names_a_file_with_splits(offset_run, tmp_path):
    """A training file with splits (train/tab, …) was refused with "unknown modalities
    ['test/aux', 'test/labels', …]", every key of the file listed as a modality."""
    inputs, labels, _, _, out = offset_run
    data = tmp_path / "splits.npz"
    arrays = {f"{s}/{m}": x[:4] for s in ("train", "valid", "test") for m, x in inputs.items()}
    np.savez(data, **arrays, **{f"{s}/labels": labels[:4] for s in ("train", "valid", "test")})
    done = run_cli("predict", out, data, "--out", tmp_path / "p.csv")
    assert done.exit_code == 1, done.output
    expected = (
        "splits.npz holds splits (test, train, valid); predict reads one array per modality, "
        "named as in the run (tab, aux), without a split prefix"
    )
    assert expected in " ".join(done.output.split()), done.output


# -- integrity ------------------------------------------------------------------------------


def _rewrite_header(path: Path, edit) -> None:
    """Rewrite a checkpoint with its interfuse header changed by ``edit`` (hash left as is)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    header = json.loads(metadata["interfuse"])
    edit(header)
    metadata["interfuse"] = json.dumps(header)
    save_file(load_file(str(path)), str(path), metadata=metadata)


def test_an_edited_header_is_detected(offset_run, tmp_path):
    _, _, _, _, out = offset_run
    copy = tmp_path / "edited"
    shutil.copytree(out, copy)

    def bigger_rank(header):
        header["spec"]["options"]["rank"] = 20000

    _rewrite_header(copy / "best.safetensors", bigger_rank)
    with pytest.raises(CheckpointError, match="edited"):
        load_run(copy)
    done = run_cli("predict", copy, tmp_path / "x.npz")
    assert done.exit_code == 1 and "edited" in done.output


def test_a_different_custom_encoder_is_named_not_blamed_on_the_file(tmp_path):
    """Loading with a custom encoder of other sizes than the trained one said "the file was
    edited or is corrupt", although the file was fine and the given module was the cause."""

    def encoder(width):
        module = torch.nn.Linear(6, width)
        module.output_dim = width
        return module

    inputs, labels = offset_arrays(n=120)
    task = from_arrays(inputs, labels, seed=0)
    config = TrainConfig(epochs=1, batch_size=32, rank=2, restarts=0)
    fit(task, config, tmp_path / "run", encoders={"tab": encoder(8)}, progress=False)
    with pytest.raises(CheckpointError, match="encoder given for modality 'tab'") as error:
        load_run(tmp_path / "run", encoders={"tab": encoder(9)})
    assert "corrupt" not in str(error.value)
    assert load_run(tmp_path / "run", encoders={"tab": encoder(8)}).predict(inputs).labels


def test_sizes_are_checked_before_allocating(offset_run, tmp_path, monkeypatch):
    """Even with a recomputed hash, a description that does not fit the tensors is refused
    before the model is built for real."""
    from interfuse import checkpoint as ckpt
    from interfuse import run as run_module

    _, _, _, _, out = offset_run
    copy = tmp_path / "crafted"
    shutil.copytree(out, copy)
    state, header, _ = ckpt.load_checkpoint(copy / "best.safetensors")
    tensors = header.pop("tensors")
    header["spec"]["options"]["rank"] = 20000
    ckpt.save_checkpoint(copy / "best.safetensors", state, header, extra=tensors)
    built = []
    real_build = run_module.build_model
    monkeypatch.setattr(
        run_module,
        "build_model",
        lambda spec, **kw: built.append(kw.get("device")) or real_build(spec, **kw),
    )
    with pytest.raises(CheckpointError, match="does not match the stored tensors"):
        load_run(copy)
    assert built == ["meta"]  # only the memory-free skeleton was built


def test_scaler_statistics_of_another_shape_are_refused_before_predicting(offset_run, tmp_path):
    """Statistics of shape (K, 1, F) in a crafted checkpoint (hash recomputed) broadcast
    against (N, F) inputs to a (K, N, F) array: a 0.5 MB file made predict allocate
    K·N·F values, far more than the file holds."""
    from interfuse import checkpoint as ckpt

    _, _, _, _, out = offset_run
    copy = tmp_path / "crafted"
    shutil.copytree(out, copy)
    state, header, _ = ckpt.load_checkpoint(copy / "best.safetensors")
    tensors = header.pop("tensors")
    prep = tensors["prep"]
    for name in ("tab.mean", "tab.std"):
        prep[name] = prep[name].reshape(1, 1, -1).repeat(5000, 1, 1)
    ckpt.save_checkpoint(copy / "best.safetensors", state, header, extra=tensors)
    with pytest.raises(CheckpointError, match="best.safetensors.*'tab'.*shape"):
        load_run(copy)


def test_an_old_checkpoint_format_says_so(offset_run, tmp_path):
    _, _, _, _, out = offset_run
    copy = tmp_path / "old"
    shutil.copytree(out, copy)
    _rewrite_header(copy / "best.safetensors", lambda h: h.update(format="interfuse-checkpoint/1"))
    done = run_cli("predict", copy, tmp_path / "x.npz")
    assert done.exit_code == 1 and "older version of interfuse" in done.output


def test_a_folder_of_interfuse_coordinated_is_named_not_called_old(tmp_path):
    """`interfuse report` on a folder written by `interfuse coordinated colearn` said its
    results.json "was made by an older version of interfuse"; explain and predict said only
    that best.safetensors does not exist."""
    out = tmp_path / "co"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({"schema_version": 1, "task": "colearn"}))
    np.savez(tmp_path / "x.npz", a=np.zeros((2, 3)))
    for args in (("report", out), ("explain", out), ("predict", out, tmp_path / "x.npz")):
        done = run_cli(*args)
        assert done.exit_code == 1, done.output
        assert "result of `interfuse coordinated colearn`, not of `interfuse train`" in (
            done.output
        ), args
        assert "older version" not in done.output


def test_the_folder_of_train_seeds_names_its_seed_runs(offset_run, tmp_path):
    """report, explain and predict on the parent folder of `interfuse train --seeds` said
    "results.json not found: is DIR a finished run?" or "best.safetensors does not exist"."""
    _, _, _, _, out = offset_run
    shutil.copytree(out, tmp_path / "seeds" / "seed-0")
    np.savez(tmp_path / "x.npz", tab=np.zeros((2, 6)))
    parent = tmp_path / "seeds"
    for args in (("report", parent), ("explain", parent), ("predict", parent, tmp_path / "x.npz")):
        done = run_cli(*args)
        assert done.exit_code == 1, done.output
        assert f"holds one run per seed (seed-0), not a run; name one of them, e.g. {parent}" in (
            " ".join(done.output.split())
        ), args


# -- resume ----------------------------------------------------------------------------------

TINY = [
    "--probs",
    "0.9,0",
    "--n",
    "300",
    "--length",
    "30",
    "--quiet",
    "--batch-size",
    "32",
    "--restarts",
    "0",
]


@pytest.fixture()
def half_run(tmp_path):
    out = tmp_path / "run"
    done = run_cli("train", *TINY, "--epochs", "1", "--out", out)
    assert done.exit_code == 0, done.output
    return out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--data-seed", "5"], "other data"),
        (["--n", "320"], "other data"),
        (["--lr", "0.01"], "lr 0.003 → 0.01"),
        (["--batch-size", "16"], "batch_size 32 → 16"),
        # named what differs, not only "options differ" beside the (equal) modalities
        (["--rank", "4"], "different model or data: options.rank 8 → 4 (checkpoint → now)"),
        (["--interactions", "none"], "options.interactions ['m0*m1'] → []"),
    ],
)
def test_resume_refuses_other_data_or_settings(half_run, change, message):
    before = (half_run / "last.safetensors").read_bytes()
    args = [*TINY, "--epochs", "2", "--out", half_run, "--resume"]
    done = run_cli("train", *_override(args, change))
    assert done.exit_code == 1, done.output
    assert message in done.output and "Traceback" not in done.output
    assert len(done.output.strip().splitlines()) == 1
    assert (half_run / "last.safetensors").read_bytes() == before  # nothing lost


def _override(args, change):
    args = list(args)
    for flag, value in zip(change[::2], change[1::2]):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


def test_resume_may_train_longer(half_run):
    done = run_cli("train", *TINY, "--epochs", "2", "--out", half_run, "--resume")
    assert done.exit_code == 0, done.output
    assert load_run(half_run).result.epochs_run == 2


def test_resume_refuses_fewer_epochs(tmp_path):
    """A finished run of 2 epochs resumed with --epochs 1 trained nothing and rewrote
    results.json with epochs 1, so its run.yaml no longer reproduced it: refused instead."""
    out = tmp_path / "run"
    assert run_cli("train", *TINY, "--epochs", "2", "--out", out).exit_code == 0
    results = (out / "results.json").read_bytes()
    done = run_cli("train", *TINY, "--epochs", "1", "--out", out, "--resume")
    assert done.exit_code == 1, done.output
    assert "--epochs 1 is below the 2 the run was started with" in done.output
    assert len(done.output.strip().splitlines()) == 1
    assert (out / "results.json").read_bytes() == results


# -- exclusivity -----------------------------------------------------------------------------


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import sys, time
                from pathlib import Path
                from interfuse.run import lock_run_folder
                with lock_run_folder(Path({str(out)!r})):
                    print("locked", flush=True)
                    time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        done = run_cli("train", *TINY, "--epochs", "1", "--out", out)
        assert done.exit_code == 1
        assert f"being written by another process (PID {holder.pid})" in done.output
        assert not (out / "results.json").exists()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the lock with the process: the folder is usable again
    with lock_run_folder(out):
        pass


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with lock_run_folder(tmp_path), pytest.raises(RunFolderError, match=f"PID {os.getpid()}"):
        with lock_run_folder(tmp_path):
            pass


def test_a_lock_file_that_is_a_symbolic_link_is_not_followed(tmp_path):
    """A run folder copied with a .lock symlink (to any file of the user's): taking the lock
    truncated the link's target and wrote a PID into it."""
    precious = tmp_path / "notes.txt"
    precious.write_text("my notes\n")
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").symlink_to(precious)
    with pytest.raises(RunFolderError, match="lock file"), lock_run_folder(out):
        pass
    assert precious.read_text() == "my notes\n"


# -- defaults live in the library ------------------------------------------------------------


def test_dataset_defaults_apply_in_python_as_on_the_command_line(tmp_path):
    inputs, labels = offset_arrays(n=120)
    info = DatasetInfo(
        name="defaults-test",
        description="toy with its own defaults",
        task="classification",
        modalities=(ModalityInfo("tab", (6,), "features"),),
        loader=lambda seed=0: from_arrays(inputs, labels, seed=seed),
        source="memory",
        train_defaults={"lam": 0.01, "p": 1.0, "epochs": 1},
    )
    DATASETS.add(info.name, info)
    try:
        result = fit(load_dataset("defaults-test"), TrainConfig(), tmp_path / "a", progress=False)
        assert (result.config["lam"], result.config["p"], result.config["epochs"]) == (0.01, 1.0, 1)
        mine = fit(
            load_dataset("defaults-test"), TrainConfig(lam=0.2), tmp_path / "b", progress=False
        )
        assert (mine.config["lam"], mine.config["p"]) == (0.2, 1.0)  # what the caller set wins
    finally:
        DATASETS.remove(info.name)


def test_cli_options_are_the_train_config_fields():
    from dataclasses import fields

    command = main.commands["train"]
    options = {p.name: p for p in command.params}
    for f in fields(TrainConfig):
        assert f.name in options, f.name
        assert options[f.name].default == f.default, f.name
        assert options[f.name].help == f.metadata["help"] or f.name == "model"


@pytest.mark.parametrize("name", ["iterbn", "vbn", "compile", "sync_stats"])
def test_a_flag_that_is_not_a_bool_is_one_clear_error(name):
    """TrainConfig(compile="false") was accepted, and the truthy string switched compile on."""
    with pytest.raises(ValueError, match=f"{name} must be True or False, got 'false'"):
        TrainConfig(**{name: "false"})


def test_numpy_scalars_are_accepted_as_the_numbers_they_are():
    """TrainConfig(seed=np.int64(3)) was refused with "seed must be an integer >= 0, got 3"
    (and np.float32 rates likewise); they are now stored as Python numbers (JSON-safe)."""
    config = TrainConfig(seed=np.int64(3), rank=np.int32(4), lr=np.float32(0.5))
    assert (config.seed, config.rank, config.lr) == (3, 4, 0.5)
    assert type(config.seed) is int and type(config.lr) is float
    assert json.loads(json.dumps(config.to_dict()))["seed"] == 3
    with pytest.raises(ValueError, match="seed must be an integer"):
        TrainConfig(seed=np.bool_(True))


def test_resume_refuses_other_missing_modality_masks(tmp_path):
    """The data fingerprint hashes tensors and targets only: the same tensors with other masks
    (a task built in memory) resumed silently, mixing two missingness patterns in one run."""
    import dataclasses

    inputs, labels = offset_arrays(n=120)
    task = from_arrays(inputs, labels, seed=0)

    def with_masks(shift: int):
        def masked(split):
            keep = torch.ones(len(split), dtype=torch.bool)
            keep[shift : shift + len(split) // 4] = False  # as many missing, other samples
            return dataclasses.replace(split, masks={"aux": keep})

        splits = {s: masked(getattr(task, s)) for s in ("train", "val", "test")}
        return dataclasses.replace(task, **splits)

    out = tmp_path / "run"
    fit(with_masks(0), TrainConfig(epochs=1, batch_size=32, rank=2, seed=0), out, progress=False)
    longer = TrainConfig(epochs=2, batch_size=32, rank=2, seed=0)
    with pytest.raises(CheckpointError, match="other missing-modality masks"):
        fit(with_masks(3), longer, out, progress=False, resume=True)
    assert fit(with_masks(0), longer, out, progress=False, resume=True).config["epochs"] == 2


# -- results of an earlier model ---------------------------------------------------------------


class _CrashAfterFirstEpoch(pl.Callback):
    """Stops a resumed run after its first new epoch was saved (as a kill would)."""

    def on_train_epoch_end(self, trainer, pl_module):
        raise RuntimeError("stopped")


@pytest.fixture(scope="module")
def extended_run(tmp_path_factory):
    """A finished run resumed with more epochs and stopped after a better epoch was saved:
    best.safetensors holds a newer model than results.json was measured on."""
    inputs, labels = offset_arrays(n=300)
    task = from_arrays(inputs, labels, seed=0, name="offset")
    out = tmp_path_factory.mktemp("extended") / "run"
    config = TrainConfig(epochs=2, batch_size=64, rank=2, seed=0, lr=1e-2, restarts=0)
    fit(task, config, out, progress=False)
    finished = load_run(out)
    assert not finished.results_outdated
    before = (out / "best.safetensors").read_bytes()
    with pytest.raises(RuntimeError, match="stopped"):
        fit(
            task,
            replace(config, epochs=6),
            out,
            resume=True,
            progress=False,
            callbacks=[_CrashAfterFirstEpoch()],
        )
    assert (out / "best.safetensors").read_bytes() != before  # a newer best was saved
    return inputs, out


def test_results_of_an_earlier_model_are_flagged_by_load_run(extended_run):
    _, out = extended_run
    run = load_run(out)
    assert run.results_outdated and run.result is not None  # the results still load


def test_report_and_predict_say_the_results_are_of_an_earlier_model(extended_run, tmp_path):
    inputs, out = extended_run
    done = run_cli("report", out)
    assert done.exit_code == 0, done.output
    assert f"warning: {RESULTS_OUTDATED}" in done.output
    assert RESULTS_OUTDATED in (out / "report.md").read_text(encoding="utf-8")
    data = tmp_path / "new.npz"
    np.savez(data, **inputs)
    done = run_cli("predict", out, data, "--out", tmp_path / "p.csv")
    assert done.exit_code == 0, done.output  # the model still predicts
    assert done.output.count(RESULTS_OUTDATED) == 1
    assert (tmp_path / "p.csv").is_file()


def test_results_without_checkpoints_are_not_called_outdated(offset_run, tmp_path):
    """A folder whose checkpoints were deleted (results kept) holds no later model: report must
    not say results.json was measured on an earlier model than best.safetensors holds."""
    *_, out = offset_run
    folder = tmp_path / "results-only"
    shutil.copytree(out, folder)
    for checkpoint in folder.glob("*.safetensors"):
        checkpoint.unlink()
    assert not results_outdated(folder)
    done = run_cli("report", folder)
    assert done.exit_code == 0 and RESULTS_OUTDATED not in done.output
    assert RESULTS_OUTDATED not in (folder / "report.md").read_text(encoding="utf-8")


def test_results_of_the_model_in_best_are_not_flagged(offset_run, tmp_path):
    *_, out = offset_run
    assert load_run(out).result.model_sha256 == model_digest(out / "best.safetensors")
    assert not results_outdated(out)
    done = run_cli("report", out)
    assert done.exit_code == 0 and RESULTS_OUTDATED not in done.output
    # results of an older version (schema /5, no digest recorded) still load, unflagged
    folder = tmp_path / "old"
    shutil.copytree(out, folder)
    values = json.loads((folder / "results.json").read_text())
    del values["model_sha256"]
    values["schema"] = "interfuse-run/5"
    (folder / "results.json").write_text(json.dumps(values))
    run = load_run(folder)
    assert run.result.model_sha256 is None and not run.results_outdated
