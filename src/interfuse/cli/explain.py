"""``interfuse explain``: post-hoc relevance of a finished run, beside its built-in relevance."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from ..explain import explain_model
from ..io import atomic_write_text
from ..report import (
    absent_warning,
    agreement_summary,
    comparison_table,
    render_explanation,
    render_report,
)
from ..report.run import EXPLAIN_REPORT as EXPLAIN_MD
from ..results import RESULTS_OUTDATED
from ..run import (
    BEST,
    EXPLAIN_JSON,
    explained_model,
    explanations_outdated,
    load_run,
    read_history,
    read_results,
    results_outdated,
)
from .app import main, progress_bars, user_errors


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--data-path",
    type=click.Path(path_type=Path),
    default=None,
    help="Raw data to explain on (.npz or folder): arrays named as the run's modalities plus "
    "'labels', or split keys (train/..., test/...). Default: reload the run's registered "
    "dataset (runs trained from Python on arrays need this option).",
)
@click.option(
    "--method",
    type=click.Choice(["auto", "mask", "embedding", "input"]),
    default="auto",
    show_default=True,
    help="How a removed modality is replaced: mask (the model's own missing-modality path), "
    "embedding (encoder output → its training mean), input (input → its training mean); "
    "auto picks the first the model supports.",
)
@click.option(
    "--metric",
    default="loss",
    show_default=True,
    help="Metric of the coalition game v(S) and of the ablation Δ (loss, accuracy, ...).",
)
@click.option(
    "--emap-samples",
    default=256,
    show_default=True,
    type=click.IntRange(min=0),
    help="Test samples N for EMAP, which costs M·N² evaluations; 0 skips EMAP.",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seed of the EMAP subsample, the bootstrap resamples and the refit folds.",
)
@click.option(
    "--batch-size",
    default=1024,
    show_default=True,
    type=click.IntRange(min=1),
    help="Samples per forward pass.",
)
@click.option(
    "--checkpoint",
    default=BEST,
    show_default=True,
    help="Checkpoint file in RUN_DIR to explain.",
)
@click.option(
    "--quiet", is_flag=True, help="No progress bars (shown only when stderr is a terminal)."
)
@user_errors
def explain(
    run_dir: Path,
    data_path: Path | None,
    method: str,
    metric: str,
    emap_samples: int,
    seed: int,
    batch_size: int,
    checkpoint: str,
    quiet: bool,
) -> None:
    """Compare RUN_DIR's built-in relevance with ablation, Shapley, Möbius and EMAP.

    Loads the run (model, preprocessing, results), its data (reloaded from the recorded source,
    or --data-path), evaluates the model on the test split with every subset of modalities
    removed, and writes RUN_DIR/explain.json and RUN_DIR/explain.md (linked from report.md).

    Example: interfuse explain runs/xor
    """
    # the digest of the checkpoint is read before its model: a run resumed meanwhile (another
    # checkpoint once explaining ends) then reads as explained by an earlier model, not the new
    file = run_dir / checkpoint
    explained = explained_model(run_dir, checkpoint) if file.is_file() else None
    run = load_run(run_dir, checkpoint)  # names what is wrong with the folder or checkpoint
    if run.result is None:
        raise FileNotFoundError(
            f"{run_dir / 'results.json'} not found: is {run_dir} a finished run?"
        )
    task = run.load_data(data_path)
    explanation = explain_model(
        run.model,
        task.test,
        task.task,
        task.train,
        method=method,
        metric=metric,
        emap_samples=emap_samples,
        seed=seed,
        batch_size=batch_size,
        metric_set=task.metrics,
        ground_truth=run.result.truth_shares,
        progress=progress_bars(quiet),
        log=click.echo,
    )
    explanation = replace(explanation, run=explained or explained_model(run_dir, checkpoint))
    # explain.json, which records the model explained, last: stopped between the two files, the
    # previous explain.json reads as of another model rather than a stale explain.md as current
    atomic_write_text(run_dir / EXPLAIN_MD, render_explanation(explanation, run.result.dataset))
    atomic_write_text(run_dir / EXPLAIN_JSON, explanation.to_json())
    # adds the link to explain.md, from the run's files now (it may have been resumed meanwhile)
    results = read_results(run_dir)
    outdated = results_outdated(run_dir, results)
    render_report(results, run_dir, read_history(run_dir), explanations_outdated(run_dir), outdated)
    if outdated:
        click.echo(f"warning: {RESULTS_OUTDATED}", err=True)
    click.echo("")
    if explanation.absent:
        click.echo(absent_warning(explanation))
    click.echo(comparison_table(explanation))
    summary = agreement_summary(explanation)
    if summary:
        click.echo(summary)
    emap = explanation.explanations.get("emap")
    if emap is not None and emap.details.get("accuracy_gap") is not None:
        click.echo(
            f"EMAP accuracy gap (model − additive projection, {emap.details['n_samples']} "
            f"samples): {emap.details['accuracy_gap']:+.4f}"
        )
    elif emap is not None and emap.details.get("skipped"):
        click.echo(f"EMAP skipped: {emap.details['skipped']}")
    click.echo(f"explanations: {run_dir / EXPLAIN_MD} and {run_dir / EXPLAIN_JSON}")
