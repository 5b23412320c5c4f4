"""The ``interfuse`` command group, its error boundary, and helpers shared by its commands."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..results import RunResult
from ..train import TrainingInterrupted


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The error boundary: library errors the user can fix become one line and exit status 1
    (validation errors, missing files, file-system errors with their path); an interrupted run
    exits with 128 + the signal number."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except TrainingInterrupted as stop:
            click.echo(f"Error: {stop}", err=True)
            raise SystemExit(stop.exit_code) from None
        except (ValueError, FileNotFoundError, PermissionError) as error:
            raise click.ClickException(str(error)) from None
        except OSError as error:
            where = f" ({error.filename})" if error.filename else ""
            raise click.ClickException(f"{error.strerror or error}{where}") from None

    return wrapper


def float_list(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(
            f"expected comma-separated numbers, got {text!r}", param_hint=option
        ) from None


def parse_interactions(text: str) -> str | int | list[str]:
    if text in ("none", "pairs", "all"):
        return text
    if text.isdigit():
        return int(text)
    return [t.strip() for t in text.split(",") if t.strip()]


def print_run(title: str, result: RunResult, out: Path) -> None:
    """A finished run in a few lines: test score, relevance table, ground truth, report path."""
    test = result.metrics.get("test", {})
    truth = result.ground_truth or {}
    line = (
        f"test accuracy {test['accuracy']:.3f}"
        if "accuracy" in test
        else f"test loss {test['loss']:.4f}"
    )
    if "bayes_accuracy" in truth:
        line += f" (Bayes-optimal {truth['bayes_accuracy']:.3f})"
    click.echo(
        f"\n== {title}: {line}; best epoch {result.best_epoch} of "
        f"{result.epochs_run}, {result.train_seconds:.0f} s"
    )
    if result.relevance is not None:
        click.echo(result.relevance.table())
    else:
        click.echo("no built-in relevance (baseline); post-hoc: interfuse explain " + str(out))
    if result.truth_shares:
        expected = ", ".join(f"{t} {s:.3f}" for t, s in result.truth_shares.items() if s > 0)
        click.echo(f"ground-truth shares: {expected}")
    click.echo(f"report: {out / 'report.md'}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="interfuse")
def main() -> None:
    """interfuse: interpretable multimodal deep learning.

    Trains MNL fusion models whose final layer has one block per modality and per interaction
    between modalities, and reports how much each block contributes (its relevance share).
    """
