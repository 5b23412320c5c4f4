"""Issue 16: every failure is one clear line with a documented exit code; no crafted file or
option exhausts memory; nothing half-written blocks a rerun.

Memory bombs run in a subprocess under an ``RLIMIT_AS`` limit (see ``_limited``)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from interfuse.cli import main
from interfuse.cli.app import EXIT_CODES
from interfuse.data.arrays import from_arrays, from_splits
from interfuse.data.preprocess import Preprocessor
from interfuse.data.registry import load_dataset
from interfuse.data.safe_pickle import PickleBudgetError, entry_name, safe_loads
from interfuse.train import TrainConfig, TrainingDiverged, fit

LIMIT_BYTES = 3 << 30  # address space of the memory-bomb subprocess (importing torch ~1 GiB)


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _one_line_error(result, code: int, *fragments: str) -> str:
    """Exit ``code``, no traceback, one ``Error:`` line holding every fragment."""
    output = result.output
    assert result.exit_code == code, output
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], output
    return errors[0]


def _limited(script: str, timeout: float = 120) -> dict:
    """Run ``script`` (which prints one JSON line last) under RLIMIT_AS in a new interpreter."""
    code = (
        f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({LIMIT_BYTES}, {LIMIT_BYTES}))\n"
        + textwrap.dedent(script)
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _tiny_task(n: int = 120, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    y = (x[:, 0] > 0).astype(int)
    return from_arrays({"a": x, "b": rng.normal(size=(n, 2))}, y, seed=seed)


# -- memory exhaustion from small inputs ---------------------------------------------------

BYTEARRAY_BOMB = (  # {'a': bytearray(2**30)}: 41 bytes asking for 1 GiB
    b"\x80\x02}X\x01\x00\x00\x00ac__builtin__\nbytearray\nJ\x00\x00\x00\x40\x85Rs."
)


def _memo_bomb(levels: int = 45) -> bytes:
    """Nested lists sharing memo entries: ~400 bytes expanding to 2^levels floats."""
    data = b"\x80\x02]q\x00(G?\xf0\x00\x00\x00\x00\x00\x00G?\xf0\x00\x00\x00\x00\x00\x00e"
    for i in range(1, levels):
        data += b"]q" + bytes([i]) + b"(h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"e"
    return data + b"."


def test_memory_bombs_are_refused_quickly_under_a_memory_limit(tmp_path):
    """bytearray(2^30), memo amplification, 12 modalities with all interactions, rank 20000:
    each refused with one line and exit 4 inside a 3 GiB address space, in seconds."""
    (tmp_path / "bytearray.pkl").write_bytes(BYTEARRAY_BOMB)
    (tmp_path / "memo.pkl").write_bytes(_memo_bomb())
    folder = str(tmp_path)
    report = _limited(
        f"""
        import json, time
        from click.testing import CliRunner
        from interfuse.cli import main
        folder = {folder!r}
        probs = ",".join(["0.5"] * 12)
        attacks = {{
            "bytearray": ["convert", folder + "/bytearray.pkl", folder + "/b.npz"],
            "memo": ["convert", folder + "/memo.pkl", folder + "/m.npz"],
            "all12": ["train", "--probs", probs, "--interactions", "all", "--n", "200",
                      "--out", folder + "/all12"],
            "rank": ["train", "--rank", "20000", "--n", "200", "--out", folder + "/rank"],
        }}
        out = {{}}
        for name, args in attacks.items():
            started = time.perf_counter()
            r = CliRunner().invoke(main, args)
            out[name] = [r.exit_code, r.output, time.perf_counter() - started,
                         repr(r.exception) if r.exit_code not in (0, 1, 2, 3, 4, 5) else ""]
        print(json.dumps(out))
        """
    )
    expected = {
        "bytearray": "refusing to build bytearray(1073741824)",
        "memo": "expands to",
        "all12": "lower --rank, --interactions",
        "rank": "rank 20000",
    }
    for name, fragment in expected.items():
        code, output, seconds, exception = report[name]
        assert code == 4, (name, output, exception)
        assert "Traceback" not in output and output.count("\n") == 1, (name, output)
        assert fragment in output, (name, output)
        assert seconds < 30, (name, seconds)
    assert not (tmp_path / "b.npz").exists() and not (tmp_path / "m.npz").exists()


def test_unpickler_caps_allocations_from_a_size_alone():
    for payload in (
        BYTEARRAY_BOMB,
        b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x40\x85R.",  # bytes(2^30)
        b"\x80\x02cnumpy\nndarray\nJ\x00\x00\x00\x40\x85R.",  # numpy.ndarray(2^30)
    ):
        with pytest.raises(PickleBudgetError, match="from a size alone"):
            safe_loads(payload, "bomb.pkl")
    with pytest.raises(PickleBudgetError, match="expands to"):
        safe_loads(_memo_bomb(30), "memo.pkl")
    nested = b"\x80\x02" + b"]" * 200 + b"a" * 199 + b"."  # 200 nested lists
    with pytest.raises(PickleBudgetError, match="nested deeper"):
        safe_loads(nested, "deep.pkl")
    # real numpy pickles (via _reconstruct) still load
    assert safe_loads(pickle.dumps({"x": np.arange(5.0)}), "ok")["x"].sum() == 10


# -- tracebacks instead of messages --------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A finished one-epoch motif run (n=300) for the commands that read a run folder."""
    out = tmp_path_factory.mktemp("hardening") / "run"
    result = _invoke("train", "--n", "300", "--epochs", "1", "--quiet", "--out", str(out))
    assert result.exit_code == 0, result.output
    return out


def test_disk_full_at_a_checkpoint_write_names_errno_and_path(tmp_path, monkeypatch):
    import interfuse.io as io_module

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full)
    out = tmp_path / "run"
    result = _invoke("train", "--n", "300", "--epochs", "1", "--quiet", "--out", str(out))
    _one_line_error(result, 3, "No space left on device [ENOSPC]", str(out))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("command", ["report", "explain", "predict"])
def test_read_only_file_system_is_one_line_with_errno(command, small_run, tmp_path, monkeypatch):
    import interfuse.io as io_module

    data = tmp_path / "x.npz"
    rng = np.random.default_rng(0)
    np.savez(data, m0=rng.normal(size=(4, 4, 100)))
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_WRONLY or flags & os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", path)
        return real_open(path, flags, *args)

    monkeypatch.setattr(io_module.os, "open", read_only)
    args = {
        "report": ["report", str(small_run)],
        "explain": ["explain", str(small_run), "--emap-samples", "0", "--quiet"],
        "predict": ["predict", str(small_run), str(data), "--out", str(tmp_path / "p.csv")],
    }[command]
    result = _invoke(*args)
    line = _one_line_error(result, 3, "Read-only file system [EROFS]")
    assert str(small_run) in line or str(tmp_path) in line


def test_predict_refuses_bad_outputs_and_inputs(small_run, tmp_path):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npz"
    np.savez(good, m0=rng.normal(size=(3, 4, 100)))
    zero = tmp_path / "zero.npz"
    np.savez(zero, m0=np.zeros((0, 4, 100)))
    (tmp_path / "folder").mkdir()
    cases = [
        (["--out", str(tmp_path / "folder")], good, "is a folder"),
        (["--out", str(tmp_path / "p.npy")], good, "name a .csv file"),
        (["--out", str(tmp_path / "no" / "p.csv")], good, "does not exist"),
        ([], zero, "has 0 samples"),
    ]
    for extra, data, fragment in cases:
        result = _invoke("predict", str(small_run), str(data), *extra)
        _one_line_error(result, 1, fragment)
    ints = tmp_path / "ints.npz"
    np.savez(ints, m0=rng.integers(0, 4, size=(3, 4, 100)), m1=rng.integers(0, 2, (3, 4, 100)))
    result = _invoke("predict", str(small_run), str(ints), "--out", str(tmp_path / "i.csv"))
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "i.csv").read_text().splitlines()) == 4
    huge = tmp_path / "huge.npz"
    np.savez(huge, m0=np.full((2, 4, 100), 1e300))
    _one_line_error(_invoke("predict", str(small_run), str(huge)), 1, "overflow", "huge.npz")


def test_predict_never_overwrites_its_input(small_run, tmp_path):
    """--out naming the DATA file itself (a name without .npz, or .csv) was overwritten with
    the CSV, destroying the input."""
    rng = np.random.default_rng(0)
    for name in ("data", "data.csv"):
        data = tmp_path / name
        with data.open("wb") as f:
            np.savez(f, m0=rng.normal(size=(3, 4, 100)))
        before = data.read_bytes()
        for out in (data, tmp_path / "." / name):
            result = _invoke("predict", str(small_run), str(data), "--out", str(out))
            _one_line_error(result, 1, "is the input data file")
        assert data.read_bytes() == before


def test_bad_evaluation_labels_are_named_not_nan_metrics(small_run, tmp_path):
    """Labels (N, 2) gave 'cannot reshape array of size 6 into shape (3,)' naming neither the
    file nor the labels; NaN or infinite regression labels printed NaN/inf metrics, exit 0."""
    rng = np.random.default_rng(0)
    data = tmp_path / "two.npz"
    np.savez(data, m0=rng.normal(size=(3, 4, 100)), labels=np.zeros((3, 2), dtype=int))
    previous = tmp_path / "p.csv"
    previous.write_text("earlier predictions\n")
    result = _invoke("predict", str(small_run), str(data), "--out", str(previous))
    _one_line_error(result, 1, "two.npz", "one label per sample", "(3, 2)")
    assert previous.read_text() == "earlier predictions\n"  # a failed command writes nothing
    regression = Preprocessor.fit("regression", {"a": rng.normal(size=(10, 2))})
    for bad in (np.nan, np.inf, 1e300):
        with pytest.raises(ValueError, match="new.npz: labels contain NaN or infinite"):
            regression.encode_labels(np.array([0.5, bad]), "new.npz")
    assert regression.encode_labels(np.array([[0.5], [1.0]])).tolist() == [0.5, 1.0]


def test_sequences_without_time_steps_are_named_not_an_argmax_error():
    """New sequences (N, 0, d) passed the shape check of a variable length and failed with
    'attempt to get argmax of an empty sequence', naming neither the file nor the modality."""
    rng = np.random.default_rng(0)
    train = {"seq": rng.normal(size=(10, 5, 3)), "tab": rng.normal(size=(10, 2))}
    new = {"seq": np.zeros((4, 0, 3)), "tab": rng.normal(size=(4, 2))}
    for standardize in (True, False):
        prep = Preprocessor.fit("regression", train, standardize=standardize)
        with pytest.raises(ValueError, match=r"new.npz: modality 'seq' has no features.*\(0, 3\)"):
            prep.transform(new, "new.npz")


def test_unexpected_stored_load_option_is_named(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, a=rng.normal(size=(60, 2)), labels=np.arange(60) % 2)
    with pytest.raises(ValueError, match="unknown load option"):
        load_dataset("npz", path=path, bogus=1)


def test_debug_flag_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "report", str(tmp_path / "missing")])
    assert result.exit_code != 0 and isinstance(result.exception, FileNotFoundError)
    plain = _invoke("report", str(tmp_path / "missing"))
    _one_line_error(plain, 1, "not found")


def test_unexpected_exceptions_are_one_line_with_exit_70(monkeypatch, tmp_path):
    import interfuse.cli.report as report_command

    def broken(folder):
        raise KeyError("boom")

    monkeypatch.setattr(report_command, "read_results", broken)
    _one_line_error(_invoke("report", str(tmp_path)), 70, "internal error: KeyError", "--debug")


def test_exit_codes_are_documented_in_help():
    result = _invoke("--help")
    for code in EXIT_CODES:
        assert f"{code:>3}  " in result.output


# -- silent wrong results ------------------------------------------------------------------


def _splits(train_y, val_y, test_y, n_features=3):
    rng = np.random.default_rng(0)

    def part(y):
        return {"a": rng.normal(size=(len(y), n_features))}, np.asarray(y)

    return {"train": part(train_y), "val": part(val_y), "test": part(test_y)}


def test_single_class_training_split_is_refused():
    with pytest.raises(ValueError, match="split 'train'.*only '1'"):
        from_splits(_splits([1] * 20, [0, 1], [0, 1]))


def test_class_unseen_in_training_is_refused():
    with pytest.raises(ValueError, match=r"split 'test': classes \['7'\]"):
        from_splits(_splits([0, 1] * 10, [0, 1], [0, 7]))


def test_nan_labels_are_refused_or_dropped_with_a_count(caplog):
    y = np.array([0.0, 1.0] * 30)
    y[5] = np.nan
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(60, 2))}
    with pytest.raises(ValueError, match="1 of 60 labels are NaN"):
        from_arrays(x, y, task="classification")
    with caplog.at_level("WARNING", logger="interfuse"):
        task = from_arrays(x, y, task="classification", drop_nan_labels=True)
    assert len(task.train) + len(task.val) + len(task.test) == 59
    assert "dropped 1 of 60" in caplog.text


def test_overflowing_features_keep_their_signal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 3))
    y = (x[:, 0] > 0).astype(int)
    task = from_arrays({"a": x * 1e300}, y)
    z = task.train.inputs["a"]
    assert np.isfinite(z.numpy()).all() and 0.9 < float(z.std()) < 1.1
    with pytest.raises(ValueError, match="overflow"):
        from_arrays({"a": x * 1e300}, y, standardize=False)


# -- misleading messages -------------------------------------------------------------------


def test_diverging_loss_stops_at_once_naming_step_and_lr(tmp_path):
    result = _invoke(
        "train",
        "--n",
        "300",
        "--epochs",
        "2",
        "--lr",
        "1e6",
        "--quiet",
        "--out",
        str(tmp_path / "run"),
    )
    _one_line_error(result, 5, "training diverged", "step", "learning rate 1e+06", "--lr")
    # nothing was saved, and a rerun needs no --overwrite
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_divergence_after_a_good_epoch_keeps_last_checkpoint_resumable(tmp_path, monkeypatch):
    import interfuse.train.runner as runner

    task = _tiny_task()
    original = runner.RunRecorder.on_before_backward

    def poison(self, trainer, module, loss):
        if self.run.state.epoch >= 1:  # the second epoch diverges
            loss = loss * float("nan")
        original(self, trainer, module, loss)

    monkeypatch.setattr(runner.RunRecorder, "on_before_backward", poison)
    with pytest.raises(
        TrainingDiverged, match=r"step \d+ \(epoch 2\).*\(epoch 1\) is the last good checkpoint"
    ):
        fit(task, TrainConfig(restarts=0, epochs=3, batch_size=32), tmp_path, progress=False)
    monkeypatch.setattr(runner.RunRecorder, "on_before_backward", original)
    result = fit(
        task,
        TrainConfig(restarts=0, epochs=3, batch_size=32),
        tmp_path,
        resume=True,
        progress=False,
    )
    assert result.epochs_run == 3


@pytest.mark.parametrize("where", ["validation", "training step"])
def test_a_diverging_restart_names_the_restart_learning_rate(tmp_path, monkeypatch, where):
    """A restart trains at ``restart_lr``: its divergence names that rate and option, not the
    first attempt's ``lr`` (which it used to blame: "the learning rate 1e-09 is likely too
    high")."""
    import interfuse.train.runner as runner

    if where == "training step":  # the restart's second step diverges
        original = runner.RunRecorder.on_before_backward

        def poison(self, trainer, module, loss):
            if self.run.state.attempt and trainer.global_step > 1 + self.run.state.attempt_start:
                loss = loss * float("nan")
            original(self, trainer, module, loss)

        monkeypatch.setattr(runner.RunRecorder, "on_before_backward", poison)
    # the restart's first step sends the weights to ~1e30: the validation loss is not finite
    restart_lr = 1e30 if where == "validation" else 1e-2
    config = TrainConfig(epochs=1, lr=1e-9, restarts=1, restart_lr=restart_lr, batch_size=32)
    with pytest.raises(TrainingDiverged) as raised:
        fit(_tiny_task(), config, tmp_path, progress=False, log=lambda line: None)
    message = str(raised.value)
    assert f"learning rate {restart_lr:g}" in message and "--restart-lr" in message, message
    assert "1e-09" not in message


def test_data_errors_name_the_split_modality_and_option(tmp_path):
    with pytest.raises(ValueError, match="no samples"):
        from_arrays({"a": np.zeros((0, 3))}, np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match="split 'val': the split is empty"):
        from_splits(_splits([0, 1] * 5, [], [0, 1]))
    with pytest.raises(ValueError, match="modality 'a' has no features"):
        from_splits(_splits([0, 1] * 5, [0, 1], [0, 1], n_features=0))
    _one_line_error(_invoke("train", "--seed", "-1", "--out", str(tmp_path)), 2, "--seed")
    _one_line_error(_invoke("train", "--data-seed", "-1", "--out", str(tmp_path)), 2, "--data-seed")


def test_truncated_results_json_is_named(small_run, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in small_run.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "results.json").write_text((small_run / "results.json").read_text()[:100])
    for command in ("explain", "report"):
        _one_line_error(_invoke(command, str(broken)), 1, str(broken / "results.json"))


def test_deeply_nested_json_in_a_run_folder_is_one_line_not_an_internal_error(small_run, tmp_path):
    """A few hundred kilobytes of nested brackets in results.json, a checkpoint header,
    explain.json or config.json raised RecursionError: exit 70, "a bug", instead of the file
    named as malformed (exit 1)."""
    import torch
    from safetensors.torch import save

    from interfuse.checkpoint import CheckpointError, read_header
    from interfuse.run import explanations_outdated

    deep = "[" * 100_000 + "]" * 100_000
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in small_run.iterdir():
        if f.is_file():
            (broken / f.name).write_bytes(f.read_bytes())
    (broken / "explain.json").write_text(deep)
    assert explanations_outdated(broken) is False  # unreadable: explain writes it anew
    (broken / "results.json").write_text(deep)
    for command in ("explain", "report"):
        _one_line_error(_invoke(command, str(broken)), 1, str(broken / "results.json"))
    (broken / "best.safetensors").write_bytes(
        save({"model.x": torch.zeros(1)}, metadata={"interfuse": deep})
    )
    with pytest.raises(CheckpointError, match="best.safetensors"):
        read_header(broken / "best.safetensors")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_text(deep)
    _one_line_error(
        _invoke("train", "--n", "300", "--epochs", "1", "--quiet", "--out", str(fresh)),
        1,
        "config.json, not written by",
    )


# -- half-written state --------------------------------------------------------------------


def test_a_run_killed_before_its_first_checkpoint_can_be_rerun(tmp_path, caplog):
    """A kill during the first write of last.safetensors leaves config.json, best.safetensors
    and a temporary file: a plain rerun (and --resume) start afresh, saying so."""
    task = _tiny_task()
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    (out / "best.safetensors").write_bytes(b"stale")
    stale = out / ".last.safetensors.0123456789ab.tmp"
    stale.write_bytes(b"half")
    with caplog.at_level("INFO", logger="interfuse"):
        result = fit(task, TrainConfig(restarts=0, epochs=1, batch_size=32), out, progress=False)
    assert result.epochs_run == 1
    assert not stale.exists()
    assert "first checkpoint never completed" in caplog.text
    assert "removed 1 unfinished temporary file" in caplog.text
    (out / "last.safetensors").unlink()
    (out / "results.json").unlink()
    fit(task, TrainConfig(restarts=0, epochs=1, batch_size=32), out, resume=True, progress=False)


def test_a_baseline_killed_before_its_first_checkpoint_resumes_afresh(tmp_path, monkeypatch):
    """Baselines wrote no config.json (only the MNL model did), so a baseline killed in its
    first epoch left a folder that --resume refused ("nothing to resume") although such a run
    starts afresh with or without --resume (docs/run-folder.md §7)."""
    import interfuse.train.runner as runner

    class Killed(Exception):
        pass

    def kill(self, name, optimizer=None):
        raise Killed

    task = _tiny_task()
    config = TrainConfig(model="late", restarts=0, epochs=1, batch_size=32)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(runner._Run, "save", kill)  # killed before its first checkpoint
        with pytest.raises(Killed):
            fit(task, config, out, progress=False)
    assert json.loads((out / "config.json").read_text())["config"]["model"] == "late"
    assert fit(task, config, out, resume=True, progress=False).epochs_run == 1


def test_a_best_checkpoint_newer_than_the_last_is_never_reported_as_the_selected_model(
    tmp_path, monkeypatch
):
    """Killed between writing best.safetensors and last.safetensors of an epoch, then resumed
    with settings that do not train that epoch again (here the --epochs it was started with):
    results.json named the last checkpoint's best epoch but its metrics, and predict, came
    from the newer model in best.safetensors. Refused, naming both files."""
    import interfuse.train.runner as runner
    from interfuse.checkpoint import CheckpointError, read_header

    class Killed(Exception):
        pass

    task = _tiny_task()
    config = TrainConfig(restarts=0, epochs=1, batch_size=32, lr=1e-2)
    out = tmp_path / "run"
    fit(task, config, out, progress=False)
    save = runner._Run.save

    def killed_after_best(self, name, optimizer=None):
        if name == "last.safetensors" and self.state.epoch == 2:
            raise Killed
        save(self, name, optimizer)

    with monkeypatch.context() as patch:
        patch.setattr(runner._Run, "save", killed_after_best)
        with pytest.raises(Killed):
            fit(task, config.replace(epochs=2), out, resume=True, progress=False)
    assert read_header(out / "best.safetensors")[0]["state"]["best_epoch"] == 2
    assert read_header(out / "last.safetensors")[0]["state"]["epoch"] == 1
    with pytest.raises(CheckpointError, match="best.safetensors holds the model of epoch 2"):
        fit(task, config, out, resume=True, progress=False)
    # resumed as interrupted, the epoch is trained again and the files agree
    assert fit(task, config.replace(epochs=2), out, resume=True, progress=False).best_epoch == 2


def test_a_run_finished_while_a_second_writer_waited_for_the_lock_is_kept(tmp_path, monkeypatch):
    """The folder was checked before its lock was taken: a run that finished in between (its
    first epoch under way at the check, so the folder counted as never checkpointed) had its
    results.json and checkpoints deleted by the second writer, which then trained over it."""
    import contextlib

    import interfuse.train.runner as runner
    from interfuse.run import RunFolderError

    task = _tiny_task()
    config = TrainConfig(restarts=0, epochs=1, batch_size=32)
    finished = tmp_path / "finished"
    fit(task, config, finished, progress=False)
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_bytes((finished / "config.json").read_bytes())
    lock = runner.lock_run_folder

    @contextlib.contextmanager
    def first_run_finishes_meanwhile(folder):
        for name in ("results.json", "last.safetensors", "best.safetensors"):
            (out / name).write_bytes((finished / name).read_bytes())
        with lock(folder):
            yield

    monkeypatch.setattr(runner, "lock_run_folder", first_run_finishes_meanwhile)
    with pytest.raises(RunFolderError, match="already holds a run"):
        fit(task, config, out, progress=False)
    assert (out / "results.json").read_bytes() == (finished / "results.json").read_bytes()
    assert (out / "last.safetensors").exists() and (out / "best.safetensors").exists()


@pytest.mark.parametrize(
    "edit",
    [
        lambda state: state.update(bogus=1),
        lambda state: state.update(epoch="3"),
        lambda state: state.update(history=[1, 2]),
        lambda state: state.pop("epoch"),
    ],
    ids=["unknown-entry", "epoch-text", "history-numbers", "no-epoch"],
)
def test_a_checkpoint_with_a_malformed_training_state_is_refused_on_resume(tmp_path, edit):
    """A last.safetensors whose training state was edited and its SHA-256 recomputed (it is a
    checksum, not a signature) failed on resume with TypeError deep in training: exit 70,
    "a bug", or trained from a wrong epoch."""
    from interfuse.checkpoint import CheckpointError

    task, config = _edited_last_checkpoint(tmp_path, lambda header, _: edit(header["state"]))
    with pytest.raises(CheckpointError, match="last.safetensors: malformed training state"):
        fit(task, config.replace(epochs=2), tmp_path, resume=True, progress=False)


def _edited_last_checkpoint(tmp_path, edit):
    """``(task, config)`` of a 1-epoch run in ``tmp_path`` whose last.safetensors was passed
    through ``edit(header, optimizer_state)`` and saved again with its checksum recomputed."""
    from interfuse.checkpoint import load_checkpoint, save_checkpoint

    task = _tiny_task()
    config = TrainConfig(restarts=0, epochs=1, batch_size=32)
    fit(task, config, tmp_path, progress=False)
    last = tmp_path / "last.safetensors"
    model, header, optimizer = load_checkpoint(last)
    extra = header.pop("tensors")
    edit(header, optimizer)
    save_checkpoint(last, model, header, optimizer, extra=extra)
    return task, config


def test_an_optimiser_state_of_other_shapes_is_refused_on_resume(tmp_path):
    """An optimiser moment of another shape than its parameter (header edited, checksum
    recomputed) was loaded as it was: it broadcast into the update, and the resumed run
    stopped as "diverged" blaming the learning rate."""
    import torch

    from interfuse.checkpoint import CheckpointError

    def edit(header, optimizer):
        moments = next(v for v in optimizer["state"].values() if v["exp_avg"].dim() > 0)
        moments["exp_avg"] = torch.zeros(3)

    task, config = _edited_last_checkpoint(tmp_path, edit)
    with pytest.raises(CheckpointError, match="last.safetensors: the optimiser state"):
        fit(task, config.replace(epochs=2), tmp_path, resume=True, progress=False)


def test_training_into_a_folder_of_the_users_never_replaces_its_files(tmp_path):
    """A folder holding the user's config.json and report.md (no run) was trained into and
    both files were silently replaced; a run's own config.json (killed in its first epoch)
    still starts afresh."""
    from interfuse.run import RunFolderError

    task = _tiny_task()
    out = tmp_path / "project"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "report.md").write_text("my notes")
    with pytest.raises(RunFolderError, match="config.json, report.md, not written by"):
        fit(task, TrainConfig(restarts=0, epochs=1, batch_size=32), out, progress=False)
    assert (out / "config.json").read_text() == '{"my": "settings"}'
    assert (out / "report.md").read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "report.md"]
    fit(task, TrainConfig(restarts=0, epochs=1, batch_size=32), out, overwrite=True, progress=False)
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "config.json").write_text((out / "config.json").read_text())
    (killed / "history.csv").write_text("epoch\n")
    assert (
        fit(
            task, TrainConfig(restarts=0, epochs=1, batch_size=32), killed, progress=False
        ).epochs_run
        == 1
    )


def test_a_best_safetensors_that_no_run_wrote_is_never_deleted(tmp_path):
    """A folder holding the user's own best.safetensors (another tool's weights) counted as a
    run killed before its first checkpoint: training deleted the file and started."""
    import torch
    from safetensors.torch import save_file

    from interfuse.run import RunFolderError

    out = tmp_path / "models"
    out.mkdir()
    save_file({"w": torch.ones(3)}, out / "best.safetensors")
    mine = (out / "best.safetensors").read_bytes()
    config = TrainConfig(restarts=0, epochs=1, batch_size=32)
    with pytest.raises(RunFolderError, match=r"best\.safetensors, not written by an interfuse"):
        fit(_tiny_task(), config, out, progress=False)
    with pytest.raises(RunFolderError, match="nothing to resume"):
        fit(_tiny_task(), config, out, resume=True, progress=False)
    assert (out / "best.safetensors").read_bytes() == mine


def test_stale_temporaries_are_removed_on_resume(tmp_path):
    task = _tiny_task()
    fit(task, TrainConfig(epochs=1, batch_size=32), tmp_path, progress=False)
    stale = tmp_path / ".history.csv.abcdef012345.tmp"
    stale.write_text("x")
    keep = tmp_path / "notes.tmp"  # not ours: kept
    keep.write_text("x")
    fit(task, TrainConfig(epochs=2, batch_size=32), tmp_path, resume=True, progress=False)
    assert not stale.exists() and keep.exists()


# -- names in archives ---------------------------------------------------------------------


def test_convert_refuses_unsafe_entry_names(tmp_path):
    for key in ("../../x", "/abs/path", "a\\b", "C:evil"):
        source = tmp_path / "names.pkl"
        source.write_bytes(pickle.dumps({key: np.zeros(3), "fine": np.ones(2)}))
        target = tmp_path / "names.npz"
        _one_line_error(_invoke("convert", str(source), str(target)), 1, "refusing the key")
        assert not target.exists()
    source.write_bytes(pickle.dumps({"train": {"text features": np.zeros(3)}}))
    assert _invoke("convert", str(source), str(target)).exit_code == 0
    assert zipfile.ZipFile(target).namelist() == ["train/text features.npy"]
    assert entry_name("train/vision") == "train/vision"


def test_meta_device_model_or_inputs_are_refused_in_one_line():
    import torch

    from interfuse.inference import model_outputs, predict
    from interfuse.models import build_model, model_spec

    task = _tiny_task()
    spec = model_spec("intense", task.encoders, TrainConfig(), task.num_outputs)
    meta = build_model(spec, device="meta")
    with pytest.raises(ValueError, match="meta device"):
        predict(meta, task.test.inputs)
    with pytest.raises(ValueError, match="meta device"):
        model_outputs(meta, task.test)
    model = build_model(spec, seed=0)
    inputs = {m: torch.empty(x.shape, device="meta") for m, x in task.test.inputs.items()}
    with pytest.raises(ValueError, match="meta device"):
        predict(model, inputs)


def test_a_seeded_build_leaves_every_global_generator_as_it_was(monkeypatch):
    """``build_model(seed=...)`` reseeded the CUDA generators through ``torch.manual_seed`` (lazily
    on a machine without a GPU), which its ``fork_rng(devices=[])`` does not restore: global
    random state changed on every GPU machine, against its docstring."""
    import torch

    from interfuse.models import build_model, model_spec

    reseeded = []
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: reseeded.append(seed))
    task = _tiny_task()
    spec = model_spec("intense", task.encoders, TrainConfig(), task.num_outputs)
    state = torch.get_rng_state()
    first, second = build_model(spec, seed=3), build_model(spec, seed=3)
    assert reseeded == [] and torch.equal(torch.get_rng_state(), state)
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        assert torch.equal(a, b)  # seeded: the same model twice


def test_model_call_with_integer_or_meta_inputs_is_one_line():
    """``model(...)``: integer inputs an encoder cannot take, or meta tensors, are named."""
    import torch
    from torch import nn

    from interfuse import MultimodalModel

    model = MultimodalModel(
        {"a": nn.Linear(3, 4), "b": nn.Linear(2, 4)}, encoder_dims={"a": 4, "b": 4}
    )
    floats = torch.randn(5, 2)
    with pytest.raises(ValueError, match="modality 'a': its encoder cannot take torch.int64"):
        model({"a": torch.ones(5, 3, dtype=torch.long), "b": floats})
    with pytest.raises(ValueError, match="modality 'a': the input is on the meta device"):
        model({"a": torch.empty(5, 3, device="meta"), "b": floats})
    with torch.device("meta"):
        skeleton = MultimodalModel({"a": nn.Linear(3, 4)}, encoder_dims={"a": 4})
    with pytest.raises(ValueError, match="the model is on the meta device"):
        skeleton({"a": torch.randn(4, 3)})


def test_a_closed_stdout_pipe_stops_quietly():
    """`interfuse datasets | head`: the reader goes away; no "Error: Broken pipe" line, no
    traceback at exit, the documented status 128 + SIGPIPE."""
    process = subprocess.Popen(
        [sys.executable, "-m", "interfuse", "datasets"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # before the command writes its first line
    _, err = process.communicate(timeout=120)
    assert process.returncode == 141 and err == "", (process.returncode, err)


@pytest.mark.parametrize("command", ["report", "predict"])
def test_a_file_given_for_the_run_folder_is_named(small_run, tmp_path, command):
    """`interfuse predict run/results.json data.npz`: the path exists, it is just not a folder."""
    args = [str(small_run / "results.json")]
    if command == "predict":
        np.savez(tmp_path / "x.npz", m0=np.zeros((2, 4, 10)))
        args.append(str(tmp_path / "x.npz"))
    message = _one_line_error(_invoke(command, *args), 1, "is a file, not a run folder")
    assert f"the run folder is {small_run}" in message


def _npy_bytes(shape, body: bytes) -> bytes:
    """An .npy file whose header declares float32 ``shape``, followed by ``body``."""
    import io

    stream = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(stream, header)
    return stream.getvalue() + body


def test_an_array_header_declaring_more_than_its_file_holds_is_refused_unallocated(tmp_path):
    from interfuse.data.arrays import read_arrays

    crafted = _npy_bytes((100_000_000, 1000), np.zeros(6, np.float32).tobytes())  # 373 GiB
    (tmp_path / "m0.npy").write_bytes(crafted)
    with zipfile.ZipFile(tmp_path / "data.npz", "w") as archive:
        archive.writestr("m0.npy", crafted)
    for name in ("m0.npy", "data.npz"):
        with pytest.raises(ValueError, match=r"declares 372.5 GiB of data but the file holds 24 B"):
            read_arrays(tmp_path / name)
    fine = _npy_bytes((2, 3), np.arange(6, dtype=np.float32).tobytes())
    (tmp_path / "ok.npy").write_bytes(fine)
    assert read_arrays(tmp_path / "ok.npy")["ok"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_archive_members_without_the_npy_suffix_are_checked_too(tmp_path, monkeypatch):
    """np.load reads a member named ``m0`` (no ``.npy``) as an array as well: its declared size
    was not checked, so a truncated header raised MemoryError (373 GiB) and a deflated member
    inflated past the available memory."""
    import interfuse.data.arrays as arrays

    crafted = _npy_bytes((100_000_000, 1000), np.zeros(6, np.float32).tobytes())  # 373 GiB
    with zipfile.ZipFile(tmp_path / "crafted.npz", "w") as archive:
        archive.writestr("m0", crafted)
    with pytest.raises(ValueError, match=r"array 'm0': its header declares 372.5 GiB"):
        arrays.read_arrays(tmp_path / "crafted.npz")
    zeros = _npy_bytes((512, 1024), np.zeros((512, 1024), np.float32).tobytes())  # 2 MiB
    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a", zeros)
    monkeypatch.setattr(arrays, "available_memory", lambda: 1 << 20)
    with pytest.raises(ValueError, match=r"would take 2.0 MiB, more than the 1.0 MiB"):
        arrays.read_arrays(tmp_path / "bomb.npz")
    monkeypatch.setattr(arrays, "available_memory", lambda: 64 << 20)
    assert arrays.read_arrays(tmp_path / "bomb.npz")["a"].shape == (512, 1024)


def test_a_compressed_archive_that_would_not_fit_in_memory_is_refused_before_inflating(
    tmp_path, monkeypatch
):
    """A few KiB of deflated zeros can declare gigabytes; the members' sizes are summed and
    checked against the available memory before np.load allocates (here: 1 MiB available)."""
    import interfuse.data.arrays as arrays

    np.savez_compressed(tmp_path / "bomb.npz", a=np.zeros((512, 1024), np.float32), b=np.zeros(3))
    assert (tmp_path / "bomb.npz").stat().st_size < 10_000  # 2 MiB of zeros, deflated
    monkeypatch.setattr(arrays, "available_memory", lambda: 1 << 20)
    with pytest.raises(ValueError, match=r"would take 2.0 MiB, more than the 1.0 MiB"):
        arrays.read_arrays(tmp_path / "bomb.npz")
    monkeypatch.setattr(arrays, "available_memory", lambda: 64 << 20)
    assert arrays.read_arrays(tmp_path / "bomb.npz")["a"].shape == (512, 1024)


def test_archive_members_that_are_not_arrays_are_checked_before_inflating(tmp_path, monkeypatch):
    """np.load returns a member that does not start like an .npy file as its raw bytes, read
    whole: 4 KiB of deflated zeros named ``notes.txt`` inflated to 4 MiB (so 4 MiB of file to
    4 GiB) past the available memory, unchecked."""
    import interfuse.data.arrays as arrays

    with zipfile.ZipFile(tmp_path / "bomb.npz", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("labels.npy", _npy_bytes((2,), np.zeros(2, np.float32).tobytes()))
        archive.writestr("notes.txt", bytes(4 << 20))
    assert (tmp_path / "bomb.npz").stat().st_size < 10_000
    monkeypatch.setattr(arrays, "available_memory", lambda: 1 << 20)
    with pytest.raises(ValueError, match=r"'notes.txt'.* would take 4.0 MiB, more than the 1.0"):
        arrays.read_arrays(tmp_path / "bomb.npz")


def _patched(data: bytes, *changes: tuple[int, int]) -> bytes:
    raw = bytearray(data)
    for position, value in changes:
        raw[position] = value
    return bytes(raw)


def test_a_corrupt_or_encrypted_archive_is_one_line_naming_it(tmp_path):
    """A damaged download (bad CRC, broken deflate stream), an encrypted archive or one using a
    compression method zipfile lacks raised BadZipFile, zlib.error, RuntimeError or
    NotImplementedError from inside zipfile, none naming the archive."""
    from interfuse.data.arrays import read_arrays

    array = _npy_bytes((64,), np.arange(64, dtype=np.float32).tobytes())
    for method in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        with zipfile.ZipFile(tmp_path / "good.npz", "w", method) as archive:
            archive.writestr("x.npy", array)
        good = (tmp_path / "good.npz").read_bytes()
        central = good.rfind(b"PK\x01\x02")
        data = 30 + len("x.npy")  # the member's data follows its local header
        cases = {
            "flipped": _patched(good, (data + 10, good[data + 10] ^ 0xFF)),
            "encrypted": _patched(good, (6, good[6] | 1), (central + 8, good[central + 8] | 1)),
            "method 99": _patched(good, (8, 99), (central + 10, 99)),
        }
        for what, content in cases.items():
            (tmp_path / "bad.npz").write_bytes(content)
            with pytest.raises(ValueError, match=r"bad.npz: cannot read the archive") as error:
                read_arrays(tmp_path / "bad.npz")
            assert "\n" not in str(error.value), what


def test_an_npz_that_does_not_start_as_an_archive_is_refused(tmp_path):
    """np.load reads a file that starts like an .npy file as one array, whatever follows: an
    .npy header with an archive appended passed the archive's checks, then np.load allocated
    the 8 TiB its header declared (MemoryError) or returned an array where an archive was
    expected (TypeError)."""
    from interfuse.data.arrays import read_arrays

    tail = tmp_path / "tail.npz"
    with zipfile.ZipFile(tail, "w") as archive:
        archive.writestr("x.npy", _npy_bytes((2,), np.zeros(2, np.float32).tobytes()))
    for shape in ((1 << 41,), (2,)):
        head = _npy_bytes(shape, np.zeros(2, np.float32).tobytes())
        (tmp_path / "odd.npz").write_bytes(head + tail.read_bytes())
        with pytest.raises(ValueError, match=r"odd.npz: not an .npz archive"):
            read_arrays(tmp_path / "odd.npz")


def test_a_mask_of_the_wrong_length_is_named_when_nan_labels_are_dropped(tmp_path):
    """With drop_nan_labels the masks were indexed by the labels kept before their length was
    checked: IndexError "boolean index did not match" from numpy."""
    from interfuse.data.arrays import load_npz_dataset

    labels = np.array(["yes", "no"] * 20)
    labels[3] = "nan"
    x = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match=r"mask of modality 'a' must hold one .* \(40\)"):
        from_arrays({"a": x}, labels, masks={"a": np.ones(39, bool)}, drop_nan_labels=True)
    np.savez(tmp_path / "d.npz", a=x, labels=labels, a__mask=np.ones(39, bool))
    with pytest.raises(ValueError, match=r"d.npz: the mask of modality 'a' must hold one"):
        load_npz_dataset(tmp_path / "d.npz", drop_nan_labels=True)
    with pytest.raises(ValueError, match=r"masks given for unknown modalities \['b'\]"):
        from_arrays({"a": x}, labels, masks={"b": np.ones(39, bool)}, drop_nan_labels=True)


def test_an_archive_named_npy_is_refused(tmp_path):
    """np.load reads a zip as an archive whatever its name: ``labels.npy`` holding an archive
    came back as an unchecked NpzFile instead of an array (then "there are 1 labels")."""
    from interfuse.data.arrays import read_arrays

    np.savez(tmp_path / "labels.npz", labels=np.arange(4))
    (tmp_path / "labels.npz").rename(tmp_path / "labels.npy")
    with pytest.raises(ValueError, match=r"labels.npy: an .npz archive, not an .npy file"):
        read_arrays(tmp_path / "labels.npy")


def test_an_object_array_is_named_as_such_not_as_truncated(tmp_path):
    """An object array (numpy pickles it) was refused as "its header declares 2.3 KiB of data
    but the file holds 757 B (truncated, or not a valid .npy)": the 8-byte pointers of its
    header's dtype counted as its data."""
    from interfuse.data.arrays import read_arrays

    labels = np.array([{"x": 1}] * 300, dtype=object)
    np.savez(tmp_path / "d.npz", a=np.zeros((300, 2)), labels=labels)
    np.save(tmp_path / "labels.npy", labels, allow_pickle=True)
    for name, where in (("d.npz", "d.npz, array 'labels'"), ("labels.npy", "labels.npy")):
        with pytest.raises(ValueError, match=rf"{where}: an object array") as error:
            read_arrays(tmp_path / name)
        assert "truncated" not in str(error.value)
    result = _invoke(
        "train",
        "--dataset",
        "npz",
        "--data-path",
        str(tmp_path / "d.npz"),
        "--out",
        str(tmp_path / "run"),
    )
    _one_line_error(result, 1, "array 'labels': an object array")
