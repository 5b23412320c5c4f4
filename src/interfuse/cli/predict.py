"""``interfuse predict``: predictions of a finished run for new data, any modalities missing."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import click

from .app import main, user_errors


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
    default="best.safetensors",
    show_default=True,
    help="Checkpoint file in RUN_DIR to predict with.",
)
@user_errors
def predict(run_dir: Path, data: Path, out: Path | None, checkpoint: str) -> None:
    """Predict with RUN_DIR's model for the samples in DATA (.npz).

    DATA holds one array per modality, named as in the run (a `labels` array is ignored).
    Leave a modality out to mark it missing for every sample, or fill a sample's row with NaN
    to mark it missing for that sample. The CSV lists, per sample, the prediction and the
    modalities that were missing.
    """
    import numpy as np
    import torch

    from ..inference import predict as run_predict
    from ..io import atomic_write_text
    from ..train.restore import load_trained_model

    if not data.is_file():
        raise FileNotFoundError(f"data file {data} not found")
    model, header = load_trained_model(run_dir, checkpoint)
    try:
        with np.load(data, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files if k != "labels"}
    except (ValueError, OSError) as error:
        raise ValueError(f"{data}: not a readable .npz archive ({error})") from None
    result = run_predict(model, arrays)
    classification = header.get("task", {}).get("kind") == "classification"
    outputs = result.outputs
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    if classification:
        probabilities = torch.softmax(outputs, dim=1)
        writer.writerow(
            ["sample", "prediction", *[f"p{k}" for k in range(outputs.shape[1])], "missing"]
        )
        rows = zip(probabilities.argmax(1).tolist(), probabilities.tolist())
        for i, ((label, probs), missing) in enumerate(zip(rows, result.missing_names())):
            writer.writerow([i, label, *[f"{p:.6g}" for p in probs], missing])
    else:
        writer.writerow(["sample", *[f"y{k}" for k in range(outputs.shape[1])], "missing"])
        for i, (values, missing) in enumerate(zip(outputs.tolist(), result.missing_names())):
            writer.writerow([i, *[f"{v:.6g}" for v in values], missing])
    target = out or run_dir / "predictions.csv"
    atomic_write_text(target, buffer.getvalue())
    counts = result.missing_counts()
    summary = ", ".join(f"{m} ({c} of {len(outputs)})" for m, c in counts.items()) or "none"
    click.echo(f"{len(outputs)} predictions written to {target}; missing modalities: {summary}")
