"""``interfuse explain`` on finished runs: files written, cost printed first, no progress bars
in logs, report linked, baselines supported, clear errors."""

import json
import shutil

import pytest
from click.testing import CliRunner

from interfuse import load_run
from interfuse.cli import main
from interfuse.inference import evaluate

TINY = ["--probs", "0.9,0,0", "--n", "300", "--epochs", "2", "--length", "40", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def strict_json(text):
    def reject(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    for model in ("intense", "late"):
        result = run("train", *TINY, "--model", model, "--out", root / model)
        assert result.exit_code == 0, result.output
    return root


def test_explain_writes_files_and_links_them(runs):
    out = runs / "intense"
    result = run("explain", out, "--emap-samples", "16")
    assert result.exit_code == 0, result.output
    output = result.output
    assert output.index("cost:") < output.index("| term |")  # cost before the long work
    assert "2^3 = 8 coalitions" in output and "M·N² = 768" in output
    # no progress bar: stderr is not a terminal here (a log, a pipe), as for 'interfuse train'
    assert "coalitions:" not in output and "EMAP:" not in output
    assert "EMAP accuracy gap" in output
    explanation = strict_json((out / "explain.json").read_text())
    assert explanation["removal"] == "mask"
    assert explanation["terms"] == ["m0", "m1", "m2", "m0*m1", "m0*m2", "m1*m2"]
    assert len(explanation["coalitions"]) == 8
    assert explanation["explanations"]["emap"]["details"]["n_samples"] == 16
    assert explanation["truth"]["m0"] == pytest.approx(1.0)
    markdown = (out / "explain.md").read_text()
    assert "Spearman" in markdown and "EMAP" in markdown and "missing-modality" in markdown
    assert "[explain.md](explain.md)" in (out / "report.md").read_text()


def test_the_report_says_when_explanations_are_of_an_earlier_model(runs, tmp_path):
    """Resumed with more epochs after ``interfuse explain``, the run holds another model: the
    report's link to explain.md says the explanations are of an earlier model (it linked them
    as if current); explaining again clears the note."""
    out = tmp_path / "run"
    shutil.copytree(runs / "intense", out)
    assert run("explain", out, "--emap-samples", "0", "--quiet").exit_code == 0
    note = "explains an earlier model of this run"
    assert note not in (out / "report.md").read_text()
    assert run("report", out).exit_code == 0
    assert note not in (out / "report.md").read_text()  # the same model: nothing to say
    longer = [a if a != "2" else "4" for a in TINY]  # --epochs 4
    resumed = run("train", *longer, "--out", out, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert note in (out / "report.md").read_text()
    assert run("report", out).exit_code == 0 and note in (out / "report.md").read_text()
    assert run("explain", out, "--emap-samples", "0", "--quiet").exit_code == 0
    assert note not in (out / "report.md").read_text()


def test_a_checkpoint_replaced_while_explaining_is_not_recorded_as_explained(
    runs, tmp_path, monkeypatch
):
    """The run was resumed (its best.safetensors replaced) while ``interfuse explain`` worked:
    explain.json recorded the digest of the new checkpoint, read after explaining the old
    model, so the report presented the old model's explanations as the current ones."""
    import interfuse.cli.explain as cli_explain

    out = tmp_path / "run"
    shutil.copytree(runs / "intense", out)
    load = cli_explain.load_run

    def resumed_meanwhile(*args, **kwargs):
        loaded = load(*args, **kwargs)
        (out / "best.safetensors").write_bytes((out / "last.safetensors").read_bytes())
        return loaded

    monkeypatch.setattr(cli_explain, "load_run", resumed_meanwhile)
    assert run("explain", out, "--emap-samples", "0", "--quiet").exit_code == 0
    assert "explains an earlier model of this run" in (out / "report.md").read_text()


def test_explanations_stopped_half_written_never_read_as_current(runs, tmp_path, monkeypatch):
    """Explaining a resumed run stopped after explain.json but before explain.md (killed, disk
    full): explain.json recorded the new model, so the report linked the previous model's
    explain.md as current. explain.md is written first, explain.json (the record) last."""
    import errno

    import interfuse.cli.explain as cli_explain
    from interfuse.run import explanations_outdated

    out = tmp_path / "run"
    shutil.copytree(runs / "intense", out)
    assert run("explain", out, "--emap-samples", "0", "--quiet").exit_code == 0
    (out / "best.safetensors").write_bytes((out / "last.safetensors").read_bytes())  # resumed
    assert explanations_outdated(out)
    write = cli_explain.atomic_write_text
    calls = []

    def disk_full_at_the_second_file(path, text):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return write(path, text)

    monkeypatch.setattr(cli_explain, "atomic_write_text", disk_full_at_the_second_file)
    assert run("explain", out, "--emap-samples", "0", "--quiet").exit_code == 3
    assert explanations_outdated(out)


def test_explain_rebuilds_the_training_data_exactly(runs):
    run_ = load_run(runs / "intense")
    task = run_.load_data()
    test = evaluate(run_.model, task.test, task.task)
    assert test == pytest.approx(run_.result.metrics["test"])


def test_a_moved_run_folder_explains_reports_and_predicts(runs, tmp_path):
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(runs / "intense", moved)
    for args in (
        ("explain", moved, "--emap-samples", "0", "--quiet"),
        ("report", moved),
    ):
        result = run(*args)
        assert result.exit_code == 0, result.output
    assert load_run(moved).result == load_run(runs / "intense").result


def test_explain_a_baseline_without_builtin_relevance(runs):
    out = runs / "late"
    result = run("explain", out, "--emap-samples", "8", "--quiet", "--method", "input")
    assert result.exit_code == 0, result.output
    explanation = strict_json((out / "explain.json").read_text())
    assert explanation["removal"] == "input"
    assert all("builtin" not in pair for pair in explanation["agreement"]["unimodal"])
    assert explanation["explanations"]["builtin"]["scores"]["m0"] is None
    assert "no built-in relevance" in (out / "report.md").read_text()


def test_explain_errors_are_one_line(runs, tmp_path):
    result = run("explain", tmp_path / "nothing")
    assert result.exit_code == 1 and "run folder not found" in result.output
    out = runs / "late"
    result = run("explain", out, "--method", "mask", "--quiet")
    assert result.exit_code == 1 and "no missing-modality path" in result.output
    # the command line's option, beside the Python API's keyword
    assert "--method embedding or --method input" in result.output
    # a run folder of the previous version: a clear message, not a traceback
    old = tmp_path / "old"
    shutil.copytree(runs / "intense", old)
    results = json.loads((old / "results.json").read_text())
    del results["schema"]
    (old / "results.json").write_text(json.dumps(results))
    result = run("explain", old, "--quiet")
    assert result.exit_code == 1 and "made by an older version" in result.output


def test_a_moved_data_file_names_the_data_path_option(tmp_path):
    """The data file a run was trained on, moved: explain said only "data file not found",
    not that --data-path can point to it."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 90), ("val", 30), ("test", 30)):
        labels = rng.integers(0, 2, n)
        arrays[f"{split}/a"] = rng.normal(size=(n, 3)) + labels[:, None]
        arrays[f"{split}/b"] = rng.normal(size=(n, 2))
        arrays[f"{split}/labels"] = labels
    data = tmp_path / "data.npz"
    np.savez(data, **arrays)
    out = tmp_path / "run"
    args = ("--dataset", "npz", "--data-path", data, "--epochs", "1", "--quiet", "--out", out)
    result = run("train", *args)
    assert result.exit_code == 0, result.output
    moved = data.rename(tmp_path / "moved.npz")
    result = run("explain", out, "--emap-samples", "0", "--quiet")
    assert result.exit_code == 1
    assert f"data file not found: {data}" in result.output
    assert "if it moved, give its new location: --data-path FILE" in result.output
    result = run("explain", out, "--emap-samples", "0", "--quiet", "--data-path", moved)
    assert result.exit_code == 0, result.output
