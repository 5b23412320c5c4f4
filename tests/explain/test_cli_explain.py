"""``interfuse explain`` on finished runs: files written, cost printed first, progress shown,
report linked, baselines supported, clear errors."""

import json

import pytest
from click.testing import CliRunner

from interfuse.cli import main

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
    assert "coalitions:" in output  # the progress bar
    assert "EMAP accuracy gap" in output
    explanation = strict_json((out / "explain.json").read_text())
    assert explanation["method"] == "mask"
    assert set(explanation["terms"]) == {"m0", "m1", "m2", "m0*m1", "m0*m2", "m1*m2"}
    assert len(explanation["coalitions"]) == 8
    assert explanation["emap"]["n_samples"] == 16
    assert explanation["terms"]["m0"]["truth"] == pytest.approx(1.0)
    markdown = (out / "explain.md").read_text()
    assert "Spearman" in markdown and "EMAP" in markdown and "missing-modality" in markdown
    assert "[explain.md](explain.md)" in (out / "report.md").read_text()


def test_explain_rebuilds_the_training_data_exactly(runs):
    from interfuse.train.metrics import evaluate
    from interfuse.train.restore import load_trained_model, rebuild_task

    out = runs / "intense"
    results = json.loads((out / "results.json").read_text())
    task = rebuild_task(results["config"])
    model, _ = load_trained_model(out)
    test = evaluate(model, task.test, task.task)
    assert test == pytest.approx(results["metrics"]["test"])


def test_rebuild_through_the_dataset_registry():
    from interfuse.train.restore import rebuild_task

    options = {"probs": [0.9, 0.0], "n": 120, "length": 30, "seed": 3}
    task = rebuild_task({"load": {"dataset": "motif", "options": options}})
    direct = rebuild_task(
        {
            "synthetic": {**options, "xor_pair": None, "motif_length": 7},
            "split": {"seed": 3, "fractions": [0.7, 0.15, 0.15]},
        }
    )
    for m in ("m0", "m1"):
        assert (task.test.inputs[m] == direct.test.inputs[m]).all()
    assert (task.test.targets == direct.test.targets).all()


def test_explain_a_baseline_without_builtin_relevance(runs):
    out = runs / "late"
    result = run("explain", out, "--emap-samples", "8", "--quiet", "--method", "input")
    assert result.exit_code == 0, result.output
    explanation = strict_json((out / "explain.json").read_text())
    assert explanation["method"] == "input"
    assert all("builtin" not in pair for pair in explanation["spearman"]["unimodal"])
    assert explanation["terms"]["m0"]["builtin"] is None
    assert "no built-in relevance" in (out / "report.md").read_text()


def test_explain_errors_are_one_line(runs, tmp_path):
    result = run("explain", tmp_path / "nothing")
    assert result.exit_code == 1 and "results.json" in result.output
    out = runs / "late"
    result = run("explain", out, "--method", "mask", "--quiet")
    assert result.exit_code == 1 and "no missing-modality path" in result.output
    # a run whose results lack the generator settings cannot be rebuilt
    old = tmp_path / "old"
    old.mkdir()
    results = json.loads((runs / "intense" / "results.json").read_text())
    del results["config"]["synthetic"]
    (old / "results.json").write_text(json.dumps(results))
    (old / "best.safetensors").write_bytes((runs / "intense" / "best.safetensors").read_bytes())
    result = run("explain", old, "--quiet")
    assert result.exit_code == 1 and "cannot rebuild the data" in result.output
