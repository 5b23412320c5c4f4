"""``interfuse report``: re-render a finished run's report from its results."""

from __future__ import annotations

from pathlib import Path

import click

from ..report import render_report
from ..run import explanations_outdated, read_history, read_results
from .app import main, print_run, user_errors


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@user_errors
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/report.md and its figures from results.json and history.csv."""
    result = read_results(run_dir)
    render_report(result, run_dir, read_history(run_dir), explanations_outdated(run_dir))
    print_run(result.dataset, result, run_dir)  # as 'interfuse train' ends
