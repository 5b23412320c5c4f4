"""``interfuse datasets`` and ``interfuse convert``: what data is registered, safe data files."""

from __future__ import annotations

from pathlib import Path

import click

from ..data.affect import AFFECT_DATASETS
from ..data.lazy import MANIFEST, check_replaceable, convert_task
from ..data.registry import dataset_info, list_datasets, load_dataset
from ..data.safe_pickle import convert_pickle
from ..data.task import TASKS
from .app import main, user_errors

LAZY_SOURCES = ("npz", *AFFECT_DATASETS)
"""Formats ``interfuse convert`` reads into a dataset folder."""


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("T" if d is None else str(d) for d in shape) + ")"


@main.command()
@user_errors
def datasets() -> None:
    """List the registered datasets and whether their data is at hand.

    Train on one with: interfuse train --dataset NAME [--data-path FILE] --out DIR
    """
    for name in list_datasets():
        info = dataset_info(name)
        modalities = ", ".join(
            f"{m.name} {'(d) or (T, d)' if m.kind == 'any' else _shape(m.shape)}"
            for m in info.modalities
        )
        kinds = sorted({m.kind for m in info.modalities})
        click.echo(f"{name:<8} {info.task or 'inferred':<14} {info.status()}")
        click.echo(f"    {info.description}")
        click.echo(f"    modalities: {modalities} [{', '.join(kinds)}]")
        if info.class_names:
            click.echo(f"    classes: {', '.join(info.class_names)}")
        click.echo(f"    source: {info.source}")


def _check_replaceable_folder(source: Path, target: Path) -> None:
    """``--overwrite`` deletes TARGET: only a dataset folder that does not hold SOURCE (checked
    before the data are read)."""
    check_replaceable(target)
    folder, data = target.resolve(), source.resolve()
    if data == folder or folder in data.parents:
        raise click.ClickException(
            f"{source} lies inside {target}, which --overwrite would delete; choose another TARGET"
        )


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.argument("target", type=click.Path(path_type=Path))
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace TARGET if it exists (a folder: only a dataset folder not holding SOURCE).",
)
@click.option(
    "--dataset",
    "dataset",
    type=click.Choice(LAZY_SOURCES),
    default="npz",
    show_default=True,
    help="Dataset folder only: how to read SOURCE (npz: .npz file or array folder; the "
    "MultiBench affect formats: their pickle or .npz).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Dataset folder only: seed of the train/val/test split of an unsplit npz pool.",
)
@click.option(
    "--task",
    "task_kind",
    type=click.Choice(TASKS),
    default=None,
    help="Dataset folder only: what to predict (npz; default inferred from the labels).",
)
@click.option(
    "--chunk",
    type=click.IntRange(min=1),
    default=65536,
    show_default=True,
    help="Dataset folder only: samples written per chunk.",
)
@user_errors
def convert(
    source: Path,
    target: Path,
    overwrite: bool,
    dataset: str,
    seed: int,
    task_kind: str | None,
    chunk: int,
) -> None:
    """Convert data once: a pickle to .npz, or any readable data to a dataset folder.

    TARGET ending in .npz: SOURCE is a data pickle (e.g. a MultiBench .pkl), read with a
    restricted unpickler that only rebuilds numpy arrays, dicts, lists, strings and numbers, so
    a malicious file is refused without running anything. Nested keys are joined with '/'
    (train/vision, valid/labels, ...); the .npz is written atomically and is read later without
    pickle, e.g. interfuse train --dataset mosi --data-path TARGET.

    Any other TARGET: a dataset folder read lazily from disk (larger than memory), written
    chunk by chunk into a temporary folder renamed when complete, with the training split's
    standardisation statistics computed in the same pass: interfuse convert data.npz big/ then
    interfuse train --dataset lazy --data-path big/ --out DIR.
    """
    if (source / MANIFEST).is_file():  # else "split 'test' has no 'labels' array"
        raise click.ClickException(
            f"{source} is already a dataset folder (it has {MANIFEST}); train on it with "
            f"--dataset lazy --data-path {source}"
        )
    if target.suffix == ".npz" and source.suffix == ".npz" and source.is_file():
        raise click.ClickException(  # else "not a readable data pickle (UnpicklingError: …)"
            f"{source} is already an .npz (read without pickle); converting to .npz needs a "
            f"pickle, and the .npz can be passed to --data-path as it is"
        )
    if target.exists() and not overwrite:
        raise click.ClickException(f"{target} exists; pass --overwrite to replace it")
    if target.exists() and target.suffix != ".npz":
        _check_replaceable_folder(source, target)
    if target.suffix == ".npz":
        if source.is_dir():
            raise click.ClickException(f"{source} is a folder; converting to .npz needs a pickle")
        written, skipped = convert_pickle(source, target)
        for key, (shape, dtype) in written.items():
            click.echo(f"  {key}: {shape} {dtype}")
        for key, why in skipped.items():
            click.echo(f"  skipped {key}: {why}")
        click.echo(f"wrote {len(written)} arrays to {target}")
        return
    options: dict[str, object] = {"path": source, "standardize": False}
    if dataset == "npz":
        options["seed"] = seed
        if task_kind is not None:
            options["task"] = task_kind
    elif task_kind is not None:
        raise click.UsageError(f"--task applies to --dataset npz; {dataset} has a fixed task")
    task = load_dataset(dataset, **options)
    folder = convert_task(task, target, chunk=chunk, overwrite=overwrite)
    sizes = ", ".join(f"{s} {len(getattr(task, s))}" for s in ("train", "val", "test"))
    click.echo(f"wrote dataset folder {folder} ({sizes}; modalities {', '.join(task.modalities)})")
    click.echo(f"train on it with: interfuse train --dataset lazy --data-path {folder} --out DIR")
