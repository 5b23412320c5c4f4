"""``interfuse predict``: predictions of a finished run for new raw data, any modalities missing."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import torch

from ..data.arrays import LABELS, SPLIT_ALIASES, TASK_KEY, read_arrays, split_masks
from ..io import atomic_text_writer
from ..results import RESULTS_OUTDATED
from ..run import BEST, HISTORY, LOCK, Run, RunPrediction, load_run
from .app import main, user_errors

BATCH_SIZE = 1024
"""Samples per model batch."""
CHUNK_ROWS: int | None = None
"""Rows preprocessed and predicted at a time (``None``: :data:`interfuse.run.CHUNK_BYTES` of
float64 at a time); the output does not depend on it."""


def check_output_file(target: Path, option: str, source: Path | None = None) -> None:
    """Refuse an output path that cannot take a CSV file, or that is the input ``source``
    itself, before any work is done."""
    if target.is_dir():
        raise ValueError(f"{option} {target} is a folder; name a CSV file")
    if target.suffix.lower() not in ("", ".csv", ".txt", ".tsv"):
        raise ValueError(
            f"{option} {target}: predictions are written as CSV text; name a .csv file "
            f"(not {target.suffix})"
        )
    parent = target.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"{option} {target}: folder {parent} does not exist")
    if source is not None and target.exists() and source.exists() and target.samefile(source):
        raise ValueError(
            f"{option} {target} is the input data file; name another file for the predictions"
        )


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.argument("data", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    default=None,
    help="CSV file for the predictions [default: RUN_DIR/predictions.csv].",
)
@click.option(
    "--checkpoint",
    default=BEST,
    show_default=True,
    help="Checkpoint file in RUN_DIR to predict with.",
)
@user_errors
def predict(run_dir: Path, data: Path, out: Path | None, checkpoint: str) -> None:
    """Predict with RUN_DIR's model for the samples in DATA (.npz or a folder of .npy files).

    DATA holds one raw array per modality, named as in the run; the run's own preprocessing
    (standardisation with its training statistics) is applied, so give features as they were
    given to training. Leave a modality out to mark it missing for every sample, or fill a
    sample's row with NaN (or give a bool array `<modality>__mask`, False = missing) to mark
    it missing for that sample (runs on the affect data sets read NaN as 0, as their training
    did: use the mask there). A `labels` array, if present, is
    used to report accuracy / loss. The CSV lists, per sample, the predicted class (named as in
    the run's results) and its probabilities, or the predicted values, and the
    modalities that were missing.
    """
    run = load_run(run_dir, checkpoint)
    if run.results_outdated:  # the model predicts; only the run's recorded numbers are old
        click.echo(f"warning: {RESULTS_OUTDATED}", err=True)
    target = out or run_dir / "predictions.csv"
    check_output_file(target, "--out", data)
    if target.name in (HISTORY, LOCK) and target.parent.resolve() == run_dir.resolve():
        raise ValueError(
            f"--out {target} is a file of the run; name another file for the predictions"
        )
    arrays = read_arrays(data)
    splits = sorted({k.partition("/")[0] for k in arrays if k.partition("/")[0] in SPLIT_ALIASES})
    if splits and not set(arrays) & set(run.modalities):  # a training file with splits
        raise ValueError(
            f"{data} holds splits ({', '.join(splits)}); predict reads one array per modality, "
            f"named as in the run ({', '.join(run.modalities)}), without a split prefix"
        )
    labels = arrays.pop(LABELS, None)
    arrays.pop(TASK_KEY, None)  # the optional task entry of a training file
    try:
        arrays, masks = split_masks(arrays)
    except ValueError as error:
        raise ValueError(f"{data}: {error}") from None
    if not arrays:
        raise ValueError(f"{data}: no modality arrays (expected some of {run.modalities})")
    n = 0
    outputs = []
    counts: dict[str, int] = {}
    metrics = None
    with atomic_text_writer(target) as file:  # replaces target only once all is done
        writer = csv.writer(file)
        chunks = run.predict_chunks(arrays, masks, BATCH_SIZE, str(data), CHUNK_ROWS)
        for chunk in chunks:
            if n == 0:
                writer.writerow(_header(run, chunk))
            writer.writerows(_rows(chunk, n))
            n += len(chunk.outputs)
            outputs.append(chunk.outputs)
            for m, c in chunk.missing_counts().items():
                counts[m] = counts.get(m, 0) + c
        if labels is not None:  # bad labels fail the command before anything is written
            metrics = run.score(torch.cat(outputs), labels, str(data))
    missing = [f"{m} ({counts[m]} of {n})" for m in run.modalities if counts.get(m)]
    summary = ", ".join(missing) or "none"
    click.echo(f"{n} predictions written to {target}; missing modalities: {summary}")
    if metrics is not None:
        click.echo(
            "metrics on DATA's labels: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )


def _header(run: Run, chunk: RunPrediction) -> list[str]:
    """The CSV header: class probabilities for classification, outputs for regression."""
    if chunk.labels is not None and chunk.probabilities is not None:
        classes = run.class_names or ()
        return ["sample", "prediction", *[f"p({c})" for c in classes], "missing"]
    return ["sample", *[f"y{k}" for k in range(chunk.outputs.shape[1])], "missing"]


def _rows(chunk: RunPrediction, start: int) -> Iterator[list[Any]]:
    """One CSV row per sample of ``chunk``, numbered from ``start``; every number is written as
    the shortest text that reads back as the same value of its dtype (float32 outputs, float64
    probabilities)."""
    if chunk.labels is not None and chunk.probabilities is not None:
        rows = zip(chunk.labels, chunk.probabilities.numpy(), chunk.missing_names())
        for i, (label, probs, missing) in enumerate(rows, start):
            yield [i, label, *map(str, probs), missing]
    else:
        values = zip(chunk.outputs.numpy(), chunk.missing_names())
        for i, (outputs, missing) in enumerate(values, start):
            yield [i, *map(str, outputs), missing]
