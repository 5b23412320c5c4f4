"""``--config FILE`` reproduces a run from its run.yaml; ``--seeds`` trains several seeds and
summarises them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from interfuse.cli import main
from interfuse.report import render_seed_summary
from interfuse.results import Relevance, RunResult, SeedSummary, summarize_seeds

TINY = ["--probs", "0.9,0", "--n", "300", "--length", "30", "--epochs", "2", "--quiet"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_run_yaml_reproduces_the_run(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("probs: [0.9, 0.0]\nn: 300\nlength: 30\nepochs: 1\nrank: 4\n")
    done = run("train", "--config", config, "--epochs", "2", "--quiet", "--out", tmp_path / "a")
    assert done.exit_code == 0, done.output
    first = json.loads((tmp_path / "a" / "results.json").read_text())
    assert first["config"]["epochs"] == 2 and first["config"]["rank"] == 4  # command line wins
    again = run(
        "train", "--config", tmp_path / "a" / "run.yaml", "--quiet", "--out", tmp_path / "b"
    )
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "b" / "results.json").read_text())
    assert second["config"] == first["config"]
    assert second["metrics"] == first["metrics"]
    assert second["data"]["fingerprint"] == first["data"]["fingerprint"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("rank: [1, 2\n", "cannot read"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("colour: red\n", "unknown option 'colour'"),
        ("rank: lots\n", "rank"),
        # a number for a flag was a traceback (AttributeError: 'int' object has no attribute
        # 'strip'); a float for an integer option was truncated silently (epochs 1.7 → 1)
        ("iterbn: 7\n", "'7' is not a valid boolean"),
        ("quiet: 0.5\n", "'0.5' is not a valid boolean"),
        ("epochs: 1.7\n", "'1.7' is not a valid integer"),
        # a key without a value (null) reached the data generator as None: internal errors
        # (AttributeError: 'NoneType' object has no attribute 'split', TypeError: '<=' ...)
        ("probs:\n", "option 'probs' has no value"),
        ("n: null\n", "option 'n' has no value"),
        ("xor_prob: ~\n", "option 'xor_prob' has no value"),
        ("length:\n", "option 'length' has no value"),
        # a YAML bool for a number was read as 1 or 0: rank: true trained with rank 1
        ("rank: true\n", "'true' is not a valid integer"),
        ("lr: yes\n", "'true' is not a valid float"),
        # an option of the command line only was called unknown
        ("out: runs/x\n", "option 'out' is given on the command line, not in a config file"),
        ("seeds: 0-2\n", "option 'seeds' is given on the command line, not in a config file"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    done = run("train", "--config", config, "--out", tmp_path / "x")
    assert done.exit_code == 2 and message in done.output and "Traceback" not in done.output
    # the error is one line (a YAML syntax error spread over eight, with a caret drawing)
    assert done.output.split("Error:", 1)[1].strip().count("\n") == 0, done.output


def test_seeds_train_one_run_each_and_summarise(tmp_path):
    done = run("train", *TINY, "--seeds", "0,2", "--out", tmp_path)
    assert done.exit_code == 0, done.output
    results = {s: json.loads((tmp_path / f"seed-{s}" / "results.json").read_text()) for s in (0, 2)}
    assert [results[s]["config"]["seed"] for s in (0, 2)] == [0, 2]
    summary = json.loads((tmp_path / "summary.json").read_text())
    accuracies = [results[s]["metrics"]["test"]["accuracy"] for s in (0, 2)]
    assert summary["metrics"]["test"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert summary["metrics"]["test"]["accuracy"]["std"] == pytest.approx(
        np.std(accuracies, ddof=1)
    )
    assert "± " in (tmp_path / "summary.md").read_text()
    bad = run("train", *TINY, "--seeds", "3-x", "--out", tmp_path / "bad")
    assert bad.exit_code == 2 and "expected seeds like 0-4" in bad.output


def test_a_killed_seeds_run_is_continued_by_the_same_command_with_resume(tmp_path, monkeypatch):
    """`--seeds 0,1` killed during seed 0 (seed-1/ not yet started): the same command with
    --resume refused seed 1 ("nothing to resume"), so the run could neither be continued nor
    summarised; a seed not yet started is trained, the others resumed."""
    import interfuse.cli.train as cli_train

    args = [*TINY, "--epochs", "1", "--restarts", "0", "--seeds", "0,1", "--out", tmp_path]
    fit = cli_train.fit

    def killed_before_seed_1(task, config, out, **options):
        if config.seed == 1:
            raise KeyboardInterrupt
        return fit(task, config, out, **options)

    with monkeypatch.context() as patch:
        patch.setattr(cli_train, "fit", killed_before_seed_1)
        assert run("train", *args).exit_code == 130
    assert not (tmp_path / "summary.json").exists()
    done = run("train", *args, "--resume")
    assert done.exit_code == 0, done.output
    assert (tmp_path / "seed-1" / "results.json").exists()
    assert (tmp_path / "summary.json").exists()
    # killed in the first epoch of seed 0 (its folder holds only the run's config.json)
    early = tmp_path / "early"
    (early / "seed-0").mkdir(parents=True)
    (early / "seed-0" / "config.json").write_bytes(
        (tmp_path / "seed-0" / "config.json").read_bytes()
    )
    done = run(
        "train",
        *TINY,
        "--epochs",
        "1",
        "--restarts",
        "0",
        "--seeds",
        "0,1",
        "--out",
        early,
        "--resume",
    )
    assert done.exit_code == 0, done.output
    assert (early / "summary.json").exists()
    # with nothing of the run there at all, --resume is still refused
    wrong = run("train", *TINY, "--seeds", "0,1", "--out", tmp_path / "typo", "--resume")
    assert wrong.exit_code == 1 and "nothing to resume" in wrong.output


def test_summarize_seeds_values():
    def result(accuracy, share):
        return RunResult(
            dataset="d",
            task="classification",
            model={},
            config={},
            metrics={"test": {"accuracy": accuracy}},
            relevance=Relevance(2.0, {"a": 1.0, "b": 1.0}, {"a": share, "b": 1 - share}),
            best_epoch=1,
            epochs_run=2,
            stopped_early=False,
            train_seconds=0.0,
        )

    summary = summarize_seeds({0: result(0.8, 0.6), 1: result(0.9, 0.7), 2: result(1.0, 0.8)})
    assert summary.seeds == [0, 1, 2]
    assert summary.metrics["test"]["accuracy"] == pytest.approx((0.9, 0.1))
    assert summary.shares["a"] == pytest.approx((0.7, 0.1))
    with pytest.raises(ValueError, match="no runs"):
        summarize_seeds({})


def test_summarize_seeds_gives_the_headline_an_interval_over_seeds():
    from interfuse.results import RelevanceEstimate, RelevanceEstimates, TermEstimate

    def result(share):
        terms = {"a": TermEstimate(share, share), "b": TermEstimate(1 - share, 1 - share)}
        estimate = RelevanceEstimate("shapley", "loss Shapley share", "d", "nats", terms)
        return RunResult(
            dataset="d",
            task="classification",
            model={},
            config={},
            metrics={"test": {"accuracy": 1.0}},
            relevance=Relevance(2.0, {"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 0.5}),
            best_epoch=1,
            epochs_run=2,
            stopped_early=False,
            train_seconds=0.0,
            estimates=RelevanceEstimates("shapley", {"shapley": estimate}),
        )

    summary = summarize_seeds({0: result(0.6), 1: result(0.7), 2: result(0.8)})
    assert summary.headline == "shapley"
    assert summary.headline_shares["a"] == pytest.approx((0.7, 0.1))
    half = 4.302652729911275 * 0.1 / 3**0.5  # t_{0.975, 2}
    assert summary.headline_intervals["a"] == pytest.approx((0.7 - half, 0.7 + half))
    assert summarize_seeds({0: result(0.6)}).headline_intervals == {}


def test_seed_summary_writes_an_undefined_metric_as_n_a(tmp_path):
    """A metric undefined in one run (NaN, e.g. AUROC of a one-class split) was written
    "nan ± nan" in summary.md, where every report writes n/a."""
    summary = SeedSummary(
        seeds=[0, 1],
        metrics={"test": {"accuracy": (0.85, 0.05), "auroc": (math.nan, math.nan)}},
        shares={},
    )
    text = render_seed_summary(summary, tmp_path).read_text()
    assert "| auroc | n/a |" in text and "nan" not in text
    assert "| accuracy | 0.8500 ± 0.0500 |" in text


def test_mean_std_text_is_what_the_console_and_summary_print():
    from interfuse.report import mean_std_text

    assert mean_std_text(0.85, 0.05, 4) == "0.8500 ± 0.0500"
    assert mean_std_text(math.nan, math.nan, 4) == "n/a"


def test_run_yaml_of_an_npz_run_with_task_reproduces_it(tmp_path):
    """run.yaml writes the --task option as ``task:``, which --config refused as an unknown
    option (its parameter is named task_kind): the run's own run.yaml could not repeat it."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 120)
    a = rng.normal(size=(120, 3)) + y[:, None]
    np.savez(tmp_path / "data.npz", a=a, b=rng.normal(size=(120, 2)), labels=y)
    args = ["--dataset", "npz", "--data-path", tmp_path / "data.npz", "--task", "regression"]
    done = run("train", *args, "--epochs", "1", "--rank", "2", "--quiet", "--out", tmp_path / "a")
    assert done.exit_code == 0, done.output
    assert "task: regression" in (tmp_path / "a" / "run.yaml").read_text()
    again = run(
        "train", "--config", tmp_path / "a" / "run.yaml", "--quiet", "--out", tmp_path / "b"
    )
    assert again.exit_code == 0, again.output
    first, second = (json.loads((tmp_path / d / "results.json").read_text()) for d in "ab")
    assert second["task"] == "regression" and second["config"] == first["config"]
    assert second["metrics"] == first["metrics"]


def test_a_reversed_range_of_seeds_is_refused():
    """``--seeds 0,5-3`` trained seed 0 only (the empty range 5..3 vanished without a word);
    ``--seeds 5-3`` said the seeds were not distinct and non-negative."""
    import click

    from interfuse.cli.train import _parse_seeds

    with pytest.raises(click.BadParameter, match="first seed.*'5-3'"):
        _parse_seeds(click.get_current_context(silent=True), None, "0,5-3")
    done = run("train", "--seeds", "5-3", "--out", "unused")
    assert done.exit_code == 2 and "'5-3'" in done.output and "first seed" in done.output


def test_the_std_of_one_seed_is_undefined_not_zero(tmp_path):
    """``--seeds 3`` summarised one run as "0.8000 ± 0.0000" (summary.json: std 0), a spread of
    exactly zero; the n − 1 standard deviation of one value is undefined."""
    one = RunResult(
        dataset="d",
        task="classification",
        model={},
        config={},
        metrics={"test": {"accuracy": 0.8}},
        relevance=Relevance(2.0, {"a": 1.0, "b": 1.0}, {"a": 0.6, "b": 0.4}),
        best_epoch=1,
        epochs_run=2,
        stopped_early=False,
        train_seconds=0.0,
    )
    summary = summarize_seeds({3: one})
    assert summary.metrics["test"]["accuracy"][0] == 0.8
    assert math.isnan(summary.metrics["test"]["accuracy"][1])
    assert summary.to_dict()["shares"]["a"] == {"mean": 0.6, "std": None}
    text = render_seed_summary(summary, tmp_path).read_text()
    assert "| accuracy | 0.8000 ± n/a |" in text and "| `a` | 0.600 ± n/a |" in text
    assert "nan" not in text
