from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from matplotlib.image import imread

from interfuse.ranks import fidelity
from interfuse.report import (
    agreement_summary,
    plot_history,
    plot_relevance,
    relevance_table,
    render_comparison,
    render_report,
)
from interfuse.results import SCHEMA, PosthocResult, Relevance, RunResult, SchemaError
from interfuse.run import read_history, read_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHARES = {"m0": 0.55, "m1": 0.3, "m2": 0.1, "m3": 0.01, "m0*m1": 0.03, "m0*m1*m2": 0.01}
TRUTH = {"m0": 0.565, "m1": 0.302, "m2": 0.133, "m3": 0.0}


def make_result(shares=SHARES, truth=TRUTH, dataset="motif", test_accuracy=0.96) -> RunResult:
    return RunResult(
        dataset=dataset,
        task="classification",
        model={"model": "intense", "modalities": ["m0", "m1", "m2", "m3"]},
        config={"interactions": "pairs", "rank": 8, "iterbn": True},
        metrics={
            "val": {"accuracy": 0.97, "loss": 0.1},
            "test": {"accuracy": test_accuracy, "loss": 0.125, "macro_f1": 0.955},
        },
        relevance=Relevance(
            p=2.0, beta={t: round(1.5 * v, 6) for t, v in shares.items()}, shares=dict(shares)
        ),
        best_epoch=7,
        epochs_run=10,
        stopped_early=False,
        train_seconds=41.2,
        ground_truth=None
        if truth is None
        else {
            "term_shares": dict(truth),
            "bayes_accuracy": 0.986,
            "relevant_terms": ["m0", "m1", "m2"],
        },
    )


def write_run(folder, result=None, epochs=4, shares=SHARES):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text((make_result() if result is None else result).to_json())
    if epochs:
        with open(folder / "history.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["epoch", "train_loss", "val_loss", "val_accuracy"] + [f"share:{t}" for t in shares]
            )
            for e in range(1, epochs + 1):
                writer.writerow([e, 1 / e, 1.2 / e, 1 - 0.4 / e] + [v for v in shares.values()])
    return folder


def render(folder):
    return render_report(read_results(folder), folder, read_history(folder))


def assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    image = imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    assert image.shape[0] > 100 and image.shape[1] > 100


def no_temp_files(folder):
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- load_run


def test_results_round_trip_and_history(tmp_path):
    folder = write_run(tmp_path / "run")
    assert read_results(folder) == make_result()
    history = read_history(folder)
    assert len(history) == 4
    assert history[0]["epoch"] == 1.0
    assert history[1]["share:m0*m1"] == pytest.approx(0.03)
    assert history[3]["val_loss"] == pytest.approx(0.3)


def test_no_history_is_empty(tmp_path):
    assert read_history(write_run(tmp_path / "run", epochs=0)) == []


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_results(tmp_path / "nowhere")


def test_missing_results_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.json"):
        read_results(tmp_path)


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"relevance": {"m0": 1.0}', "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"relevance": {"m0": 1.0}}', "older version"),
        (f'{{"schema": "{SCHEMA}", "relevance": null}}', "malformed"),
        (f'{{"schema": "{SCHEMA}", "surprise": 1}}', "unexpected keys"),
        ('{"schema": "interfuse-run/99"}', "unknown schema"),
    ],
    ids=["broken-json", "not-an-object", "old-version", "incomplete", "unknown-key", "newer"],
)
def test_invalid_results_is_named(tmp_path, content, message):
    (tmp_path / "results.json").write_text(content)
    with pytest.raises(SchemaError, match=f"results.json.*{message}|{message}.*results.json"):
        read_results(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "train_loss,val_loss\n1.0,2.0\n",
        "epoch,val_loss\n1,0.5\n2,0.4,0.3\n",
        "epoch,val_loss\n1,abc\n",
        "epoch,val_loss,val_loss\n1,2,3\n",
    ],
    ids=["empty", "no-epoch", "ragged-row", "not-a-number", "duplicate-column"],
)
def test_malformed_history_is_named(tmp_path, content):
    write_run(tmp_path, epochs=0)
    (tmp_path / "history.csv").write_text(content)
    with pytest.raises(ValueError, match="history.csv"):
        read_history(tmp_path)


def test_undecodable_history_is_named(tmp_path):
    write_run(tmp_path, epochs=0)
    (tmp_path / "history.csv").write_bytes(b"epoch,val_loss\n1,\xff\xfe\n")
    with pytest.raises(ValueError, match="history.csv"):
        read_history(tmp_path)


def test_history_blank_cells_are_nan(tmp_path):
    write_run(tmp_path, epochs=0)
    (tmp_path / "history.csv").write_text("epoch,val_loss\n1,\n2,0.5\n")
    history = read_history(tmp_path)
    assert math.isnan(history[0]["val_loss"]) and history[1]["val_loss"] == 0.5


# --------------------------------------------------------------------------- tables


def test_relevance_table_sorted_with_kinds():
    table = relevance_table({"a": 0.2, "a*b": 0.1, "b": 0.6, "a*b*c": 0.1})
    lines = table.strip().splitlines()
    assert lines[0] == "| term | kind | share |"
    assert lines[2] == "| `b` | unimodal | 0.600 |"
    assert lines[3] == "| `a` | unimodal | 0.200 |"
    assert lines[4] == "| `a*b` | interaction 2-way | 0.100 |"
    assert lines[5] == "| `a*b*c` | interaction 3-way | 0.100 |"
    assert "β" not in table and "ground truth" not in table


def test_relevance_table_with_beta_and_truth():
    table = relevance_table({"a": 0.7, "a*b": 0.3}, beta={"a": 0.919, "a*b": 0.394}, truth={"a": 1})
    lines = table.strip().splitlines()
    assert lines[0] == "| term | kind | share | β | ground truth |"
    assert lines[1] == "| --- | --- | ---: | ---: | ---: |"
    assert lines[2] == "| `a` | unimodal | 0.700 | 0.919 | 1.000 |"
    assert lines[3] == "| `a*b` | interaction 2-way | 0.300 | 0.394 | 0.000 |"


# --------------------------------------------------------------------------- fidelity


def test_fidelity_matching_ranking():
    shares = {"m0": 0.5, "m1": 0.3, "m2": 0.2, "m3": 0.0}
    scores = fidelity(shares, TRUTH)
    assert scores["spearman"] == pytest.approx(1.0)
    assert scores["l1"] == pytest.approx(0.065 + 0.002 + 0.067)
    assert scores["leakage"] == 0.0
    assert scores["interaction_share"] == 0.0


def test_fidelity_reversed_ranking_and_leakage():
    shares = {"m0": 0.1, "m1": 0.2, "m2": 0.3, "m0*m1": 0.4}
    truth = {"m0": 0.6, "m1": 0.3, "m2": 0.1}  # m0*m1 missing: truth 0
    scores = fidelity(shares, truth)
    assert scores["spearman"] == pytest.approx(-1.0)
    assert scores["leakage"] == pytest.approx(0.4)
    assert scores["interaction_share"] == pytest.approx(0.4)
    assert scores["l1"] == pytest.approx(0.5 + 0.1 + 0.2 + 0.4)


def test_fidelity_counts_truth_terms_missing_from_model():
    scores = fidelity({"a": 0.6, "b": 0.4}, {"a": 0.5, "b": 0.3, "a*b": 0.2})
    assert scores["l1"] == pytest.approx(0.1 + 0.1 + 0.2)
    assert scores["leakage"] == 0.0
    assert scores["interaction_share"] == 0.0


def test_fidelity_spearman_ties_use_average_ranks():
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 2, 3, 4): r = 4.5 / sqrt(4.5 * 5)
    shares = {"a": 0.1, "b": 0.2, "c": 0.2, "d": 0.5}
    truth = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4}
    assert fidelity(shares, truth)["spearman"] == pytest.approx(4.5 / math.sqrt(4.5 * 5))


@pytest.mark.parametrize(
    "shares, truth",
    [
        ({"a": 0.9, "a*b": 0.1}, {"a": 1.0}),  # one unimodal term
        ({"a": 0.5, "b": 0.5}, {"a": 0.7, "b": 0.3}),  # constant shares
        ({"a": 0.6, "b": 0.4}, {"a": 0.0}),  # constant truth
    ],
)
def test_fidelity_spearman_undefined(shares, truth):
    assert math.isnan(fidelity(shares, truth)["spearman"])


# --------------------------------------------------------------------------- plots


def test_plot_relevance(tmp_path):
    path = plot_relevance(SHARES, tmp_path / "rel.png", truth=TRUTH, title="t")
    assert path == tmp_path / "rel.png"
    assert_png(path)
    assert no_temp_files(tmp_path)


def test_plot_relevance_many_terms_grows_the_figure(tmp_path):
    many = {f"m{i}" if i < 10 else f"m{i - 10}*m{i - 9}": 1 / 30 for i in range(30)}
    small = imread(plot_relevance(SHARES, tmp_path / "small.png"))
    big = imread(plot_relevance(many, tmp_path / "big.png"))
    assert big.shape[0] > 2 * small.shape[0]


def test_plot_relevance_rejects_empty(tmp_path):
    with pytest.raises(ValueError):
        plot_relevance({}, tmp_path / "x.png")


def test_plot_history(tmp_path):
    history = read_history(write_run(tmp_path / "run"))
    assert_png(plot_history(history, tmp_path / "hist.png"))
    assert plot_history([], tmp_path / "empty.png") is None
    assert not (tmp_path / "empty.png").exists()


def test_plot_history_without_val_columns(tmp_path):
    history = [{"epoch": e, "share:a": 0.5, "share:a*b": 0.5} for e in (1, 2, 3)]
    assert_png(plot_history(history, tmp_path / "hist.png"), min_bytes=2_000)


def test_plots_do_not_open_pyplot_figures(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    plot_relevance(SHARES, tmp_path / "rel.png")
    plot_history([{"epoch": 1, "share:a": 1.0, "val_loss": 0.5}], tmp_path / "h.png")
    assert plt.get_fignums() == before


# --------------------------------------------------------------------------- reports


def test_render_report(tmp_path):
    run = write_run(tmp_path / "run")
    report = render(run)
    assert report == run / "report.md"
    assert_png(run / "relevance.png")
    assert_png(run / "history.png")
    assert no_temp_files(run)

    text = report.read_text(encoding="utf-8")
    assert text.startswith("# ") and "motif" in text.splitlines()[0]
    for term in SHARES:
        assert f"`{term}`" in text
    for number in ["0.550", "0.300", "0.100", "0.010", "0.825", "0.565", "0.133"]:
        assert number in text  # shares, β and ground truth
    assert "interaction 2-way" in text and "interaction 3-way" in text
    assert "(here p = 2)" in text
    # metrics, val and test side by side; Bayes comparison
    assert "| accuracy | 0.9700 | 0.9600 |" in text
    assert "| macro_f1 | — | 0.9550 |" in text
    assert "0.9860" in text and "Bayes" in text
    # fidelity section with the values of fidelity()
    scores = fidelity(SHARES, TRUTH)
    assert f"| `leakage` | {scores['leakage']:.3f} |" in text
    assert f"| `l1` | {scores['l1']:.3f} |" in text
    assert f"| `spearman` | {scores['spearman']:.3f} |" in text
    assert f"| `interaction_share` | {0.04:.3f} |" in text
    # images and configuration
    assert "![relevance](relevance.png)" in text
    assert "![history](history.png)" in text
    assert "| `rank` | `8` |" in text and "| `iterbn` | `true` |" in text


def test_render_report_minimal_run(tmp_path):
    result = RunResult(
        dataset="bare",
        task="regression",
        model={"model": "intense"},
        config={},
        metrics={},
        relevance=Relevance(p=1.0, beta={"x": 0.75, "x*y": 0.25}, shares={"x": 0.75, "x*y": 0.25}),
        best_epoch=1,
        epochs_run=1,
        stopped_early=False,
        train_seconds=0.0,
    )
    text = render_report(result, tmp_path).read_text(encoding="utf-8")
    assert "`x*y`" in text and "0.750" in text
    assert "history" not in text.lower().split("## relevance")[1]
    assert "Fidelity" not in text and "Bayes" not in text
    assert not (tmp_path / "history.png").exists()
    assert_png(tmp_path / "relevance.png", min_bytes=2_000)


def test_render_report_overwrites(tmp_path):
    run = write_run(tmp_path / "run")
    render(run)
    (run / "results.json").write_text(make_result(dataset="second").to_json())
    assert "second" in render(run).read_text(encoding="utf-8")
    assert no_temp_files(run)


def test_render_comparison(tmp_path):
    on = make_result()
    off = make_result(shares={"m0": 0.4, "m1": 0.3, "m2": 0.2, "m3": 0.1}, test_accuracy=0.9)
    out = tmp_path / "cmp" / "nested"
    md = render_comparison({"IterBN+vBN on": on, "off": off}, out)
    assert md == out / "comparison.md"
    assert_png(out / "comparison.png")
    assert no_temp_files(out)

    lines = md.read_text(encoding="utf-8").splitlines()
    assert "| term | IterBN+vBN on | off | ground truth |" in lines
    assert "| `m0` | 0.550 | 0.400 | 0.565 |" in lines
    assert "| `m0*m1` | 0.030 | — | 0.000 |" in lines  # the off run has no interactions
    assert "| interaction share (total) | 0.040 | 0.000 | 0.000 |" in lines
    assert "| test accuracy | 0.9600 | 0.9000 | 0.9860 (Bayes) |" in lines
    for term in SHARES:
        assert any(line.startswith(f"| `{term}` |") for line in lines)


def test_render_comparison_without_truth(tmp_path):
    md = render_comparison({"a": make_result(truth=None)}, tmp_path)
    assert "ground truth" not in md.read_text(encoding="utf-8")


def test_render_comparison_errors(tmp_path):
    with pytest.raises(ValueError):
        render_comparison({}, tmp_path)


def test_png_pixels_are_not_blank(tmp_path):
    image = imread(plot_relevance(SHARES, tmp_path / "rel.png", truth=TRUTH))
    assert np.ptp(image[..., :3]) > 0.5


def test_missing_modality_sets_are_written_as_sets(motif_demo_run, tmp_path):
    """A removed set is `{a,b}`; `a*b` names an interaction term (issue 12 item 5)."""
    from interfuse.report import render_report

    _, result, _ = motif_demo_run
    text = render_report(result, tmp_path).read_text()
    section = text.split("## Missing modalities at test time")[1].split("##")[0]
    assert "`{m0,m1}`" in section and "`m0*m1`" not in section


def test_report_leads_with_the_headline_estimate_and_shows_beta_beside_it(motif_demo_run, tmp_path):
    """With estimates, the relevance table is sorted by the headline share and shows its
    interval and verdict, then every other estimator; the figure has error bars."""
    from interfuse.report import estimates_table, render_report

    _, result, _ = motif_demo_run
    estimates = result.estimates
    table = estimates_table(estimates, result.truth_shares, result.relevance_evidence)
    header = table.splitlines()[0]
    assert estimates.best.label in header and "verdict" in header
    for e in estimates.estimates.values():
        assert e.label in header
    first_row = table.splitlines()[2]
    top = max(estimates.best.shares, key=estimates.best.shares.__getitem__)
    assert f"`{top}`" in first_row and "[" in first_row and "relevant" in first_row
    text = render_report(result, tmp_path).read_text()
    assert f"**Headline: {estimates.best.label}**" in text
    section = text.split("## Fidelity to the ground truth")[1].split("##")[0]
    assert estimates.best.label in section and "β share" in section
    assert_png(tmp_path / "relevance.png")


def _explanation(**fields) -> PosthocResult:
    """A small explanation of modalities a, b (no explainers); ``fields`` replace defaults."""
    defaults = dict(
        split_size=10, removal="mask", metric="accuracy", modalities=["a", "b"],
        terms=["a", "b"], cost="", coalitions={}, game={}, explanations={}, truth=None,
        agreement={}, seconds=0.0,
    )  # fmt: skip
    return PosthocResult(**{**defaults, **fields})


def test_agreement_summary_of_an_explanation_read_back_from_json():
    """An undefined ρ (NaN) is null in explain.json; the summary of the result read back
    raised TypeError instead of writing n/a."""
    result = _explanation(agreement={"unimodal": {"x~y": math.nan, "x~z": 0.5}, "all": {}})
    again = PosthocResult.from_dict(result.to_dict())
    expected = "Spearman ρ over unimodal terms: x/y n/a, x/z 0.50"
    assert agreement_summary(result) == agreement_summary(again) == expected


def test_an_undefined_metric_renders_the_same_after_a_reload(tmp_path):
    """An undefined metric (NaN, e.g. AUROC of a one-class split) is null in results.json; the
    report written at training said "n/a", `interfuse report` then re-rendered it as "—" (the
    mark of a metric that does not exist)."""
    result = make_result()
    nan = {"auroc": math.nan}
    result = RunResult(
        **{
            **{f: getattr(result, f) for f in result.__dataclass_fields__},
            "metrics": {s: {**m, **nan} for s, m in result.metrics.items()},
            "missing_modalities": {"none": {"accuracy": 0.9, "loss": math.nan}},
        }
    )
    (tmp_path / "a").mkdir()
    trained = render_report(result, tmp_path / "a", []).read_text()
    assert "| auroc | n/a | n/a |" in trained
    reloaded = read_results(write_run(tmp_path / "b", result, epochs=0))
    assert render_report(reloaded, tmp_path / "b", []).read_text() == trained
    assert math.isnan(reloaded.metrics["test"]["auroc"])


@pytest.mark.parametrize("key", ["metrics", "config", "model"])
@pytest.mark.parametrize("value", [None, [1, 2], "text"])
def test_a_field_of_the_wrong_kind_is_malformed_not_a_crash(tmp_path, key, value):
    """results.json whose metrics (config, model) was null or a list loaded, and `interfuse
    report` then failed with an internal error (AttributeError: 'NoneType' object has no
    attribute 'get')."""
    import json

    values = make_result().to_dict()
    values[key] = value
    (tmp_path / "results.json").write_text(json.dumps(values))
    with pytest.raises(SchemaError, match=f"results.json: malformed results.*{key}"):
        read_results(tmp_path)


def test_report_states_the_p_the_run_used(tmp_path):
    """p = 1.25 was written 'p = 1.2' (one decimal) in the explanation of the shares."""
    result = make_result()
    relevance = Relevance(p=1.25, beta=result.relevance.beta, shares=result.relevance.shares)
    result = RunResult(**{**result.__dict__, "relevance": relevance})
    text = render_report(result, tmp_path).read_text(encoding="utf-8")
    assert "(here p = 1.25)" in text


def test_configuration_values_with_stars_are_not_emphasis(tmp_path):
    """A list of interaction terms in the configuration (``["m0*m1", "m0*m1*m2"]``) was written
    bare into the table, where markdown reads ``*m1", "m0*`` as emphasis and drops the stars."""
    result = make_result()
    config = {"interactions": ["m0*m1", "m0*m1*m2"], "rank": 8}
    result = RunResult(**{**result.__dict__, "config": config})
    text = render_report(result, tmp_path).read_text(encoding="utf-8")
    row = next(line for line in text.splitlines() if line.startswith("| `interactions`"))
    assert row == '| `interactions` | `["m0*m1", "m0*m1*m2"]` |'


def test_explanation_page_renders_the_same_after_a_reload():
    """An undefined ρ or metric (NaN) is null in explain.json; explain.md rendered from the
    result read back wrote "—" (no value) where the page rendered at explaining wrote "n/a"
    (undefined, as the note under the agreement table explains)."""
    from interfuse.report import render_explanation

    result = _explanation(
        coalitions={"{a}": {"accuracy": 0.5, "auroc": math.nan}},
        game={"{a}": 0.0},
        agreement={"unimodal": {"x~y": math.nan}, "all": {"x~y": math.nan}},
    )
    again = PosthocResult.from_dict(result.to_dict())
    text = render_explanation(again)
    assert "| x vs y | n/a | n/a |" in text and "| `{a}` | 0.0000 | 0.5000 | n/a |" in text
    assert text == render_explanation(result)


def test_render_comparison_of_a_run_without_relevance(tmp_path):
    """A baseline (no built-in relevance) has a "—" for every term, but its total interaction
    share was written 0.000, a value its model does not have."""
    baseline = RunResult(**{**make_result().__dict__, "relevance": None})
    md = render_comparison({"ours": make_result(), "baseline": baseline}, tmp_path)
    lines = md.read_text(encoding="utf-8").splitlines()
    assert "| `m0` | 0.550 | — | 0.565 |" in lines
    assert "| interaction share (total) | 0.040 | — | 0.000 |" in lines


def test_estimates_note_mentions_grey_ticks_only_when_drawn(tmp_path):
    """With β as the headline the figure has no grey β ticks (nothing to compare), but the
    note under the heading still said "the grey ticks in the figure are the β shares"."""
    from interfuse.results import RelevanceEstimate, RelevanceEstimates, TermEstimate

    terms = {t: TermEstimate(s, s) for t, s in SHARES.items()}
    beta = RelevanceEstimate("beta", "β share", "the closed form", "", terms)
    result = RunResult(
        **{**make_result().__dict__, "estimates": RelevanceEstimates("beta", {"beta": beta})}
    )
    text = render_report(result, tmp_path).read_text(encoding="utf-8")
    assert "**Headline: β share**" in text and "grey ticks" not in text
