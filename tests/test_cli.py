"""The command line: a small training run, report re-rendering, and one-line errors."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from interfuse.cli import main

TINY = ["--n", "300", "--epochs", "2", "--length", "40", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, list(args))


def test_help_explains_every_option():
    result = run("train", "--help")
    assert result.exit_code == 0
    for option in (
        "--probs",
        "--xor",
        "--xor-prob",
        "--interactions",
        "--rank",
        "--p",
        "--lam",
        "--no-iterbn",
        "--no-vbn",
        "--epochs",
        "--seed",
        "--out",
        "--resume",
    ):
        assert option in result.output


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    result = run("train", "--probs", "0.9,0", "--interactions", "m0*m1", *TINY, "--out", str(out))
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_writes_the_run_folder(tiny_run):
    out, output = tiny_run
    results = json.loads((out / "results.json").read_text())
    assert set(results["relevance"]["shares"]) == {"m0", "m1", "m0*m1"}
    assert results["config"]["interactions"] == ["m0*m1"]
    assert results["model"]["options"]["interactions"] == ["m0*m1"]
    assert "m0*m1" in output and "report:" in output


def test_report_rerenders_the_same_report_from_results_json(tiny_run):
    out, _ = tiny_run
    before = (out / "report.md").read_text()
    (out / "report.md").unlink()
    result = run("report", str(out))
    assert result.exit_code == 0, result.output
    assert (out / "report.md").read_text() == before
    shares = json.loads((out / "results.json").read_text())["relevance"]["shares"]
    assert "m0*m1" in before and f"{shares['m0']:.3f}" in before


def test_demo_end_to_end_on_a_tiny_setting_with_the_normalisation_comparison(tmp_path):
    out = tmp_path / "demo"
    args = ["--n", "300", "--epochs", "2", "--quiet", "--out", str(out)]
    result = run("demo", *args, "--compare-normalisation")
    assert result.exit_code == 0, result.output
    for name, terms in (("motif", 4 + 6), ("xor", 3 + 3), ("motif-no-normalisation", 4 + 6)):
        results = json.loads((out / name / "results.json").read_text())
        assert len(results["relevance"]["shares"]) == terms, name
        assert results["config"]["epochs"] == 2
        assert (out / name / "report.md").exists()
    off = json.loads((out / "motif-no-normalisation" / "results.json").read_text())["config"]
    assert off["iterbn"] is False and off["vbn"] is False
    assert "interaction share with IterBN+vBN:" in result.output
    assert any((out / "comparison").iterdir())


def test_resume_of_a_corrupt_checkpoint_fails_cleanly(tiny_run):
    out, _ = tiny_run
    before = (out / "results.json").read_bytes()
    last = out / "last.safetensors"
    original = last.read_bytes()
    last.write_bytes(original[: len(original) // 2])
    try:
        result = run(
            "train",
            "--probs",
            "0.9,0",
            "--interactions",
            "m0*m1",
            *TINY,
            "--out",
            str(out),
            "--resume",
        )
    finally:
        last.write_bytes(original)
    assert result.exit_code != 0
    assert "corrupt or truncated" in result.output and "Traceback" not in result.output
    assert (out / "results.json").read_bytes() == before  # nothing half-written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "imagenet"], "'imagenet' is not one of 'motif'"),
        (["--probs", "0.9,1.5"], "m1"),
        (["--probs", "0,0", "--xor", "0,5"], "out of range"),
        (["--probs", "0.9,abc"], "comma-separated numbers"),
        (["--p", "0.5"], "p must be >= 1"),
        (["--interactions", "m0*m9"], "unknown modality 'm9'"),
        # a misspelt keyword was read as a term: "term 'pair' names unknown modality 'pair'"
        (
            ["--interactions", "pair"],
            "unknown interaction specification 'pair'; use 'none', 'pairs'",
        ),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, args, message):
    out = tmp_path / "run"
    result = run("train", *TINY, "--out", str(out), *args)
    assert result.exit_code != 0
    assert message in result.output, result.output
    assert "Traceback" not in result.output
    assert not out.exists()  # nothing written for bad input


def test_a_data_warning_is_one_line(tmp_path):
    """The warning about float labels that look like classes came as Python's
    "…/arrays.py:658: UserWarning: …" followed by the source line "return from_arrays("."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 120).astype(float)
    np.savez(tmp_path / "d.npz", a=rng.normal(size=(120, 3)), labels=labels)
    result = run(
        "train", "--dataset", "npz", "--data-path", str(tmp_path / "d.npz"), "--epochs", "1",
        "--restarts", "0", "--quiet", "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "warning: float labels with only the values [0.0, 1.0] are treated as" in result.output
    assert "UserWarning" not in result.output and "from_arrays(" not in result.output


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run("train", *TINY, "--out", str(blocker / "run"))
    assert result.exit_code != 0 and "cannot create output folder" in result.output


def test_report_of_missing_folder(tmp_path):
    result = run("report", str(tmp_path / "nope"))
    assert result.exit_code != 0 and "nope" in result.output


def test_resume_with_other_modalities_names_the_difference(tiny_run):
    out, _ = tiny_run
    result = run(
        "train",
        "--probs",
        "0.9,0,0",
        "--interactions",
        "m0*m1",
        *TINY,
        "--out",
        str(out),
        "--resume",
    )
    assert result.exit_code != 0
    assert "modalities" in result.output and "['m0', 'm1', 'm2']" in result.output


def test_every_command_runs_in_a_fresh_interpreter(tmp_path):
    """Import cycles only show when a command is the first thing a process imports, so each
    command runs in its own process (cheaply: up to its first user error)."""
    import subprocess
    import sys

    missing = str(tmp_path / "missing")
    commands = [
        (["train", "--dataset", "imagenet", "--out", missing], "is not one of"),
        (["report", missing], "not found"),
        (["explain", missing], "not found"),
        (["predict", missing, missing + ".npz"], "not found"),
        (["convert", missing + ".pkl", missing + ".npz"], "not found"),
        (["datasets"], "motif"),
        (["demo", "--help"], "Usage"),
    ]
    for args, expected in commands:
        result = subprocess.run(
            [sys.executable, "-m", "interfuse", *args], capture_output=True, text=True, timeout=120
        )
        output = result.stdout + result.stderr
        assert "Traceback" not in output, (args, output[-2000:])
        assert expected in output, (args, output[-2000:])


def test_convert_overwrite_replaces_only_a_dataset_folder_that_does_not_hold_the_source(tmp_path):
    """--overwrite used to delete any existing TARGET folder, the source data inside it too."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    pool = data / "pool.npz"
    np.savez(pool, a=rng.normal(size=(40, 3)), labels=rng.integers(0, 2, 40))
    (data / "notes.txt").write_text("mine")
    result = run("convert", str(pool), str(data), "--overwrite")
    assert result.exit_code == 1 and "not a dataset folder" in result.output
    assert pool.exists() and (data / "notes.txt").read_text() == "mine"

    folder = tmp_path / "big"
    assert run("convert", str(pool), str(folder)).exit_code == 0
    inside = folder / "pool.npz"
    inside.write_bytes(pool.read_bytes())
    result = run("convert", str(inside), str(folder), "--overwrite")
    assert result.exit_code == 1 and "inside" in result.output
    assert inside.exists()
    result = run("convert", str(pool), str(folder), "--overwrite", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert (folder / "manifest.json").is_file() and not inside.exists()


def test_ctrl_c_outside_training_exits_130(monkeypatch, tmp_path):
    """EXIT_CODES: 130 is SIGINT and 1 invalid input, but Ctrl-C outside the training loop
    (reading a run, explaining, rendering) became click's 'Aborted!' with exit status 1."""
    import interfuse.cli.report as report_command

    def interrupted(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_command, "read_results", interrupted)
    result = run("report", str(tmp_path))
    assert result.exit_code == 130, result.output
    assert "interrupted" in result.output and "Traceback" not in result.output


def test_an_os_error_enomem_is_out_of_memory():
    """``OSError: [Errno 12] Cannot allocate memory`` (fork of a data-loader worker, mmap)
    exited 3, "file-system error", instead of 4, not enough memory."""
    import errno

    from interfuse.cli.app import EXIT_MEMORY, translate_error

    error = translate_error(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert error.exit_code == EXIT_MEMORY and "out of memory" in error.message
    assert "Cannot allocate memory [ENOMEM]" in error.message


def test_report_prints_what_train_printed(tiny_run):
    """``interfuse report`` printed the β-share table while ``train`` leads with the headline
    relevance estimator: both now end with the same summary of the run."""
    out, train_output = tiny_run
    result = run("report", str(out))
    assert result.exit_code == 0, result.output
    assert result.output.startswith("\n== ")
    summary = result.output[result.output.index("relevance:") :]
    assert summary in train_output
    assert f"report: {out / 'report.md'}" in summary


def test_a_folder_without_a_checkpoint_never_suggests_resume(tiny_run, tmp_path):
    """A folder holding a results.json that no run wrote (or a run's results without
    last.safetensors) was "a run; pass --resume to continue it", and --resume then failed
    ("nothing to resume"): the suggestion is now one that works."""
    import shutil

    args = ["train", "--probs", "0.9,0", *TINY]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "results.json").write_text('{"accuracy": 0.9}')
    result = run(*args, "--out", str(mine))
    assert result.exit_code == 1
    assert "results.json, not written by an interfuse run" in result.output
    assert "--resume" not in result.output and "--overwrite" in result.output
    copied = tmp_path / "copied"
    shutil.copytree(tiny_run[0], copied)
    (copied / "last.safetensors").unlink()
    result = run(*args, "--out", str(copied))
    assert result.exit_code == 1
    assert "without last.safetensors to resume from" in result.output
    assert "--resume" not in result.output and "--overwrite" in result.output
    assert (mine / "results.json").read_text() == '{"accuracy": 0.9}'
    result = run(*args, "--out", str(mine), "--overwrite")
    assert result.exit_code == 0, result.output


def test_an_unsupported_shape_says_what_to_do_on_the_command_line(tmp_path):
    """A 5-D array said "pass an encoder: encoders={'a': …}", a keyword of the Python API that
    the command line has no option for: it now says to reshape, or to train from Python."""
    data = tmp_path / "data.npz"
    np.savez(data, a=np.ones((40, 2, 2, 2, 2), np.float32), labels=np.arange(40) % 2)
    args = ["--dataset", "npz", "--data-path", str(data), "--out", str(tmp_path / "r")]
    result = run("train", *args)
    assert result.exit_code == 1
    assert "no default encoder" in result.output
    assert "reshape the array to one of these, or train from Python" in result.output
