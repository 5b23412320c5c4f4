"""``interfuse report``: re-render a finished run's report from its results."""

from __future__ import annotations

from pathlib import Path

import click

from ..report import render_report
from ..results import RESULTS_OUTDATED
from ..run import explanations_outdated, read_history, read_results, results_outdated
from .app import main, print_run, user_errors


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@user_errors
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/report.md and its figures from results.json and history.csv."""
    result = read_results(run_dir)
    outdated = results_outdated(run_dir, result)
    history = read_history(run_dir)
    render_report(result, run_dir, history, explanations_outdated(run_dir), outdated)
    if outdated:
        click.echo(f"warning: {RESULTS_OUTDATED}", err=True)
    print_run(result.dataset, result, run_dir)  # as 'interfuse train' ends
