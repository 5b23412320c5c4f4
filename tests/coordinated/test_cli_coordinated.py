"""`interfuse coordinated …` on tiny settings: files written, summaries, one-line errors."""

import json

import pytest
from click.testing import CliRunner

from interfuse.cli import main
from interfuse.data.mfeat import mfeat_files

TINY = ["--n-train", "48", "--n-test", "12", "--epochs", "1", "--threads", "1"]


def run(*args):
    return CliRunner().invoke(main, ["coordinated", *args])


def _check(out, task):
    for name in ("results.json", "report.md", "figure.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "results.json").read_text())
    assert data["task"] == task
    assert (out / "figure.png").read_bytes()[:4] == b"\x89PNG"
    return data


@pytest.mark.parametrize(
    ("task", "extra"),
    [
        ("zeroshot", ["--text", "bow"]),
        ("retrieval", ["--text", "bow"]),
        ("grounding", []),
        ("grounding", ["--equivariance", "0"]),
        ("caption", ["--text", "bow"]),
    ],
)
def test_scene_commands_write_results_report_and_figure(tmp_path, task, extra):
    out = tmp_path / task
    result = run(task, "--out", str(out), *TINY, *extra)
    assert result.exit_code == 0, result.output
    data = _check(out, task)
    assert data["seed"] == 0
    assert "report:" in result.output
    if task == "grounding":  # the option reaches the run and is recorded with its settings
        assert data["settings"]["equivariance"] == (0.0 if extra else 0.1)


def test_colearn_and_summarize(tmp_path):
    try:
        mfeat_files()
    except FileNotFoundError:
        pytest.skip("mfeat data not installed")
    folders = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        result = run("colearn", "--out", str(out), "--seed", str(seed), "--epochs", "5")
        assert result.exit_code == 0, result.output
        data = _check(out, "colearn")
        assert data["fractions"] == [0.05, 0.1]
        folders.append(str(out))
    summary = run("summarize", *folders)
    assert summary.exit_code == 0, summary.output
    assert "weak_helped@5%" in summary.output and "±" in summary.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["colearn", "--weak", "nope", "--out", "x"], "unknown mfeat view 'nope'"),
        (["colearn", "--fractions", "0.5,1.5", "--out", "x"], "label fractions"),
        (["zeroshot", "--text", "glove", "--out", "x"], "Invalid value for '--text'"),
        (["retrieval", "--epochs", "0", "--out", "x"], "Invalid value for '--epochs'"),
        (["grounding", "--equivariance", "-1", "--out", "x"], "Invalid value for '--equivariance'"),
        (["grounding", "--equivariance", "nan", *TINY, "--out", "x"], "equivariance must be"),
        (["grounding", "--seed", "-1", "--out", "x"], "Invalid value for '--seed'"),
        (["colearn", "--seed", "-1", "--out", "x"], "Invalid value for '--seed'"),
        (["summarize", "no/such/folder"], "not found"),
    ],
)
def test_bad_input_gives_one_clear_line(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_group_help_lists_each_command_once():
    """The group's docstring listed the commands above click's own "Commands:" section."""
    result = run("--help")
    assert result.exit_code == 0, result.output
    for command in ("zeroshot", "retrieval", "grounding", "caption", "colearn", "summarize"):
        assert result.output.count(f"  {command} ") == 1, command
