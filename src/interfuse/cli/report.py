"""``interfuse report``: re-render a finished run's report."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import main, user_errors


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@user_errors
def report(run_dir: Path) -> None:
    """Re-render RUN_DIR/report.md and its figures from a finished run's files."""
    from ..explain.report import load_run, render_report

    path = render_report(run_dir)
    results = load_run(run_dir).results
    click.echo(json.dumps(results["relevance"], indent=2))
    click.echo(f"report: {path}")
