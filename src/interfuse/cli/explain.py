"""``interfuse explain``: post-hoc relevance of a finished run, beside its built-in relevance."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from .app import main, user_errors

EXPLAIN_JSON = "explain.json"
EXPLAIN_MD = "explain.md"


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--method",
    type=click.Choice(["auto", "mask", "embedding", "input"]),
    default="auto",
    show_default=True,
    help="How a removed modality is replaced: mask (the model's own missing-modality path), "
    "embedding (encoder output → its training mean), input (input → its training mean); "
    "auto picks the first the model supports.",
)
@click.option(
    "--metric",
    default="loss",
    show_default=True,
    help="Metric of the coalition game v(S) and of the ablation Δ (loss, accuracy, ...).",
)
@click.option(
    "--emap-samples",
    default=256,
    show_default=True,
    help="Test samples N for EMAP, which costs M·N² evaluations; 0 skips EMAP.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the EMAP subsample.")
@click.option("--batch-size", default=1024, show_default=True, help="Samples per forward pass.")
@click.option(
    "--checkpoint",
    default="best.safetensors",
    show_default=True,
    help="Checkpoint file in RUN_DIR to explain.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def explain(
    run_dir: Path,
    method: str,
    metric: str,
    emap_samples: int,
    seed: int,
    batch_size: int,
    checkpoint: str,
    quiet: bool,
) -> None:
    """Compare RUN_DIR's built-in relevance with ablation, Shapley, Möbius and EMAP.

    Loads the finished run (checkpoint + results.json), regenerates its data, evaluates the
    model on the test split with every subset of modalities removed, and writes
    RUN_DIR/explain.json and RUN_DIR/explain.md (linked from report.md).

    Example: interfuse explain runs/xor
    """
    from ..explain.posthoc import explain_model, render_explanation
    from ..explain.report import render_report
    from ..io import atomic_write_text
    from ..train.restore import load_trained_model, rebuild_task

    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise FileNotFoundError(f"{results_file} not found: is {run_dir} a finished run?")
    results = json.loads(results_file.read_text(encoding="utf-8"))
    config = results.get("config") or {}
    model, header = load_trained_model(run_dir, checkpoint)
    task = rebuild_task(config)
    if list(task.modalities) != list(model.modalities):
        raise ValueError(
            f"the rebuilt data have modalities {task.modalities}, the model {model.modalities}"
        )
    truth = (results.get("ground_truth") or {}).get("term_shares")
    explanation = explain_model(
        model,
        task.test,
        task.task,
        task.train,
        method=method,
        metric=metric,
        emap_samples=emap_samples,
        seed=seed,
        batch_size=batch_size,
        metric_set=getattr(task, "metrics", "default"),
        ground_truth=truth,
        progress=not quiet,
        log=click.echo,
    )
    explanation["run"] = {"dir": str(run_dir), "checkpoint": checkpoint}
    atomic_write_text(run_dir / EXPLAIN_JSON, json.dumps(_json_safe(explanation), indent=2) + "\n")
    title = str(config.get("dataset", run_dir.name))
    atomic_write_text(run_dir / EXPLAIN_MD, render_explanation(explanation, title))
    render_report(run_dir)  # adds the link to explain.md
    _print_summary(explanation)
    click.echo(f"explanations: {run_dir / EXPLAIN_MD} and {run_dir / EXPLAIN_JSON}")


def _json_safe(value: Any) -> Any:
    """NaN/inf → null, so explain.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _print_summary(explanation: Mapping[str, Any]) -> None:
    from ..explain.posthoc import comparison_table

    click.echo("")
    click.echo(comparison_table(explanation))
    agreement = explanation["spearman"]["unimodal"]
    if agreement:
        parts = [
            f"{pair.replace('~', '/')} {'n/a' if math.isnan(rho) else format(rho, '.2f')}"
            for pair, rho in agreement.items()
        ]
        click.echo("Spearman ρ over unimodal terms: " + ", ".join(parts))
    result = explanation.get("emap")
    if result and result.get("accuracy_gap") is not None:
        click.echo(
            f"EMAP accuracy gap (model − additive projection, {result['n_samples']} samples): "
            f"{result['accuracy_gap']:+.4f}"
        )
