"""``interfuse datasets`` and ``interfuse convert``: what data is registered, safe data files."""

from __future__ import annotations

from pathlib import Path

import click

from ..data.registry import dataset_info, list_datasets
from ..data.safe_pickle import convert_pickle
from .app import main, user_errors


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


@main.command()
@click.argument("source", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--overwrite", is_flag=True, help="Replace TARGET if it exists.")
@user_errors
def convert(source: Path, target: Path, overwrite: bool) -> None:
    """Convert a data pickle (e.g. a MultiBench .pkl) to an .npz file, once.

    The pickle is read with a restricted unpickler that only rebuilds numpy arrays, dicts,
    lists, strings and numbers, so a malicious file is refused without running anything.
    Nested keys are joined with '/' (train/vision, valid/labels, ...); the .npz is written
    atomically and is read later without pickle, e.g. interfuse train --dataset mosi
    --data-path TARGET.
    """
    if target.exists() and not overwrite:
        raise click.ClickException(f"{target} exists; pass --overwrite to replace it")
    written, skipped = convert_pickle(source, target)
    for key, (shape, dtype) in written.items():
        click.echo(f"  {key}: {shape} {dtype}")
    for key, why in skipped.items():
        click.echo(f"  skipped {key}: {why}")
    click.echo(f"wrote {len(written)} arrays to {target}")
