"""``interfuse predict``: predictions of a finished run for new raw data, any modalities missing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from ..data.arrays import LABELS, SPLIT_ALIASES, TASK_KEY, read_arrays, split_masks
from ..io import atomic_write_text
from ..results import RESULTS_OUTDATED
from ..run import BEST, HISTORY, LOCK, load_run
from .app import main, user_errors


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
    it missing for that sample. A `labels` array, if present, is
    used to report accuracy / loss. The CSV lists, per sample, the predicted class (with the
    class labels of training) and its probabilities, or the predicted values, and the
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
    result = run.predict(arrays, masks, source=str(data))
    # bad labels fail the command before anything is written
    metrics = None if labels is None else run.evaluate(arrays, labels, masks, str(data))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if result.labels is not None and result.probabilities is not None:
        classes = run.preprocessor.classes or ()
        writer.writerow(["sample", "prediction", *[f"p({c})" for c in classes], "missing"])
        rows = zip(result.labels, result.probabilities.tolist(), result.missing_names())
        for i, (label, probs, missing) in enumerate(rows):
            writer.writerow([i, label, *[f"{p:.6g}" for p in probs], missing])
    else:
        outputs = result.outputs
        writer.writerow(["sample", *[f"y{k}" for k in range(outputs.shape[1])], "missing"])
        for i, (values, missing) in enumerate(zip(outputs.tolist(), result.missing_names())):
            writer.writerow([i, *[f"{v:.6g}" for v in values], missing])
    atomic_write_text(target, buffer.getvalue())
    n = len(result.outputs)
    counts = result.missing_counts()
    summary = ", ".join(f"{m} ({c} of {n})" for m, c in counts.items()) or "none"
    click.echo(f"{n} predictions written to {target}; missing modalities: {summary}")
    if metrics is not None:
        click.echo(
            "metrics on DATA's labels: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        )
