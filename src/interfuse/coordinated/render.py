"""Reports for the coordinated tasks: markdown from a typed result, figures from figure data.

Nothing here trains or evaluates; :func:`write_run` writes ``results.json``, ``report.md`` and
``figure.png`` into a folder, each atomically.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from interfuse.io import atomic_write_bytes, atomic_write_text
from interfuse.results import mean_std

from .results import (
    CaptionResult,
    ColearnResult,
    GroundingResult,
    RetrievalResult,
    ZeroShotResult,
    _Result,
    fraction_tag,
)

__all__ = ["FIGURE", "REPORT", "RESULTS", "markdown", "plot", "summary_table", "write_run"]

RESULTS, REPORT, FIGURE = "results.json", "report.md", "figure.png"


def _table(rows: Sequence[tuple[str, str]], header: tuple[str, str] = ("", "value")) -> str:
    lines = [f"| {header[0]} | {header[1]} |", "| --- | ---: |"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def _settings(result: _Result) -> str:
    settings = getattr(result, "settings", {})
    return ", ".join(f"{k}={v}" for k, v in settings.items())


def markdown(result: _Result) -> str:
    """The report of one run as markdown (headline table, baselines, settings)."""
    head = f"seed {result.seed}; {_settings(result)}; {result.seconds:.0f} s"
    if isinstance(result, ZeroShotResult):
        rows = [
            (f"zero-shot top-1 on {len(result.unseen_classes)} unseen classes",
             f"{result.zsl_top1:.3f}"),
            ("chance (1 / unseen classes)", f"{result.zsl_chance:.3f}"),
            ("GZSL accuracy, seen-class scenes (all 30 labels)", f"{result.gzsl_seen:.3f}"),
            ("GZSL accuracy, unseen-class scenes (all 30 labels)", f"{result.gzsl_unseen:.3f}"),
            ("GZSL harmonic mean", f"{result.gzsl_harmonic:.3f}"),
            ("GZSL chance", f"{result.gzsl_chance:.3f}"),
            ("conventional classifier, seen classes", f"{result.classifier_seen:.3f}"),
            ("conventional classifier, GZSL harmonic mean",
             f"{result.classifier_gzsl_harmonic:.3f}"),
        ]  # fmt: skip
        per_class = _table(
            [(k, f"{v:.3f}") for k, v in result.per_class_unseen.items()],
            ("unseen class", "zero-shot top-1"),
        )
        return (
            f"# DeViSE zero-shot ({result.text_encoder} label embeddings)\n\n{head}\n\n"
            f"{_table(rows)}\n\nAccuracies are per-class means. Unseen classes were never shown "
            f"in training; every shape and colour was.\n\n{per_class}\n\n"
            f"Unseen: {', '.join(result.unseen_classes)}.\n\n![unseen scenes]({FIGURE})\n"
        )
    if isinstance(result, RetrievalResult):
        rows = [
            (f"image→text R@{k}", f"{getattr(result, f'i2t_r{k}'):.3f}") for k in (1, 5, 10)
        ] + [(f"text→image R@{k}", f"{getattr(result, f't2i_r{k}'):.3f}") for k in (1, 5, 10)]
        rows += [
            ("chance R@1 image→text", f"{result.i2t_r1_chance:.4f}"),
            ("chance R@1 text→image", f"{result.t2i_r1_chance:.4f}"),
        ]
        return (
            f"# Cross-modal retrieval ({result.text_encoder} text tower, symmetric InfoNCE)\n\n"
            f"{head}\n\n{result.n_test_images} held-out images, {result.n_test_captions} "
            f"candidate captions.\n\n{_table(rows)}\n\n![retrieved captions]({FIGURE})\n"
        )
    if isinstance(result, GroundingResult):
        rows = [
            ("pointing accuracy, shape words", f"{result.pointing_shape:.3f}"),
            ("pointing accuracy, colour words", f"{result.pointing_colour:.3f}"),
            ("pointing accuracy, all object words", f"{result.pointing_all:.3f}"),
            ("random-cell baseline (shape words)", f"{result.random_baseline_shape:.3f}"),
            ("centre baseline (shape words)", f"{result.centre_baseline_shape:.3f}"),
            ("random-cell baseline (all)", f"{result.random_baseline:.3f}"),
            ("centre baseline (all)", f"{result.centre_baseline:.3f}"),
            ("image→caption R@1 of the same model", f"{result.retrieval_i2t_r1:.3f}"),
        ]
        return (
            f"# Word-to-region grounding\n\n{head}\n\n{result.n_test_words} object words "
            f"(size, colour, shape) in held-out captions. A hit: the centre of the most "
            f"attended cell lies in the box of the word's object.\n\n{_table(rows)}\n\n"
            f"![attention per word]({FIGURE})\n"
        )
    if isinstance(result, CaptionResult):
        rows = [
            ("BLEU-4, nearest training caption", f"{result.bleu4:.3f}"),
            ("BLEU-4, random training caption", f"{result.random_bleu4:.3f}"),
            ("BLEU-1, nearest training caption", f"{result.bleu1:.3f}"),
            ("BLEU-1, random training caption", f"{result.random_bleu1:.3f}"),
            ("retrieved caption is a reference", f"{result.exact_match:.3f}"),
        ]
        examples = _table(
            [(ref, f"{got} (random: {rand})") for ref, got, rand in result.examples],
            ("reference", "retrieved"),
        )
        return (
            f"# Example-based captioning ({result.text_encoder} text tower)\n\n{head}\n\n"
            f"{result.n_test} held-out scenes; corpus BLEU against each scene's "
            f"{3} reference captions.\n\n{_table(rows)}\n\n{examples}\n\n"
            f"![captions]({FIGURE})\n"
        )
    if isinstance(result, ColearnResult):
        lines = [
            "| labels | labelled samples | weak alone | weak helped | strong alone |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for i, f in enumerate(result.fractions):
            lines.append(
                f"| {fraction_tag(f)} | {result.n_labelled[i]} | {result.weak_alone[i]:.3f} | "
                f"{result.weak_helped[i]:.3f} | {result.strong_alone[i]:.3f} |"
            )
        return (
            f"# Co-learning on mfeat: `{result.weak_view}` helped by `{result.strong_view}`\n\n"
            f"{head}\n\n{result.n_train} training pairs, {result.n_test} test samples; test "
            f"accuracy of the weak view alone (the strong view is not used at test time).\n\n"
            + "\n".join(lines)
            + f"\n\nWeak view with all training labels: {result.weak_all_labels:.3f}; "
            f"chance {result.chance:.3f}.\n\n![accuracy by label fraction]({FIGURE})\n"
        )
    raise TypeError(f"no report for {type(result).__name__}")


def _image(ax: Any, image: np.ndarray) -> None:
    ax.imshow(np.clip(image.transpose(1, 2, 0), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def plot(result: _Result, data: dict[str, Any]) -> Figure:
    """The figure of one run (a grid of scenes with labels, captions or attention maps)."""
    if isinstance(result, ColearnResult):
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        pct = [100 * f for f in result.fractions]
        ax.plot(pct, result.weak_alone, "o-", label=f"{result.weak_view} alone")
        ax.plot(pct, result.weak_helped, "o-", label=f"{result.weak_view} helped")
        ax.plot(pct, result.strong_alone, "o--", label=f"{result.strong_view} alone")
        ax.axhline(result.weak_all_labels, color="grey", ls=":", label="weak, all labels")
        ax.set_xlabel("labelled training samples (%)")
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    if isinstance(result, GroundingResult):
        n = len(data["images"])
        width = max(len(w) for w in data["words"]) + 1
        fig = Figure(figsize=(1.3 * width, 1.5 * n))
        axes = fig.subplots(n, width, squeeze=False)
        size = data["images"].shape[-1]
        for i in range(n):
            _image(axes[i, 0], data["images"][i])
            axes[i, 0].set_title("scene", fontsize=7)
            for j in range(1, width):
                ax = axes[i, j]
                ax.axis("off")
                if j - 1 >= len(data["words"][i]):
                    continue
                _image(ax, data["images"][i] * 0.35)
                ax.imshow(
                    data["maps"][i][j - 1], extent=(-0.5, size - 0.5, size - 0.5, -0.5),
                    alpha=0.65, cmap="magma", interpolation="nearest",
                )  # fmt: skip
                ref = data["referents"][i][j - 1]
                if ref >= 0:
                    x0, y0, x1, y1 = data["boxes"][i, ref]
                    ax.add_patch(
                        Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan")
                    )
                ax.set_title(data["words"][i][j - 1], fontsize=8)
        fig.suptitle("attention of each caption word over the 8×8 cells (box: its object)")
        fig.tight_layout()
        return fig
    n = len(data["images"])
    cols = 4
    rows = -(-n // cols)
    fig = Figure(figsize=(3.2 * cols, 3.0 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        if k >= n:
            ax.axis("off")
            continue
        _image(ax, data["images"][k])
        if isinstance(result, ZeroShotResult):
            ok = data["pred"][k] == data["true"][k]
            ax.set_title(
                f"pred: {data['pred'][k]}\ntrue: {data['true'][k]}",
                fontsize=8, color="green" if ok else "red",
            )  # fmt: skip
        elif isinstance(result, RetrievalResult):
            lines = [
                ("✓ " if c else "✗ ") + t for t, c in zip(data["retrieved"][k], data["correct"][k])
            ]
            ax.set_title("\n".join(lines), fontsize=6)
        elif isinstance(result, CaptionResult):
            ax.set_title(f"{data['captions'][k]}\nref: {data['references'][k]}", fontsize=6)
    titles = {
        ZeroShotResult: "zero-shot predictions on unseen (shape, colour) classes",
        RetrievalResult: "top-3 retrieved captions per held-out image",
        CaptionResult: "nearest training caption per held-out image",
    }
    fig.suptitle(titles.get(type(result), ""))
    fig.tight_layout()
    return fig


def write_run(out: str | os.PathLike[str], result: _Result, data: dict[str, Any]) -> Path:
    """Write ``results.json``, ``report.md`` and ``figure.png`` into ``out`` (created)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / RESULTS)
    atomic_write_text(out / REPORT, markdown(result))
    fig = plot(result, data)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(out / FIGURE, buffer.getvalue())
    return out


def summary_table(results: Sequence[_Result]) -> str:
    """Mean ± std (sample std, n − 1, over runs; ``n/a`` for one run, as ``train --seeds``) of
    every headline metric of same-task results."""
    if not results:
        raise ValueError("no results to summarise")
    tasks = {r.task for r in results}
    if len(tasks) != 1:
        raise ValueError(f"results of several tasks: {', '.join(sorted(tasks))}")
    metrics = [r.metrics() for r in results]
    names = [k for k in metrics[0] if all(k in m for m in metrics)]
    seeds = ", ".join(str(r.seed) for r in results)
    lines = [f"{results[0].task}: {len(results)} runs (seeds {seeds})", "",
             "| metric | mean ± std |", "| --- | ---: |"]  # fmt: skip
    for k in names:
        mean, std = mean_std([float(m[k]) for m in metrics])
        spread = f"{std:.3f}" if math.isfinite(std) else "n/a"
        lines.append(f"| {k} | {mean:.3f} ± {spread} |")
    return "\n".join(lines)
